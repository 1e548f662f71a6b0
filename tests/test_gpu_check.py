"""benchmarks/gpu/check.py at toy sizes on the CPU: every part runs in its own process and reports, the JSON is written,
and the numbers it reports are right (the step's losses equal the fp32 reference, pocl's greedy generation equals
transformers', its sampling equals the transformers backend's, the profile's projection adds up, TRL's KDTrainer gives
our loop's losses). Its speed numbers only mean something on a GPU."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks" / "gpu" / "check.py"


def test_gpu_check_runs_tiny_on_cpu_and_reports_each_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(CHECK), "--tiny", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["tiny"] and set(report["parts"]) == {"step", "generate", "profile", "trl"}
    assert all(p["status"] == "ok" for p in report["parts"].values()), report["parts"]
    step = report["parts"]["step"]["result"]
    assert {(r["variant"], r["batch"]) for r in step["rows"]} == {(v, b) for v in ("naive", "pocl") for b in (2, 4)}
    for row in step["rows"]:  # fp32 on the CPU: both loops compute the reference's loss
        assert row["rel_loss_diff"] < 1e-6, row
        assert row["ms"] > 0 and row["tok_s"] > 0 and 0 < row["mfu"]
    gen = report["parts"]["generate"]["result"]
    assert gen["rows_equal"] == gen["rows"] == 4
    assert gen["sampled"]["rows_equal"] == 4  # fp32 on the CPU: both backends draw the same samples
    prof = report["parts"]["profile"]["result"]
    assert set(prof["prepare_s"]) == {"data", "tokenizer", "teacher", "student_init", "ranking", "teacher_cache",
                                      "seqkd"}
    assert prof["grid_runs"] > 0
    total = sum(prof["prepare_s"].values()) + prof["grid_runs"] * prof["kd_run_s"]["total"]
    assert abs(prof["projected_s"]["total"] - total) <= 1e-9 * total
    trl = report["parts"]["trl"]["result"]  # fp32 on the CPU: TRL's KDTrainer trains as our loop does
    assert trl["logged_steps"] == trl["steps"] > 0 and trl["max_rel_loss_diff"] < 1e-5
    assert "[step] ok" in proc.stdout and "[trl] ok" in proc.stdout and "written:" in proc.stdout


def test_gpu_check_reports_a_failing_part_without_hiding_the_others(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(CHECK), "--tiny", "--parts", "generate,step", "--timeout", "0.5",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert [p["status"] for p in report["parts"].values()] == ["timeout", "timeout"]
    assert proc.stdout.count("timeout in") == 2
