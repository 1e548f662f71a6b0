"""pocl-reproduce as a user meets it: parameter types and conflicts refused before any kernel starts, executed
notebooks written atomically (a failed or interrupted one kept beside the good one), Ctrl-C as one line, --only
merging timings.json, --runs-root."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from conftest import load_script
from pocl_utils.experiment.config import ConfigError
from pocl_utils.notebook.reproduce import (check_extra, check_parameters, collection, execute_one, kernel_name,
                                           merge_timings)

REPO = Path(__file__).resolve().parents[1]


def _cli(*argv: str, cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pocl_utils.notebook.reproduce", *argv], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env, **kw)


@pytest.mark.parametrize("argv, message", [
    (["-p", "overrides", "[1,2]"], "pocl-reproduce: -p overrides must be a JSON object (a mapping of profile keys to "
                                   "values), e.g. -p overrides '{\"kd.lr\": 0.001}'; got array [1, 2]"),
    (["-p", "overrides", "kd.lr=0.1"], "pocl-reproduce: -p overrides must be a JSON object"),
    (["-p", "overrides", '{"kd.lrr": 1}'], "pocl-reproduce: -p overrides: unknown key 'kd.lrr'"),
    (["-p", "profile", "3"], "pocl-reproduce: -p profile: unknown profile 3; valid profiles: smoke,"),
    (["--profile", "smoke", "-p", "profile", "classroom"],
     "pocl-reproduce: -p profile 'classroom' conflicts with --profile 'smoke'; choose the profile with --profile alone"),
    (["--profile", "smoke", "-p", "n_examples", "2.5"], "pocl-reproduce: -p n_examples must be a JSON integer; got"),
])
def test_bad_parameters_and_conflicts_are_refused_before_any_kernel_starts(tmp_path, argv, message):
    proc = _cli("--runs-root", str(tmp_path / "runs"), *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr + proc.stdout and not proc.stdout
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


def test_matching_profile_parameter_and_types_are_accepted():
    check_extra("smoke", {"profile": "smoke", "overrides": {"kd.lr": 0.001}})
    nb = collection(profile="smoke")[0]
    check_parameters(nb, {"profile": "smoke", "overrides": {"n_seeds": 2}, "n_examples": 3})
    with pytest.raises(ConfigError, match="-p overrides must be a JSON object"):
        check_parameters(nb, {"overrides": [1, 2]})


def test_help_shows_an_overrides_example_and_the_output_variables():
    out = _cli("--help").stdout
    assert """-p overrides '{"kd.lr": 0.001}'""" in out
    assert "--runs-root" in out and "POCL_RUNS_DIR" in out and "POCL_OUTPUT_DIR" in out


def test_only_merges_into_timings(tmp_path):
    path = tmp_path / "timings.json"
    merge_timings(path, {"00_data.ipynb": 10.0, "01_teacher_sft.ipynb": 20.0}, 31.0, whole=True)
    assert json.loads(path.read_text())["total"] == 31.0
    merged = merge_timings(path, {"01_teacher_sft.ipynb": 5.0}, 5.2, whole=False)
    assert merged == {"00_data.ipynb": 10.0, "01_teacher_sft.ipynb": 5.0, "total": 15.0}
    assert json.loads(path.read_text()) == merged


# ---- executed with a kernel ---------------------------------------------------------------------------------------


def _notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _good_copy(out: Path, name: str) -> bytes:
    out.mkdir(parents=True, exist_ok=True)
    good = nbformat.v4.new_notebook()
    good.metadata["pocl"] = {"status": "the last good run"}
    nbformat.write(good, out / name)
    return (out / name).read_bytes()


def test_a_failing_notebook_keeps_the_good_copy_and_is_kept_as_failed(tmp_path):
    nb = _notebook(tmp_path / "99_fails.ipynb", "print('half way')", "raise ValueError('boom')")
    out = tmp_path / "executed"
    before = _good_copy(out, nb.name)
    with pytest.raises(Exception) as info:
        execute_one(nb, out, {"profile": "smoke"}, kernel_name())
    assert getattr(info.value, "ename", "") == "ValueError"
    assert (out / nb.name).read_bytes() == before
    failed = nbformat.read(out / "99_fails.failed.ipynb", as_version=4)
    assert failed.metadata["pocl"]["status"] == "failed" and "did not finish" in failed.cells[0].source
    assert not (out / "99_fails.running.ipynb").exists()


def test_a_finished_notebook_replaces_the_good_copy_and_clears_old_failures(tmp_path, capfd):
    nb = _notebook(tmp_path / "99_ok.ipynb", "print('fine')")
    out = tmp_path / "executed"
    _good_copy(out, nb.name)
    (out / "99_ok.failed.ipynb").write_text("{}")
    execute_one(nb, out, {"profile": "smoke"}, kernel_name())
    done = nbformat.read(out / nb.name, as_version=4)
    assert "pocl" not in done.metadata and done.metadata["papermill"]["exception"] is None
    assert sorted(p.name for p in out.iterdir()) == ["99_ok.ipynb"]
    assert "without encryption" not in "".join(capfd.readouterr())  # the kernel's TCP warning stays quiet


def test_ctrl_c_ends_with_one_line_and_keeps_the_good_notebook(tmp_path):
    nb = _notebook(tmp_path / "03_kd_methods.ipynb", "print('started', flush=True)", "import time; time.sleep(120)")
    runs = tmp_path / "runs"
    out = runs / "smoke" / "notebooks"
    before = _good_copy(out, nb.name)
    script = (f"import sys; from pathlib import Path; from pocl_utils.notebook import reproduce; "
              f"reproduce.collection = lambda profile: [Path({str(nb)!r})]; "
              f"sys.exit(reproduce.main(['--profile', 'smoke', '--runs-root', {str(runs)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    running = out / "03_kd_methods.running.ipynb"
    deadline = time.time() + 120
    while time.time() < deadline and not (running.exists() and "started" in running.read_text()):
        time.sleep(0.5)  # papermill saves the notebook after each cell: the sleep cell is running now
    assert running.exists(), "the notebook never started"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.strip() == ("pocl-reproduce: interrupted in 03_kd_methods; finished runs are kept; run the same "
                              "command again to continue"), stderr
    assert "Traceback" not in stdout and "without encryption" not in stdout + stderr
    assert (out / nb.name).read_bytes() == before  # the last good executed notebook survives
    kept = nbformat.read(out / "03_kd_methods.interrupted.ipynb", as_version=4)
    assert kept.metadata["pocl"]["status"] == "interrupted" and "did not finish" in kept.cells[0].source
    assert not running.exists() and not (out / "timings.json").exists()


def test_our_errors_show_as_one_line_in_a_notebook(tmp_path):
    """Registry, checkpoint and prepared-step errors stop a notebook with their one line, not a traceback wall."""
    import papermill as pm
    nb = _notebook(tmp_path / "99_ours.ipynb", """
        from pocl_utils.notebook import short_errors
        from pocl_utils.modeling.models import CheckpointError
        from pocl_utils.experiment.workspace import StepError
        from pocl_utils.experiment.results import RegistryError
        short_errors()""", "raise RegistryError('somewhere: broken')", "raise CheckpointError('somewhere: broken')",
        "from pathlib import Path\nraise StepError(Path('/r/teacher/STEP.json'), 'unreadable STEP.json')")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name=kernel_name(), cwd=str(REPO),
                            progress_bar=False, allow_errors=True)  # every cell runs; papermill raises at the end
    assert err.value.ename == "StepError"
    errors = [o for c in nbformat.read(tmp_path / "out.ipynb", 4).cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert [e.traceback for e in errors] == [
        ["RegistryError: somewhere: broken"], ["CheckpointError: somewhere: broken"],
        ["StepError: /r/teacher/STEP.json: unreadable STEP.json; delete the folder /r/teacher and re-run, which "
         "rebuilds that step"]]


def test_training_bars_show_in_a_notebook_kernel_and_follow_tqdm_elsewhere(tmp_path):
    """Preparation steps train for minutes inside notebook 00: their tqdm bars must reach the notebook."""
    import papermill as pm

    from pocl_utils.training.loop import bar_disabled
    assert bar_disabled() is None  # here: tqdm's default, a bar only on a terminal
    nb = _notebook(tmp_path / "99_bar.ipynb",
                   "from pocl_utils.training.loop import bar_disabled\nprint(bar_disabled())")
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name=kernel_name(), cwd=str(REPO),
                        progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "out.ipynb", 4).cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert text.strip() == "False"


# ---- what a user meets: --only, --lab, the end of a run, progress ---------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--profile", "smoke", "--only", "99"], "pocl-reproduce: --only 99: no notebook of profile 'smoke' starts with it; "
                                             f"valid: {' '.join(p.name[:2] for p in collection(profile='smoke'))} "
                                             "(the lab, 11, runs with --lab)"),
    (["--profile", "classroom", "--only", "03", "11", "1x"], "pocl-reproduce: --only 11 1x: no notebook of profile "
                                                             "'classroom' starts with them; valid: 00 01"),
    (["--lab", "--only", "00"], "pocl-reproduce: --lab runs the lab alone; run the collection's notebooks (--only) in "
                                "another command"),
])
def test_only_refuses_a_prefix_that_matches_no_notebook(tmp_path, argv, message):
    proc = _cli("--runs-root", str(tmp_path / "runs"), *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not proc.stdout and not (tmp_path / "runs").exists()  # nothing ran


def test_only_selects_in_run_order():
    from pocl_utils.notebook.reproduce import select
    nbs = collection(profile="smoke")
    assert [p.name[:2] for p in select(nbs, ["10", "03_kd"], "smoke")] == ["03", "10"]


def test_the_end_of_a_run_names_only_folders_that_exist_and_no_maintainer_action(tmp_path, monkeypatch):
    from pocl_utils.notebook import reproduce
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path))
    lines = []
    reproduce.where_outputs("classroom", log=lines.append)  # nothing written yet, no committed reference
    assert lines == []
    (tmp_path / "results" / "classroom").mkdir(parents=True)
    (tmp_path / "results" / "classroom" / "profile.json").write_text("{}")
    reproduce.where_outputs("classroom", log=lines.append)
    assert lines == [f"tables in {tmp_path / 'results' / 'classroom'}/"]  # no figures folder, no reference, no publish
    lines.clear()
    (tmp_path / "results" / "laptop").mkdir(parents=True)
    (tmp_path / "results" / "laptop" / "runs.csv").write_text("x")
    reproduce.where_outputs("laptop", log=lines.append)  # the repository holds results/laptop
    assert lines[-2].startswith("scores not compared with the committed reference: compare_runs: ")  # "x" is no table
    assert lines[-1].startswith("compare with the committed reference: diff -q ")
    assert lines[-1].endswith(f"results/laptop {tmp_path / 'results' / 'laptop'}")
    assert not any("publish" in line for line in lines)
    assert all(Path(word.rstrip("/")).exists() for line in lines for word in line.split() if "/" in word)


def test_progress_line_echoes_only_bars():
    import io

    from pocl_utils.notebook.reproduce import ProgressLine
    kernel_stderr = ["teacher SFT:   0%|          | 0/50 [00:00<?, ?it/s]",
                     "\rteacher SFT:  40%|████      | 20/50 [00:02<00:03, 9.9it/s]",
                     "\rteacher SFT: 100%|██████████| 50/50 [00:05<00:00, 9.9it/s]", "\r" + " " * 60 + "\r",
                     "a warning that stays in the notebook\n",
                     "student pre-training:  10%|█         | 1/10 [00:01<00:09, 1.0it/s]"]
    tty = io.StringIO()
    line = ProgressLine(tty, tty=True, indent="  ")
    for text in kernel_stderr:
        line.write(text)
    line.close()
    shown = tty.getvalue().split("\r")
    assert shown[1].startswith("  teacher SFT:   0%|") and shown[3].startswith("  teacher SFT: 100%|")
    assert shown[-3].startswith("  student pre-training:  10%|")
    assert shown[-2].strip() == "" and shown[-1] == ""  # cleared at the end
    assert "warning" not in tty.getvalue() and "\n" not in tty.getvalue()
    log = io.StringIO()
    line = ProgressLine(log, tty=False, interval=3600, indent="")
    for text in kernel_stderr:
        line.write(text)
    assert log.getvalue().splitlines() == [kernel_stderr[0], kernel_stderr[-1]]  # each bar once, then every hour


def test_a_running_notebooks_bars_reach_the_terminal(tmp_path):
    """The kernel's tqdm bars (preparation steps train for minutes inside notebook 00) are echoed while it runs."""
    import io

    from pocl_utils.notebook.reproduce import ProgressLine
    nb = _notebook(tmp_path / "99_bars.ipynb", """
        from tqdm.auto import tqdm
        from pocl_utils.training.loop import bar_disabled
        for _ in tqdm(range(3), desc="preparing", disable=bar_disabled(), mininterval=0):
            pass
        print("done")""")
    out = io.StringIO()
    (tmp_path / "executed").mkdir()
    execute_one(nb, tmp_path / "executed", {"profile": "smoke"}, kernel_name(), ProgressLine(out, tty=False))
    assert out.getvalue().startswith("      preparing:") and "done" not in out.getvalue()


