"""Registry: atomic records, skip of finished runs, exclusive claims."""
import subprocess
import sys

import numpy as np

from pocl_utils.results import Registry, atomic_write_json


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": (1, 2)})
    assert (tmp_path / "a.json").read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_registry_roundtrip_and_done(tmp_path):
    reg = Registry(tmp_path)
    assert not reg.done("runs", "k1")
    reg.save("runs", "k1", {"a": 1}, {"m": 2.0}, 1.25)
    assert reg.done("runs", "k1")
    rec = reg.load("runs", "k1")
    assert rec["metrics"] == {"m": 2.0} and rec["wall_s"] == 1.25 and "git_commit" in rec
    assert [r["key"] for r in reg.all("runs")] == ["k1"]


def test_claim_is_exclusive_and_stale_claims_are_taken(tmp_path):
    reg = Registry(tmp_path)
    with reg.claim("runs", "k") as first:
        assert first
        with reg.claim("runs", "k") as second:
            assert not second
    # a lock left by a dead process is stale
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "runs" / "k" / "claim.lock"
    lock.write_text(proc.stdout.strip())
    with reg.claim("runs", "k") as got:
        assert got


def test_git_commit_is_dirty_for_code_changes_but_not_for_generated_tables(tmp_path):
    import subprocess

    from pocl_utils.results import git_commit
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
