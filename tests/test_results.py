"""Registry: atomic records, skip of finished runs, exclusive claims."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocl_utils import atomic

from pocl_utils.experiment.results import Registry, atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": (1, 2)})
    assert (tmp_path / "a.json").read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "b.txt"
    atomic.atomic_write_text(target, "old ünïcode")  # creates the folders
    assert target.read_bytes() == "old ünïcode".encode() and oct(target.stat().st_mode & 0o777) == "0o644"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old ünïcode" and [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_registry_roundtrip_and_done(tmp_path):
    reg = Registry(tmp_path)
    assert not reg.done("runs", "k1")
    reg.save("runs", "k1", {"a": 1}, {"m": 2.0}, 1.25)
    assert reg.done("runs", "k1")
    rec = reg.load("runs", "k1")
    assert rec["metrics"] == {"m": 2.0} and rec["wall_s"] == 1.25 and "git_commit" in rec
    assert [r["key"] for r in reg.all("runs")] == ["k1"]


def test_claim_is_exclusive_within_a_process(tmp_path):
    reg = Registry(tmp_path)
    with reg.claim("runs", "k") as first:
        assert first
        with reg.claim("runs", "k") as second:
            assert not second
    with reg.claim("runs", "k") as again:  # released when the block ends
        assert again


HOLD_CLAIM = """
import sys, time
from pocl_utils.experiment.results import Registry
with Registry(sys.argv[1]).claim("runs", "k") as mine:
    print(mine, flush=True)
    time.sleep(120)
"""


def test_a_live_process_blocks_the_claim_and_a_killed_one_releases_it(tmp_path):
    """Another process holds the claim: ours fails. It is killed with SIGKILL (no clean-up runs): ours succeeds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "True"  # the other process holds the claim now
        with Registry(tmp_path).claim("runs", "k") as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with Registry(tmp_path).claim("runs", "k") as mine:
        assert mine


def test_git_commit_is_dirty_for_code_changes_but_not_for_generated_tables(tmp_path):
    import subprocess

    from pocl_utils.experiment.results import git_commit
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "t.csv").write_text("a\n1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "results" / "t.csv").write_text("a\n2\n")  # the collection rewrote a table
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"
