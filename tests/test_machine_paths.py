"""No committed file names the machine it was written on: benchmark records and reports store paths relative to the
repository (`benchmarks/benchlib.repo_relative`), docs and code name folders by variable ($POCL_DATA_DIR) or by the
repository's own layout. Scans every tracked text file for absolute home, work and temp folders."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# /work/..., /root/..., /home/<user>/..., /tmp/..., /Users/<user>/..., not preceded by a name character (so `a/tmp/`
# inside a relative path or a URL's path does not count)
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|root|home|tmp|Users)/[\w.-]+")


def machine_paths(text: str) -> list[str]:
    return MACHINE_PATH.findall(text)


def test_the_pattern_finds_machine_paths_and_nothing_else():
    found = machine_paths('"root": "/work/main/runs/laptop", x = "/tmp/pocl-probes", ~/home/me, /home/ann/x.py')
    assert found == ["/work/main", "/tmp/pocl-probes", "/home/ann"]
    assert machine_paths("runs/laptop/model, https://example.org/home/x, data/tmp/y, $TMPDIR/x") == []


def test_no_tracked_text_file_holds_an_absolute_machine_path():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    hits = []
    for name in filter(None, files.stdout.split("\0")):
        path = ROOT / name
        if not path.is_file() or path.is_symlink() or path == Path(__file__).resolve():  # this file's examples
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (figures, weights)
            continue
        for k, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            hits += [f"{name}:{k}: {p}" for p in machine_paths(line)]
    assert hits == [], "absolute machine paths in committed files:\n" + "\n".join(hits[:50])


def test_benchmark_records_are_written_with_repository_relative_paths():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from benchlib import ROOT as bench_root, repo_relative
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    record = {"root": str(bench_root / "runs" / "laptop"), "rows": [{"model": str(bench_root / "data" / "m")}],
              "top": str(bench_root), "elsewhere": "/opt/x", "n": 3}
    assert repo_relative(record) == {"root": "runs/laptop", "rows": [{"model": "data/m"}], "top": ".",
                                     "elsewhere": "/opt/x", "n": 3}
