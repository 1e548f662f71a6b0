"""The notebook collection: stored clean with one literal `parameters` cell, strict parameters, the report helpers
the notebooks rely on, and the whole collection executed with papermill on the `smoke` profile."""
import ast
import json
import math
import re
import sys
import time

import nbformat
import numpy as np
import pandas as pd
import pytest

from pocl_utils import notebook as nb
from pocl_utils.analysis import frames, paper, tables
from pocl_utils.experiment.config import ConfigError, RunSpec
from pocl_utils.curriculum import Stage
from pocl_utils.data import EVAL_SETS
from pocl_utils.difficulty import Ranking
from pocl_utils.notebook.reproduce import NOTEBOOK_DIR, check_parameters, collection, kernel_name, run_collection
from pocl_utils.experiment.workspace import RUNS_ROOT

NOTEBOOKS = collection()


def _parameters_cell(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', expected exactly one"
    return cells[0]


def test_collection_is_numbered_00_to_10_then_13():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{k:02d}" for k in range(11)] + ["13"]  # 11 lab, 12 real data only


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_stored_notebook_is_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert "papermill" not in notebook.metadata, f"{path.name} is an executed copy"
    for k, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {k} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {k} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_commented_literals_with_profile(path):
    source = _parameters_cell(path).source
    names = {}
    for stmt in ast.parse(source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"{path.name}: line {stmt.lineno} is not a plain assignment"
        names[stmt.targets[0].id] = ast.literal_eval(stmt.value)  # raises on anything but a literal
    assert names.get("profile") == "laptop"
    for line in source.splitlines():
        assert "#" in line, f"{path.name}: parameter line without a comment: {line!r}"
    assert len(source.splitlines()) == len(names), f"{path.name}: one parameter per line"


def test_check_parameters_rejects_a_typo_listing_the_valid_names():
    with pytest.raises(ConfigError) as err:
        check_parameters(NOTEBOOKS[3], {"profil": "smoke"})
    msg = str(err.value)
    assert "'profil'" in msg and "valid parameters" in msg
    assert all(name in msg for name in ("profile", "overrides", "family"))
    check_parameters(NOTEBOOKS[3], {"profile": "smoke", "family": "opt"})  # valid names pass


def test_run_collection_rejects_a_parameter_no_notebook_has_before_running(tmp_path):
    with pytest.raises(ConfigError, match="'famly'.*valid parameters: .*family"):
        run_collection("smoke", out_dir=tmp_path, extra={"famly": "opt"}, log=lambda s: None)
    with pytest.raises(ConfigError, match="unknown profile 'smok'"):
        run_collection("smok", out_dir=tmp_path, log=lambda s: None)
    assert not list(tmp_path.glob("*.ipynb"))  # nothing was executed


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager
    exe = KernelSpecManager().get_kernel_spec(kernel_name()).argv[0]
    assert exe in ("python", "python3", "python%d.%d" % sys.version_info[:2]) or exe == sys.executable


def test_output_folders_follow_pocl_output_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path))
    assert nb.results_dir("smoke") == tmp_path / "results" / "smoke"
    assert nb.figures_dir("laptop") == tmp_path / "figures" / "laptop"
    monkeypatch.delenv("POCL_OUTPUT_DIR")
    monkeypatch.setenv("POCL_RUNS_DIR", str(tmp_path / "runs"))  # else the run folder, never the committed reference
    assert nb.results_dir("smoke") == tmp_path / "runs" / "results" / "smoke"
    monkeypatch.delenv("POCL_RUNS_DIR")
    assert nb.figures_dir("smoke") == RUNS_ROOT / "figures" / "smoke" != nb.REPO_ROOT / "figures" / "smoke"


# ---- the analysis helpers behind the tables ----------------------------------------------------------------------


def _tidy(scores: dict[tuple[str, str], list[float]], dataset_offset: dict[str, float] | None = None) -> pd.DataFrame:
    """A tidy frame: scores[(method, variant)] = per-seed ROUGE-L, the same on every eval set (+ offset)."""
    rows = [{"method": m, "variant": v, "seed": s, "dataset": ds, "rouge_l": x + (dataset_offset or {}).get(ds, 0.0)}
            for (m, v), xs in scores.items() for s, x in enumerate(xs) for ds in EVAL_SETS]
    return pd.DataFrame(rows)


