"""A run's tables and figures go to the ignored run folder, never into the committed reference results; `--publish`
copies a finished run there whole (history subfolders kept) and refuses an unfinished one without touching anything."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from pocl_utils.notebook.outputs import PublishError, publish

REPO = Path(__file__).resolve().parents[1]


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders`: (size, mtime in ns), to tell whether anything was written there."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders if f.exists()
            for p in sorted(f.rglob("*"))}


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_writes_tables_and_figures_into_the_run_folder_not_the_reference(tmp_path):
    """`pocl-reproduce` with one notebook that saves a table and a figure through the facade, as every notebook does:
    both land under the runs root; the repository's results/ and figures/ are not written; the last lines say where
    the tables and figures are, and nothing about publishing (a maintainer's action)."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "laptop"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(textwrap.dedent("""
        import types
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd
        from pocl_utils import notebook as nb
        ws = types.SimpleNamespace(profile=profile)
        nb.save_table(ws, pd.DataFrame({"a": [1, 2]}), "probe_table")
        nb.save_figure(ws, plt.figure(), "probe_figure")"""))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "10_probe.ipynb"
    nbformat.write(nb, path)
    runs = tmp_path / "runs"
    reference = [REPO / "results", REPO / "figures"]
    before = _snapshot(*reference)
    script = (f"import sys; from pathlib import Path; from pocl_utils.notebook import reproduce; "
              f"reproduce.collection = lambda profile: [Path({str(path)!r})]; "
              f"sys.exit(reproduce.main(['--profile', 'laptop', '--runs-root', {str(runs)!r}]))")
    env = {k: v for k, v in os.environ.items() if k not in ("POCL_OUTPUT_DIR", "POCL_RUNS_DIR")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (runs / "results" / "laptop" / "probe_table.csv").read_text() == "a\n1\n2\n"
    assert (runs / "figures" / "laptop" / "probe_figure.png").stat().st_size > 0
    assert (runs / "laptop" / "notebooks" / "10_probe.ipynb").exists()
    assert _snapshot(*reference) == before  # the committed reference results were not touched
    last = proc.stdout.strip().splitlines()[-2:]
    assert last == ["tables in runs/results/laptop/, figures in runs/figures/laptop/",
                    f"compare with the committed reference: diff -q {REPO / 'results' / 'laptop'} runs/results/laptop"]
    assert "publish" not in proc.stdout


# ---- publish ------------------------------------------------------------------------------------------------------


def _executed(stem: str, image: bytes = b"\x89PNG figure") -> nbformat.NotebookNode:
    """An executed notebook as papermill leaves it: a title, a progress bar's updates, a cleared bar, a figure."""
    import base64
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("ws = nb.setup(profile)", execution_count=1, metadata={"papermill": {"duration": 1}})
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="profile 'laptop' on device cpu\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rSFT:  10%|█ | 1/10"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rSFT: 100%|██| 10/10\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="[prepare] teacher ready\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rpre-training:  50%|█ | 1/2"),
                    nbformat.v4.new_output("stream", name="stderr", text="\r          \r"),
                    nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(image).decode()})]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem} · a title\n\nprose"), code]
    return nb


def _run(tmp_path: Path, notebooks=("00_data", "10_tables_and_figures")) -> tuple[list[Path], Path, Path]:
    """A finished fake run: executed notebooks, the required tables, one more table and a figure."""
    executed, output = tmp_path / "runs" / "laptop" / "notebooks", tmp_path / "runs"
    executed.mkdir(parents=True)
    for stem in notebooks:
        nbformat.write(_executed(stem), executed / f"{stem}.ipynb")
    tables = output / "results" / "laptop"
    tables.mkdir(parents=True)
    for name, text in (("profile.json", "{}\n"), ("runs.csv", "run_key\nnew\n"), ("claims_summary.csv", "c\n1\n"),
                       ("table1_kd_methods_ours.csv", "m\n2\n")):
        (tables / name).write_text(text)
    (output / "figures" / "laptop").mkdir(parents=True)
    (output / "figures" / "laptop" / "training_logs.png").write_bytes(b"\x89PNG new")
    return [Path(f"notebooks/{stem}.ipynb") for stem in notebooks], executed, output