def test_lr_study_runs_table1_per_protocol_with_the_factors_and_pairs_at_the_chosen_rates(monkeypatch, tmp_path):
    """scripts/lr_study.py: one table1 job per protocol with the lr_factors override; the chosen-rate table and
    +POCL - baseline (Avg, paired by seed) are written beside the job's CSV."""
    import pandas as pd
    module = load_script("lr_study")
    jobs = []

    def job(profile, grid, *, runs_root, protocol, out, overrides):
        jobs.append((profile, grid, protocol, overrides))
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = [("KLD", v, seed, d, r) for v, base in (("baseline", 10.0), ("+POCL", 12.0)) for seed in (0, 1)
                for d, r in (("DollyEval", base + seed), ("S-NI", base + 2 * seed + (v == "+POCL")))]
        pd.DataFrame(rows, columns=["method", "variant", "seed", "dataset", "rouge_l"]).to_csv(out, index=False)
        pd.DataFrame([{"method": "KLD", "variant": "baseline", "arm": "a", "lr_scale": s, "lr": 3e-3 * s,
                       "valid": v, "chosen": c} for s, v, c in ((5.0, -2.0, False), (1.0, -1.0, True))]).to_csv(
            out.with_name(f"{out.stem}_lr.csv"), index=False)
        return out

    monkeypatch.setattr(module, "run_job", job)
    assert module.main(["--profile", "laptop", "--protocols", "official", "paper-text", "--factors", "5", "1",
                        "--runs-root", str(tmp_path)]) == 0
    assert jobs == [("laptop", "table1", q, {"lr_factors": [5.0, 1.0]}) for q in ("official", "paper-text")]
    out = tmp_path / "results" / "laptop" / "lr_per_arm"
    assert list(pd.read_csv(out / "table1_official_lr.csv").columns) == ["method", "variant", "lr_scale",
                                                                        "lr (1e-3)", "valid", "chosen"]
    paired = pd.read_csv(out / "table1_paper-text_paired.csv").set_index("variant")
    # Avg per seed: baseline 10.0, 11.5; +POCL 12.5, 14.0 -> +POCL - baseline = 2.5 for both seeds
    assert paired.loc["+POCL", "vs baseline"] == pytest.approx(2.5)
    assert paired.loc["baseline", "mean"] == pytest.approx(10.75) and paired.loc["baseline", "n_seeds"] == 2
    assert pd.read_csv(out / "table1_official_lr.csv")["lr (1e-3)"].tolist() == pytest.approx([15.0, 3.0])


