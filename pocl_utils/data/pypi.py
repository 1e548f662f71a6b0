"""The GPT-2 BPE ranks fetched from PyPI: the pinned openai-whisper sdist, its gpt2.tiktoken checked by sha256."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..atomic import atomic_write_bytes
from .gpt2 import GPT2_RANKS_MEMBER, GPT2_RANKS_SHA256, WHISPER_VERSION
from .records import DataError, MissingDataError
from .sets import data_dir


def fetch_gpt2_ranks(dest: str | os.PathLike | None = None) -> Path:
    """Download openai-whisper's sdist from PyPI, extract gpt2.tiktoken, check its sha256 and write it atomically.

    `dest`: the destination file; None = <data_dir>/cache/gpt2.tiktoken.
    """
    dest = Path(dest) if dest is not None else data_dir() / "cache" / "gpt2.tiktoken"
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download_sdist(Path(tmp))
        content = _tar_member(sdist, GPT2_RANKS_MEMBER)
    digest = hashlib.sha256(content).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(f"sha256 {digest} differs from the pinned {GPT2_RANKS_SHA256}", path=sdist.name,
                        field=GPT2_RANKS_MEMBER)
    atomic_write_bytes(dest, content)
    return dest


def _pip_download_sdist(folder: Path) -> Path:
    """`pip download` the pinned openai-whisper source distribution (no dependencies) into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"openai-whisper=={WHISPER_VERSION}", "--dest", str(folder)]
    subprocess.run(command, check=True)
    found = sorted(folder.glob("openai*whisper-*.tar.gz"))
    if not found:
        raise MissingDataError(f"pip download left no openai-whisper sdist in {folder}")
    return found[0]


def _tar_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the one member of a .tar.gz whose name ends with `suffix` (read, never extracted to disk)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("/" + suffix):
                return tar.extractfile(member).read()
    raise MissingDataError(f"no member ending in {suffix}", path=archive)