def _reference(tmp_path: Path) -> Path:
    """The committed reference as it is before publishing: an older run, history and a script's table."""
    ref = tmp_path / "repo"
    (ref / "results" / "laptop" / "run1_3seeds").mkdir(parents=True)
    (ref / "results" / "laptop" / "runs.csv").write_text("run_key\nold\n")
    (ref / "results" / "laptop" / "measurer_probe.csv").write_text("probe\n")
    (ref / "results" / "laptop" / "run1_3seeds" / "runs.csv").write_text("run_key\nhistory\n")
    (ref / "figures" / "laptop").mkdir(parents=True)
    (ref / "figures" / "laptop" / "training_logs.png").write_bytes(b"\x89PNG old")
    return ref


def test_publish_copies_the_run_and_keeps_history(tmp_path):
    notebooks, executed, output = _run(tmp_path)
    ref = _reference(tmp_path)
    lines, run_before = [], _tree(output)
    done = publish("laptop", notebooks, executed, output, reference=ref, log=lines.append)
    assert done == [ref / "results" / "laptop", ref / "figures" / "laptop"]
    tree = _tree(ref / "results" / "laptop")
    assert sorted(k for k in tree if k.startswith("notebooks/")) == [
        "notebooks/00_data.ipynb", "notebooks/10_tables_and_figures.ipynb", "notebooks/README.md"]
    assert {k: v for k, v in tree.items() if not k.startswith("notebooks/")} == {
        "claims_summary.csv": b"c\n1\n", "measurer_probe.csv": b"probe\n", "profile.json": b"{}\n",
        "run1_3seeds/runs.csv": b"run_key\nhistory\n", "runs.csv": b"run_key\nnew\n",
        "table1_kd_methods_ours.csv": b"m\n2\n"}
    assert _tree(ref / "figures" / "laptop") == {"training_logs.png": b"\x89PNG new"}
    assert sorted(p.name for p in (ref / "results").iterdir()) == ["laptop"]  # no staging folder left behind
    assert any("measurer_probe.csv" in line and "kept" in line for line in lines)
    assert _tree(output) == run_before  # the run itself is only read


def test_publish_into_an_empty_reference_and_after_an_interrupted_publish(tmp_path):
    notebooks, executed, output = _run(tmp_path)
    ref = tmp_path / "repo"
    (ref / "results").mkdir(parents=True)
    # a publish killed between its two renames: the old reference waits beside its missing place
    (ref / "results" / ".laptop.publish.old").mkdir()
    (ref / "results" / ".laptop.publish.old" / "measurer_probe.csv").write_text("probe\n")
    (ref / "results" / ".laptop.publish.tmp").mkdir()  # a half-built stage
    (ref / "results" / ".laptop.publish.tmp" / "runs.csv").write_text("half")
    publish("laptop", notebooks, executed, output, reference=ref, log=lambda s: None)
    assert _tree(ref / "results" / "laptop")["measurer_probe.csv"] == b"probe\n"  # recovered, then kept
    assert _tree(ref / "results" / "laptop")["runs.csv"] == b"run_key\nnew\n"
    assert sorted(p.name for p in (ref / "results").iterdir()) == ["laptop"]
    assert _tree(ref / "figures" / "laptop") == {"training_logs.png": b"\x89PNG new"}


@pytest.mark.parametrize("break_it, message", [
    (lambda ex, out: (ex / "10_tables_and_figures.failed.ipynb").write_text("{}"),
     "10_tables_and_figures failed (see "),
    (lambda ex, out: (ex / "10_tables_and_figures.interrupted.ipynb").write_text("{}"),
     "10_tables_and_figures interrupted (see "),
    (lambda ex, out: (ex / "00_data.ipynb").unlink(), "00_data has not run (no "),
    (lambda ex, out: (out / "results" / "laptop" / "claims_summary.csv").unlink(), "table claims_summary.csv is missing"),
    (lambda ex, out: (out / "figures" / "laptop" / "training_logs.png").unlink(), "no figure in "),
])
def test_publish_refuses_an_unfinished_run_and_touches_nothing(tmp_path, break_it, message):
    notebooks, executed, output = _run(tmp_path)
    break_it(executed, output)
    ref = _reference(tmp_path)
    before = _snapshot(ref)
    with pytest.raises(PublishError) as err:
        publish("laptop", notebooks, executed, output, reference=ref, log=lambda s: None)
    assert str(err.value).startswith(f"cannot publish 'laptop': {message}")
    assert str(err.value).endswith("; finish the run first (pocl-reproduce --profile laptop)")
    assert _snapshot(ref) == before


