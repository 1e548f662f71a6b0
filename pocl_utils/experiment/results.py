"""Run registry: finished runs on disk, claims and atomic writes.

Every finished run lives in `<root>/<kind>/<hash>/result.json`, written atomically (temp file + rename) as the
last step, so a directory without it is unfinished. A re-run with the same config finds it and skips. Concurrent
batches claim a run with an exclusive lock file, so two processes never train the same run at once.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..atomic import atomic_write_text

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

REPO_ROOT = Path(__file__).resolve().parents[2]


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON (indent 1, sorted keys, a final newline) with `atomic_write_text`.

    numpy scalars and arrays, sets, tuples and Paths are written as JSON numbers, lists and strings.

    `path`: the file, replaced if it exists.
    Raises TypeError: a value JSON cannot write and the converter does not know.
    """
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# Generated outputs (the reference tables and figures that `pocl-reproduce --publish` and scripts/ rewrite, benchmark
# reports): changes there do not make the code dirty.
GENERATED_OUTPUTS = ("results", "figures", "benchmarks/results", "benchmarks/RESULTS.md")


def git_commit(root: Path = REPO_ROOT) -> str:
    """The repository's HEAD commit, with '+dirty' if tracked files have changes, or 'unknown'.

    Only changes to tracked files outside GENERATED_OUTPUTS count, so a run made while published tables or figures
    await their commit still records the clean commit. 'unknown' when git fails, is missing, or takes over 10 s.

    Returns "<sha>", "<sha>+dirty" or "unknown".
    """
    excludes = [f":(exclude){path}" for path in GENERATED_OUTPUTS]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RegistryError(RuntimeError):
    """A registry file cannot be read; the message names it and says how to recover."""


@dataclass
class Registry:
    """Finished artefacts keyed by kind and config hash under one root folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def run_dir(self, kind: str, key: str) -> Path:
        """The folder of one run (or other artefact): `<root>/<kind>/<key>`.

        Returns the folder's path; it may not exist yet.
        """
        return self.root / kind / key

    def result_path(self, kind: str, key: str) -> Path:
        """Where one run's record lives: `<root>/<kind>/<key>/result.json`.

        Returns the file's path; it exists once the run is finished.
        """
        return self.run_dir(kind, key) / "result.json"

    def done(self, kind: str, key: str) -> bool:
        """Whether the run is finished, i.e. its result.json exists.

        Returns True when its record is on disk.
        """
        return self.result_path(kind, key).exists()

    def load(self, kind: str, key: str) -> dict[str, Any]:
        """Read a finished run's record.

        Returns the record as `save` wrote it (kind, key, config, metrics, wall_s, git_commit, host, pid, finished_at).
        Raises RegistryError: a corrupt result file, naming it.
        Raises FileNotFoundError: the run is not finished.
        """
        return _read_result(self.result_path(kind, key))

    def save(self, kind: str, key: str, config: Any, metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """Record a finished run: config, metrics, timings and provenance, written atomically last.

        `wall_s`: its wall-clock time in seconds (rounded to ms).
        Returns the record as read back from disk: the JSON form, identical to what a later skip returns.
        """
        record = {"kind": kind, "key": key, "config": config, "metrics": metrics, "wall_s": round(wall_s, 3),
                  "git_commit": git_commit(), "host": socket.gethostname(), "pid": os.getpid(),
                  "finished_at": time.time()}
        atomic_write_json(self.result_path(kind, key), record)
        return self.load(kind, key)  # the JSON form, identical to what a later skip returns

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every finished record of one kind.

        Returns the records, sorted by key; [] when the kind has none.
        Raises RegistryError: a corrupt result file, naming it.
        """
        folder = self.root / kind
        if not folder.exists():
            return []
        return [_read_result(p) for p in sorted(folder.glob("*/result.json"))]

    @contextmanager
    def claim(self, kind: str, key: str) -> Iterator[bool]:
        """Exclusively claim a run; yields False if another live process holds it.

        The claim is an advisory lock (flock) on `claim.lock`, so the kernel drops it when its owner dies, even by
        SIGKILL: a killed batch leaves no claim that blocks the next one. The file keeps the last owner's pid.

        Yields True while this process holds the claim (released when the block ends), False if another process holds
        it.
        """
        lock = self.run_dir(kind, key) / "claim.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(lock)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock; the file stays (unlinking it would race with a waiting opener)
                if fcntl is None:
                    lock.unlink(missing_ok=True)

    def note_attempt(self, kind: str, key: str) -> None:
        """Append one line per training attempt (pid, host, time) to the run's attempts.log.

        A resumed run shows one line per start, and two lines without a kill between them would mean a run was trained
        twice.
        """
        line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}) + "\n"
        with open(self.run_dir(kind, key) / "attempts.log", "a", encoding="utf-8") as f:
            f.write(line)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # cannot happen with atomic writes; say so if it does
        raise RegistryError(f"{path}: corrupt result file ({type(e).__name__}: {e}); delete it to re-run that run") \
            from None


@contextmanager
def exclusive_lock(lock: Path) -> Iterator[None]:
    """Block until this process holds an exclusive flock on `lock` (dropped by the kernel if the holder dies).

    On Windows (no fcntl) there is no protection between concurrent processes; single-process use still works.

    `lock`: the lock file, created if missing (its folder must exist); it is left in place.
    Yields None, while the lock is held; it is released when the block ends.
    """
    if fcntl is None:  # Windows: no protection between concurrent processes; single-process use still works
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _try_lock(lock: Path) -> int | None:
    """Open `lock` and take a non-blocking exclusive flock; the open fd on success, None if another process holds it."""
    if fcntl is None:  # Windows: an exclusively created file instead (a killed owner's file must be deleted by hand)
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