def test_paper_comparison_pairs_by_seed_and_checks_the_direction():
    df = _tidy({("KLD", "baseline"): [10.0, 12.0, 11.0], ("KLD", "+POCL"): [11.0, 12.5, 13.0]})
    out = paper.paper_comparison(df, "table1").set_index("dataset")
    # differences 1.0, 0.5, 2.0: mean 7/6, CI half-width t(0.975, 2) * sd / sqrt(3)
    d = np.array([1.0, 0.5, 2.0])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)
    assert out.loc["DollyEval", "diff"] == pytest.approx(7 / 6)
    assert out.loc["DollyEval", "ci95"] == pytest.approx(half, rel=1e-9)
    assert out.loc["DollyEval", "paper_diff"] == pytest.approx(24.87 - 23.49)  # Table 1, as printed
    assert set(out["direction_agrees"]) == {"yes"}
    worse = _tidy({("KLD", "baseline"): [10.0], ("KLD", "+POCL"): [9.0]})
    assert set(paper.paper_comparison(worse, "table1")["direction_agrees"]) == {"no"}


def test_gkd_ratio_rows_map_to_the_papers_default_row():
    df = _tidy({("GKD", "baseline"): [20.0], ("GKD", "+POCL (ratio 0-0)"): [21.0],
                ("GKD", "+POCL (ratio 0.3-0)"): [19.0], ("KLD", "baseline"): [20.0],
                ("KLD", "+POCL (ratio 0-0)"): [21.0]})
    out = paper.paper_comparison(df, "ratio").set_index(["method", "variant", "dataset"])["paper_diff"]
    # our GKD 0-0 (its default) sits beside the paper's GKD "ratio 0.3-0" row, which prints the default numbers
    assert out[("GKD", "+POCL (ratio 0-0)", "DollyEval")] == pytest.approx(26.60 - 24.67)
    assert np.isnan(out[("GKD", "+POCL (ratio 0.3-0)", "DollyEval")])  # no printed counterpart
    assert np.isnan(out[("KLD", "+POCL (ratio 0-0)", "DollyEval")])  # the mapping is GKD's only


def test_ranking_ablation_joins_tables_2_and_5_and_derives_the_average():
    df = _tidy({("KLD", "baseline"): [10.0], ("KLD", "+POCL (R-L)"): [11.0]})
    out = paper.paper_comparison(df, "ranking").set_index("dataset")["paper_diff"]
    printed = {"DollyEval": 24.56 - 23.49, "SelfInst": 11.10 - 10.33, "VicunaEval": 16.24 - 14.96,
               "S-NI": 21.06 - 19.70, "UnNI": 24.60 - 22.01}
    for ds, value in printed.items():
        assert out[ds] == pytest.approx(value)
    assert out["Avg"] == pytest.approx(np.mean(list(printed.values())))
    summary = tables.summary(df)
    beside = paper.beside_paper(summary, paper.paper_comparison(df, "ranking"), "ranking")
    row = beside[(beside.variant == "+POCL (R-L)") & (beside.dataset == "DollyEval")].iloc[0]
    assert row["paper"] == pytest.approx(24.56) and row["mean"] == pytest.approx(11.0)
    assert "paper 24.56 ✓" in paper.beside_wide(beside).loc[("KLD", "+POCL (R-L)"), "DollyEval"]


def test_ranking_frame_ranks_subsets_and_joins_truth_by_id():
    # ids out of order on purpose: the frame must join rows by id, not by position
    ranking = Ranking.build([3, 0, 2, 1], rouge_l=[90.0, 10.0, 60.0, 30.0], ce=[0.1, 2.0, 0.5, 1.0],
                            texts=["a", "b", "c", "d"])
    rows = [{"difficulty": d, "family": f"f{d}", "level": d, "instruction": "", "input": "", "output": ""}
            for d in (4, 3, 2, 1)]  # row i has difficulty 4 - i
    frame = frames.ranking_frame(ranking, rows, n_subsets=2).set_index("id")
    assert frame["rank_fusion"].to_dict() == {3: 1, 2: 2, 1: 3, 0: 4}
    assert frame["subset"].to_dict() == {3: 1, 2: 1, 1: 2, 0: 2}
    assert frame["true_difficulty"].to_dict() == {3: 1.0, 0: 4.0, 2: 2.0, 1: 3.0}
    agreement = frames.rank_agreement(frame.reset_index()).set_index("ranking")["spearman_rho"]
    assert agreement.to_dict() == pytest.approx({"rouge_l": 1.0, "ce": 1.0, "fusion": 1.0})
    # a measurer that cannot tell samples apart has no rho, whatever order its index-broken ties give
    flat = frames.ranking_frame(Ranking.build([0, 1, 2, 3], [0.0] * 4, [1.0, 2.0, 3.0, 4.0]), rows, 2)
    rho = frames.rank_agreement(flat).set_index("ranking")["spearman_rho"]
    assert np.isnan(rho["rouge_l"]) and rho["ce"] == pytest.approx(-1.0)  # CE rises as true difficulty falls