def test_publish_refusal_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("POCL_OUTPUT_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "pocl_utils.notebook.reproduce", "--profile", "smoke", "--publish",
                           "--runs-root", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pocl-reproduce: cannot publish 'smoke': 00_data has not run (no ")
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout


def test_publish_adds_the_executed_notebooks_as_a_reader_sees_them(tmp_path):
    notebooks, executed, output = _run(tmp_path)
    (executed / "timings.json").write_text('{"00_data.ipynb": 90.0, "10_tables_and_figures.ipynb": 30.0, "total": 120}')
    (executed.parent / "lab").mkdir()  # pocl-reproduce --lab solutions ran too
    nbformat.write(_executed("11_lab_solutions"), executed.parent / "lab" / "11_lab_solutions.ipynb")
    ref = _reference(tmp_path)
    (ref / "results" / "laptop" / "notebooks").mkdir()
    (ref / "results" / "laptop" / "notebooks" / "05_old_name.ipynb").write_text("{}")  # a previous run's notebook
    publish("laptop", notebooks, executed, output, reference=ref, log=lambda s: None)
    folder = ref / "results" / "laptop" / "notebooks"
    assert sorted(p.name for p in folder.iterdir()) == ["00_data.ipynb", "10_tables_and_figures.ipynb",
                                                        "11_lab_solutions.ipynb",
                                                        "README.md"]
    page = nbformat.read(folder / "00_data.ipynb", as_version=4)
    nbformat.validate(page)
    outs = page.cells[1].outputs
    assert [(o.output_type, o.get("name")) for o in outs] == [("stream", "stdout"), ("stream", "stderr"),
                                                              ("stream", "stdout"), ("display_data", None)]
    assert outs[1].text == "SFT: 100%|██| 10/10\n"  # the bar's last state; the cleared bar's empty box is gone
    assert "image/png" in outs[3].data
    assert "papermill" not in page.cells[1].metadata
    readme = (folder / "README.md").read_text()
    assert "| [00_data.ipynb](00_data.ipynb) | 00_data · a title | 1.5 min |" in readme
    assert "The whole collection: 2.0 min in this execution" in readme


def test_publish_refuses_notebooks_over_the_size_limit_and_touches_nothing(tmp_path, monkeypatch):
    from pocl_utils.notebook import outputs
    notebooks, executed, output = _run(tmp_path)
    nbformat.write(_executed("00_data", image=bytes(300_000)), executed / "00_data.ipynb")
    ref = _reference(tmp_path)
    before = _snapshot(ref)
    monkeypatch.setattr(outputs, "NOTEBOOKS_MAX_MB", 0.25)
    with pytest.raises(PublishError, match=r"cannot publish 'laptop': its executed notebooks take 0\.4 MB, over the "
                                           r"0\.25 MB limit \(largest: 00_data\.ipynb 0\.4 MB"):
        publish("laptop", notebooks, executed, output, reference=ref, log=lambda s: None)
    assert _snapshot(ref) == before


def test_a_published_notebook_names_no_machine_path(tmp_path):
    """The repository's absolute path in an output (a workspace line, a warning's file) becomes relative."""
    from pocl_utils.notebook.outputs import published_notebook
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("ws = setup()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text=f"workspace {tmp_path}/runs/laptop\nroot {tmp_path}\n")]
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "n.ipynb")
    text = published_notebook(tmp_path / "n.ipynb", root=tmp_path)
    assert str(tmp_path) not in text
    assert nbformat.reads(text, 4).cells[0].outputs[0].text == "workspace runs/laptop\nroot .\n"


def test_a_runs_root_outside_the_repository_is_not_named_either(tmp_path):
    """`pocl-reproduce --publish --runs-root DIR` with DIR elsewhere: DIR's absolute path becomes `<runs root>`, and a
    runs root inside the repository stays relative to it (the runs root's own replacement does not apply)."""
    from pocl_utils.notebook.outputs import published_notebook
    repo, outside = tmp_path / "repo", tmp_path / "elsewhere" / "runs"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("ws = setup()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text=f"workspace {outside}/laptop\nrepo {repo}/notebooks\n"
                                                f"running in {outside}\n")]
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "n.ipynb")
    out = nbformat.reads(published_notebook(tmp_path / "n.ipynb", root=repo, runs_root=outside), 4).cells[0].outputs[0]
    assert out.text == "workspace <runs root>/laptop\nrepo notebooks\nrunning in <runs root>\n"
    assert str(tmp_path) not in out.text
    inside = nbformat.reads(published_notebook(tmp_path / "n.ipynb", root=tmp_path, runs_root=outside), 4)
    assert inside.cells[0].outputs[0].text == ("workspace elsewhere/runs/laptop\nrepo repo/notebooks\n"
                                               "running in elsewhere/runs\n")