def test_ablations_study_reexecutes_the_collection_with_every_grid(monkeypatch, capsys):
    """scripts/ablations.py runs pocl-reproduce on the profile with grid 'full' (the same workspace, so the main job's
    runs are reused) and passes the runs root on; its exit code is the collection's."""
    module = load_script("ablations")
    calls = []
    monkeypatch.setattr(module.subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    assert module.main(["--profile", "laptop", "--runs-root", "runs-elsewhere"]) == 3
    cmd = calls[0]
    assert cmd[1:] == ["-m", "pocl_utils.notebook.reproduce", "--profile", "laptop", "-p", "overrides",
                       '{"grid": "full"}', "--runs-root", "runs-elsewhere"]
    assert "ablations study of 'laptop'" in capsys.readouterr().out
    assert module.main(["--protocol", "paper-text"]) == 3  # another protocol: one more override, no runs root
    assert calls[1][-2:] == ["overrides", '{"grid": "full", "protocol": "paper-text"}']


def test_verify_reference_retrains_published_runs_and_finds_a_changed_score(tmp_path, capsys):
    """scripts/verify_reference.py on the smoke world: two finished runs published as runs.csv re-train in a fresh
    registry to the same scores (exit 0, nothing read back from the original registry), one changed score is found
    (exit 1), and a runs.csv of runs the grids do not hold is refused (exit 2)."""
    import torch

    from pocl_utils.experiment import pipeline, pool
    from pocl_utils.experiment.config import baseline, get_profile, pocl
    from pocl_utils.notebook import grids
    module = load_script("verify_reference")
    torch.set_num_threads(1)
    ws = pipeline.prepare(get_profile("smoke"), runs_root=tmp_path / "runs", log=lambda s: None)
    pool.run_grid(ws, [baseline("KLD", 0), pocl("KLD", 0)], workers=1)
    runs = grids.runs_frame(ws)
    assert runs.run_key.nunique() == 2
    (tmp_path / "res").mkdir()
    runs.to_csv(tmp_path / "res" / "runs.csv", index=False)
    argv = ["--profile", "smoke", "--runs", "2", "--runs-root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 published runs found; re-training 2" in out and out.count(": equal (") == 2
    assert len(list((tmp_path / "runs" / "smoke" / "registry" / "runs").iterdir())) == 2  # trained elsewhere
    runs.loc[runs.index[0], "rouge_l"] += 1e-9  # one published score off by a rounding
    runs.to_csv(tmp_path / "res" / "runs.csv", index=False)
    assert module.main(argv) == 1 and "DIFFERS by 1e-09" in capsys.readouterr().out
    runs.assign(run_key="0" * 16).to_csv(tmp_path / "res" / "runs.csv", index=False)
    assert module.main(argv) == 2


def _runs_csv(folder: Path, rows: list[tuple]) -> Path:
    """A runs.csv of (run_key, dataset, sampled, greedy) rows, as `results` writes it (grid column included)."""
    import pandas as pd
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["run_key", "dataset", "rouge_l", "greedy_rouge_l"]).assign(grid="table1").to_csv(
        folder / "runs.csv", index=False)
    return folder


def test_compare_runs_by_hand(tmp_path):
    from pocl_utils.analysis.reference import compare_runs, comparison_line
    nan = float("nan")
    # the reference: A and B, which the main job makes, and C from a later study
    ref = _runs_csv(tmp_path / "ref", [("A", "DollyEval", 40.0, nan), ("A", "UnNI", 30.25, nan),
                                       ("B", "DollyEval", 50.0, 60.0), ("B", "UnNI", 20.0, 25.0),
                                       ("C", "DollyEval", 10.0, 11.0)])
    # the run: A equal (listed under two grids; its greedy scores absent on both sides), B's greedy UnNI 0.5 lower,
    # D not in the reference
    run = _runs_csv(tmp_path / "run", [("A", "DollyEval", 40.0, nan), ("A", "UnNI", 30.25, nan),
                                       ("A", "DollyEval", 40.0, nan), ("B", "DollyEval", 50.0, 60.0),
                                       ("B", "UnNI", 20.0, 24.5), ("D", "DollyEval", 1.0, 2.0)])
    c = compare_runs(run, ref)
    assert c == {"both": 2, "equal": 1, "differ": ["B"], "largest_diff": 0.5, "only_run": 1, "only_reference": 1}
    assert comparison_line(c) == ("scores: 1 of the 2 runs shared with the committed reference differ (largest "
                                  "difference 0.5 ROUGE-L): another CPU model or changed code, see Determinism in "
                                  "docs/reproducibility.md; 1 of this run's runs are not in it")
    same = compare_runs(ref, ref)
    assert same == {"both": 3, "equal": 3, "differ": [], "largest_diff": 0.0, "only_run": 0, "only_reference": 0}
    assert comparison_line(same) == ("scores: equal to the committed reference's in all 3 runs they share, every "
                                     "sampled and greedy score to the last bit")
    only_a = _runs_csv(tmp_path / "only_a", [("A", "UnNI", 30.25, nan), ("A", "DollyEval", 40.0, nan)])
    assert comparison_line(compare_runs(only_a, ref)) == (
        "scores: equal to the committed reference's in all 1 runs they share, every sampled and greedy score to the "
        "last bit; its other 2 runs (its studies) were not run here")
    # a score on one side only, or a set missing on one side, is a difference
    one_sided = _runs_csv(tmp_path / "one_sided", [("A", "DollyEval", 40.0, 41.0)])
    assert compare_runs(one_sided, ref)["largest_diff"] == float("inf")
    assert compare_runs(one_sided, ref)["differ"] == ["A"]
    other = _runs_csv(tmp_path / "other", [("E", "DollyEval", 1.0, 1.0)])
    assert comparison_line(compare_runs(other, ref)).startswith("scores: none of this run's 1 runs")


def test_compare_runs_names_a_missing_file_or_column(tmp_path):
    from pocl_utils.analysis.reference import compare_runs
    ref = _runs_csv(tmp_path / "ref", [("A", "DollyEval", 40.0, 41.0)])
    with pytest.raises(ValueError, match="no runs.csv in"):
        compare_runs(tmp_path / "nowhere", ref)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "runs.csv").write_text("run_key,dataset,rouge_l\nA,DollyEval,40.0\n")
    with pytest.raises(ValueError, match=r"bad.runs\.csv lacks the column\(s\) \['greedy_rouge_l'\]"):
        compare_runs(tmp_path / "bad", ref)


def test_the_end_of_a_main_job_says_whether_its_scores_equal_the_reference(tmp_path, monkeypatch):
    import shutil
    import pandas as pd
    from pocl_utils.notebook import reproduce
    from pocl_utils.experiment.results import REPO_ROOT
    committed = REPO_ROOT / "results" / "laptop" / "runs.csv"
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path))
    (tmp_path / "results" / "laptop").mkdir(parents=True)
    shutil.copy(committed, tmp_path / "results" / "laptop" / "runs.csv")
    lines = []
    reproduce.where_outputs("laptop", log=lines.append)
    n = pd.read_csv(committed).run_key.nunique()
    assert lines[-2] == (f"scores: equal to the committed reference's in all {n} runs they share, every sampled and "
                         f"greedy score to the last bit")