def test_stage_frame_reads_stages_and_record_dicts_alike():
    stages = [Stage(1, np.arange(5), 1.0, 0.3, 2), Stage(2, np.arange(10), 2.0, 0.0, 4)]
    from_dicts = [{"stage": 1, "n_samples": 5, "tau": 1.0, "alpha": 0.3, "steps": 2},
                  {"stage": 2, "n_samples": 10, "tau": 2.0, "alpha": 0.0, "steps": 4}]
    pd.testing.assert_frame_equal(frames.stage_frame(stages), frames.stage_frame(from_dicts))
    assert frames.find_record([(RunSpec("KLD", variant="baseline"), {"key": "k"})], "KLD", "baseline") == {"key": "k"}


def test_a_table1_only_profile_skips_the_ablations_cleanly(capsys):
    from types import SimpleNamespace
    from pocl_utils.experiment.config import get_profile
    ws = SimpleNamespace(profile=get_profile("classroom"))  # grid "table1": no ablation runs, nothing trained
    assert nb.specs_of(ws, "order") == [] and len(nb.specs_of(ws, "table1")) > 0
    rep = nb.grid_report(ws, "order", save=False)
    assert rep.runs.empty and rep.beside_wide.empty
    nb.figure(ws, "fig4a_order")
    assert "nothing to draw" in capsys.readouterr().out
    with pytest.raises(KeyError, match="valid: data_families_levels"):
        nb.figure(ws, "fig5")


