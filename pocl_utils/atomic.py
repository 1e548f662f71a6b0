"""Atomic file writes: readers see the old content or the complete new one, never a half-written file.

The content goes to a fresh temp file `.<name>.<random>.tmp` in the same folder, is flushed to disk (fsync) and renamed
over the target (atomic on POSIX); on any error the temp file is removed and the target is left as it was. Parent
folders are created. Imports nothing of the package, so every layer may use it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path | str, content: bytes) -> None:
    """Write `content` to `path` atomically (mode 0644, replaced if it exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