# ---- the whole collection ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.notebooks
def test_collection_executes_on_smoke(tmp_path, monkeypatch):
    """Every notebook runs end to end on `smoke` (kernels inherit these variables), writing only under tmp_path."""
    monkeypatch.setenv("POCL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only add contention
    t0 = time.time()
    times = run_collection("smoke", out_dir=tmp_path / "executed", log=lambda s: None)
    print(json.dumps(times), f"{time.time() - t0:.0f}s")
    images = 0
    for path in NOTEBOOKS:
        executed = nbformat.read(tmp_path / "executed" / path.name, as_version=4)
        first = next(o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
        device_line = r"profile 'smoke' on device \S+ \((fp32|bf16-autocast[+a-z]*), torch "  # + the GPU path's tags
        assert re.match(device_line, first.get("text", "")), f"{path.name}: the first output names the device: {first}"
        for cell in executed.cells:
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", f"{path.name}: {out.get('ename')}: {out.get('evalue')}"
                images += "image/png" in out.get("data", {})
    assert images >= len(nb.FIGURES)  # each named figure is shown at least once (10 shows them all again)
    figures = tmp_path / "out" / "figures" / "smoke"
    for name in nb.FIGURES:
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").stat().st_size > 0
    runs = pd.read_csv(tmp_path / "out" / "results" / "smoke" / "runs.csv")
    assert {"device", "device_name", "precision", "torch", "transformers"} <= set(runs.columns)
    assert {"run_key", "git_commit", "wall_s", "grid", "method", "variant", "dataset", "rouge_l"} <= set(runs.columns)
    # runs.csv holds every grid under the headline's training protocol and Table 1 and the controls under the other;
    # the paper's grids each have a table beside the paper's, the controls (beyond the paper) their own tables
    paper_grids = set(nb.TABLE_FILES) - {"controls"}
    assert set(runs.grid) == set(nb.TABLE_FILES)
    assert set(runs[runs.training == "official"].grid) == set(nb.PROTOCOL_GRIDS)  # smoke: paper-text first
    assert set(runs[runs.training == "paper-text"].grid) == set(nb.TABLE_FILES)
    claims = pd.read_csv(tmp_path / "out" / "results" / "smoke" / "claims.csv")
    assert set(claims.training) == {"paper-text", "official"} and "j" in set(claims[claims.training == "official"].claim)
    assert (tmp_path / "out" / "results" / "smoke" / f"{nb.TABLE_FILES['controls']}_paired.csv").stat().st_size > 0
    for stem in (nb.TABLE_FILES[g] for g in paper_grids):
        assert (tmp_path / "out" / "results" / "smoke" / f"{stem}_vs_paper.md").exists()
    ends = pd.read_csv(tmp_path / "out" / "results" / "smoke" / "convergence.csv")  # notebook 10: P4's seeds
    assert set(ends.protocol) == {"paper-text", "official"} and "SFT" in set(ends.method)
    assert ends.valid_end.notna().all() and ends.sampled.notna().all() and ends.greedy.notna().all()
    assert (tmp_path / "runs" / "smoke" / "registry" / "runs").is_dir()  # the kernels used POCL_RUNS_DIR


def test_bad_override_in_a_notebook_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    """A typo in a notebook's overrides stops the run with one clear line, no traceback wall."""
    import papermill as pm
    monkeypatch.setenv("POCL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path / "out"))
    out = tmp_path / "00.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOK_DIR / "00_data.ipynb"), str(out), kernel_name=kernel_name(),
                            parameters={"profile": "smoke", "overrides": {"kd.lrr": 1.0}}, progress_bar=False)
    assert err.value.ename == "ConfigError" and "unknown key 'kd.lrr'" in err.value.evalue
    outputs = [o for c in nbformat.read(out, 4).cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert len(errors) == 1 and len(errors[0].traceback) == 1  # one line, no traceback wall
    assert errors[0].traceback[0].startswith("ConfigError: unknown key 'kd.lrr'; valid keys:")


# ---- the method's code beside its equations ------------------------------------------------------------------------


def _shown_names(path) -> list[str]:
    """The names passed to nb.show_source in a notebook's code cells."""
    names = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "show_source":
                assert all(isinstance(a, ast.Constant) for a in node.args), f"{path.name}: show_source takes literals"
                names += [a.value for a in node.args]
    return names


@pytest.mark.parametrize("stem, equations", [
    ("02_difficulty_ranking", {"difficulty.fuse_ranks"}),
    ("03_kd_methods", {"losses.log_probs", "losses.DIVERGENCES", "losses.divergence_naive", "losses.kd_loss"}),
    ("05_adaptive_parameters", {"curriculum.linear_schedule"}),
    ("06_order", {"curriculum.baby_step"}),
    ("07_temperature", {"losses.log_probs"}),
    ("08_sft_ratio", {"losses.kd_loss", "curriculum.linear_schedule"}),
])
def test_notebooks_show_the_code_of_their_equations(stem, equations):
    """Each notebook shows the package's code beside its equations, and every name it shows exists in pocl_utils."""
    from pocl_utils.notebook.source import source
    names = _shown_names(NOTEBOOK_DIR / f"{stem}.ipynb")
    assert equations <= set(names)
    for name in names:
        assert source(name).text  # raises SourceError naming what is missing


def test_show_source_reads_the_package_not_a_copy(capsys):
    import inspect

    from pocl_utils import curriculum
    from pocl_utils.notebook.source import SourceError, source
    shown = source("curriculum.linear_schedule")
    lines, first = inspect.getsourcelines(curriculum.linear_schedule)
    assert shown.path == "pocl_utils/curriculum.py" and shown.first == first == shown.last - len(lines) + 1
    assert shown.text.startswith("def linear_schedule(") and '"""' not in shown.text  # docstring left out
    assert "return [float(start + (end - start) * i / (n - 1)) for i in range(n)]" in shown.text
    assert '"""' in source("curriculum.linear_schedule", docstring=True).text
    table = source("losses.DIVERGENCES")  # a constant: its assignment
    assert table.text.startswith("DIVERGENCES") and 'Divergence("fkl", "KLD"' in table.text
    print(nb.show_source("difficulty.fuse_ranks"))
    out = capsys.readouterr().out
    assert nb.show_source("difficulty.fuse_ranks")._repr_markdown_() == out.rstrip("\n")  # what a notebook renders
    assert out.startswith("`pocl_utils/difficulty.py`, lines ") and "```python\ndef fuse_ranks(" in out
    with pytest.raises(SourceError, match="pocl_utils.losses has no 'kd_objectiv'"):
        source("losses.kd_objectiv")
    with pytest.raises(SourceError, match="no such module"):
        source("nowhere.fn")
