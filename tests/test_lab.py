"""The student lab (notebook 11): its checks accept pocl_utils's functions and name the usual mistakes, its
student notebook is exactly what the source generates, and both variants execute on `smoke`."""
import ast
import json
import time
from functools import partial

import nbformat
import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from pocl_utils import curriculum, difficulty, losses
from pocl_utils.notebook import lab, reproduce
from pocl_utils.notebook.reproduce import collection, notebook_parameters, run_collection


def _todo(*args, **kwargs):
    raise NotImplementedError("your code here")


def _message(check, *answers, **options) -> str:
    with pytest.raises(lab.WrongAnswer) as err:
        check(*answers, **options)
    return str(err.value)


# ---- the checks accept the reference -----------------------------------------------------------------------------


def test_every_check_passes_pocl_utils_own_functions(capsys):
    lab.check_rrf(difficulty.fuse_ranks)
    lab.check_stages(curriculum.partition, curriculum.baby_step)
    lab.check_schedules(curriculum.linear_schedule, curriculum.linear_schedule)
    for kind in losses.KINDS:
        lab.check_divergence(partial(losses.divergence, kind=kind), kind)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 + len(losses.KINDS) and all(line.startswith("✓ correct") for line in out)


def test_wrong_answers_are_assertion_errors_and_unfinished_ones_say_so():
    assert issubclass(lab.WrongAnswer, AssertionError) and issubclass(lab.NotImplementedYet, lab.WrongAnswer)
    for name, answers, options in (("rrf", (_todo,), {}), ("stages", (_todo, curriculum.baby_step), {}),
                                   ("schedules", (curriculum.linear_schedule, _todo), {}),
                                   ("divergence", (_todo,), {"kind": "rkl"})):
        with pytest.raises(lab.NotImplementedYet, match="not implemented yet") as err:
            lab.CHECKS[name](*answers, **options)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback shown
    assert "alpha_schedule: not implemented yet" in _message(lab.check_schedules, curriculum.linear_schedule, _todo)


def test_check_prints_the_verdict_without_raising(capsys):
    assert lab.check("rrf", _todo) is None
    lab.check("rrf", difficulty.fuse_ranks)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("✗ rrf: not implemented yet") and out[1].startswith("✓ correct: rrf")


def test_an_error_inside_the_students_code_is_one_line_naming_the_input():
    msg = _message(lab.check_rrf, lambda rouge_l, ce, k=60: rouge_l + ce[:1] @ ce)
    assert msg.startswith("rrf (three samples") and "your function raised ValueError" in msg
    msg = _message(lab.check_schedules, lambda a, b, n: [a + (b - a) * (i - 1) / (n - 1) for i in range(1, n + 1)],
                   curriculum.linear_schedule)
    assert "n=1" in msg and "ZeroDivisionError" in msg and "the only stage uses tau_0" in msg


def test_pick_hands_out_the_students_functions_only_once_they_pass(capsys):
    assert lab.pick("rrf", difficulty.fuse_ranks) is difficulty.fuse_ranks
    assert lab.pick("rrf", _todo) is difficulty.fuse_ranks
    assert lab.pick("stages", _todo, curriculum.baby_step) == (curriculum.partition, curriculum.baby_step)
    ref = lab.pick("divergence", lambda s, t, **kw: 0.0, kind="tvd")
    s, t = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    assert float(ref(s, t, temperature=2.0)) == pytest.approx(float(losses.divergence(s, t, "tvd", temperature=2.0)))
    out = capsys.readouterr().out
    assert "rrf: using your fuse_ranks" in out and "rrf: using pocl_utils's implementation (not implemented yet)" in out
    assert "divergence: using pocl_utils's implementation (it does not pass its check yet)" in out


# ---- each check names the usual mistakes -------------------------------------------------------------------------


def _rrf(zero_based=False, k_fixed=None, method="average", ce_sign=1):
    def fuse(rouge_l, ce, k=60):
        k = k if k_fixed is None else k_fixed
        return (1 / (k + rankdata(-rouge_l, method=method) - zero_based)
                + 1 / (k + rankdata(ce_sign * ce, method=method) - zero_based))
    return fuse


@pytest.mark.parametrize("answer, expected", [
    (_rrf(zero_based=True), "sample 0 has ranks (1, 3) (ROUGE-L, CE); with k=60 expected 1/61+1/63=0.03227, got "
                            "0.03280 — ranks start at 1: add 1 to 0-based ranks"),
    (_rrf(k_fixed=0), "did you leave out k?"),
    (_rrf(k_fixed=60), "(k = 10): sample 0 has ranks (1, 3) (ROUGE-L, CE); with k=10 expected 1/11+1/13=0.16783, "
                       "got 0.03227 — the k argument is ignored"),
    (_rrf(method="ordinal"), "(ties): sample 2 has ranks (2.5, 3)"),
    (_rrf(ce_sign=-1), "rank 1 goes to the lowest CE"),
], ids=["rank off by one", "k=0", "k ignored", "ties by position", "CE reversed"])
def test_rrf_names_the_mistake(answer, expected):
    assert expected in _message(lab.check_rrf, answer)


def test_rrf_ties_get_their_own_hint():
    assert "share the mean of their ranks" in _message(lab.check_rrf, _rrf(method="ordinal"))


def _floor_split(order, n):  # drops the N mod n extra samples
    size = len(order) // n
    return [order[i * size:(i + 1) * size] for i in range(n)]


def _larger_last(order, n):
    return [part[::-1] for part in np.array_split(order[::-1], n)][::-1]


@pytest.mark.parametrize("answers, expected", [
    ((curriculum.partition, lambda subsets: subsets), "stage 2 should be [5, 0, 1, 4], got [1, 4] — not cumulative"),
    ((curriculum.partition, lambda subsets: [np.concatenate(subsets[i:]) for i in range(len(subsets))]),
     "stage 1 trains on d_1 alone"),
    ((_floor_split, curriculum.baby_step), "2 sample(s) got lost"),
    ((_larger_last, curriculum.baby_step), "the larger subsets come first"),
    ((lambda order, n: np.array_split(np.arange(len(order)), n), curriculum.baby_step),
     "the sample ids held in `order`, not their positions"),
], ids=["not cumulative", "stages shrink", "remainder lost", "larger last", "positions"])
def test_stages_names_the_mistake(answers, expected):
    assert expected in _message(lab.check_stages, *answers)


def _line(start, end, n, frac):
    return [start + (end - start) * frac(i, n) for i in range(1, n + 1)] if n > 1 else [start]


@pytest.mark.parametrize("answers, expected", [
    ((lambda a, b, n: curriculum.linear_schedule(b, a, n), curriculum.linear_schedule),
     "tau_schedule(tau_0=1, tau_n=2, n=4): expected [1, 1.333, 1.667, 2], got [2, 1.667, 1.333, 1] — the schedule "
     "is reversed"),
    ((partial(_line, frac=lambda i, n: i / n), curriculum.linear_schedule), "did you use i/n?"),
    ((curriculum.linear_schedule, partial(_line, frac=lambda i, n: i / (n - 1))), "off by one"),
    ((curriculum.linear_schedule, lambda a, b, n: _line(a, 2 * a - b, n, lambda i, n: (i - 1) / (n - 1))),
     "alpha_schedule(alpha_0=0.3, alpha_n=0, n=4)"),
    ((lambda a, b, n: curriculum.linear_schedule(a, b, n + 1), curriculum.linear_schedule),
     "expected 4 values (one per stage i = 1..n), got 5"),
], ids=["reversed", "i over n", "off by one", "alpha sign", "one too many"])
def test_schedules_names_the_mistake(answers, expected):
    assert expected in _message(lab.check_schedules, *answers)


def _kl_divergence(direction="fkl", scale_logits=True, tau_squared=True, use_mask=True, guard=True):
    """Forward or reverse KL written the way a student might, with one piece optionally left out."""
    def divergence(student_logits, teacher_logits, *, temperature=1.0, mask=None):
        tau = temperature if scale_logits else 1.0
        log_p = torch.log_softmax(teacher_logits / tau, -1)  # [B, T, V]
        log_q = torch.log_softmax(student_logits / tau, -1)  # [B, T, V]
        if direction == "rkl":
            log_p, log_q = log_q, log_p
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)  # [B, T]
        if mask is None or not use_mask:
            mask = torch.ones_like(per_token, dtype=torch.bool)
        count = max(int(mask.sum()), 1) if guard else int(mask.sum())
        return (temperature**2 if tau_squared else 1.0) * per_token[mask].sum() / count
    return divergence


@pytest.mark.parametrize("answer, kind, expected", [
    (_kl_divergence(), "fkl", None),
    (_kl_divergence("rkl"), "rkl", None),
    (_kl_divergence(scale_logits=False), "fkl", "temperature 2, no mask): expected 4.8602, got 11.952 — divide the "
                                                "logits by tau before the softmax"),
    (_kl_divergence(tau_squared=False), "fkl", "Eq. 7 scales the divergence by tau²"),
    (_kl_divergence(scale_logits=False, tau_squared=False), "fkl", "the temperature is ignored"),
    (_kl_divergence("rkl"), "fkl", "wrong direction: p and q are swapped; fkl is KL(p ‖ q)"),
    (_kl_divergence("fkl"), "rkl", "wrong direction: p and q are swapped; rkl is KL(q ‖ p)"),
    (_kl_divergence(use_mask=False), "fkl", "tokens where mask is False must not count"),
    (_kl_divergence(guard=False), "fkl", "every token masked): expected 0, got nan — with every token masked the "
                                         "mean is 0/0"),
    (_kl_divergence(), "jsd", "this is the fkl divergence, not jsd"),
], ids=["fkl ok", "rkl ok", "no softmax temperature", "no tau squared", "no temperature", "fkl reversed",
        "rkl reversed", "mask ignored", "0/0", "wrong kind"])
def test_divergence_names_the_mistake(answer, kind, expected):
    if expected is None:
        lab.check_divergence(answer, kind)
    else:
        assert expected in _message(lab.check_divergence, answer, kind)


def test_divergence_rejects_an_unknown_kind_and_a_non_scalar():
    assert "KIND = 'kl' is not one of fkl" in _message(lab.check_divergence, _kl_divergence(), "kl")
    msg = _message(lab.check_divergence, lambda s, t, **kw: torch.zeros(3), "fkl")
    assert "expected one number (the mean over counted tokens)" in msg


# ---- one source, two variants ------------------------------------------------------------------------------------


def _cells(variant_text: str) -> list:
    return nbformat.reads(variant_text, as_version=4).cells


def test_committed_student_notebook_is_generated_from_the_source():
    assert lab.STUDENT.read_text(encoding="utf-8") == lab.render(solutions=False), \
        "notebooks/11_lab.ipynb differs from its source: run `python -m pocl_utils.notebook.lab build`"


def test_variants_differ_only_inside_the_solution_blocks():
    source = nbformat.read(lab.SOURCE, as_version=4)
    student, solutions = _cells(lab.render(False)), _cells(lab.render(True))
    exercises = [k for k, c in enumerate(source.cells) if "exercise" in c.metadata.get("tags", [])]
    assert len(exercises) == 4
    for k, (src, stu, sol) in enumerate(zip(source.cells, student, solutions)):
        if k not in exercises:
            assert src.source == stu.source == sol.source
            continue
        assert lab.BEGIN not in sol.source + stu.source and lab.END not in sol.source + stu.source
        assert sol.source == "\n".join(line for line in src.source.splitlines()
                                       if line.strip() not in (lab.BEGIN, lab.END))
        assert stu.source.count(lab.TODO) == src.source.count(lab.BEGIN) and "# hint:" in stu.source
        ast.parse(stu.source)  # the student cell is valid Python: the TODO sits at the solution's indentation
    assert "profile" in notebook_parameters(lab.STUDENT)


def test_source_and_student_notebooks_are_clean_with_one_classroom_parameters_cell():
    for path in (lab.SOURCE, lab.STUDENT):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), path
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and 'profile = "classroom"' in params[0].source
    assert set(notebook_parameters(lab.STUDENT)) == {"profile", "overrides", "n_subsets", "n_per_subset"}


def test_the_solutions_pass_every_check(capsys):
    """The solution code of the source, executed here, passes all four checks (no kernel needed)."""
    namespace: dict = {}
    for cell in _cells(lab.render(True)):
        if "exercise" in cell.metadata.get("tags", []):
            exec(compile("import numpy as np\nimport torch\nfrom scipy.stats import rankdata\n" + cell.source,
                         "solution", "exec"), namespace)
    lab.check_rrf(namespace["fuse_ranks"])
    lab.check_stages(namespace["partition"], namespace["baby_step"])
    lab.check_schedules(namespace["tau_schedule"], namespace["alpha_schedule"])
    lab.check_divergence(namespace["divergence"], namespace["KIND"])
    assert capsys.readouterr().out.count("✓ correct") == 4


@pytest.mark.parametrize("source, message", [
    ("x = 1\n# BEGIN SOLUTION\nx = 2", "never closed"),
    ("# END SOLUTION", "'# END SOLUTION' without a matching BEGIN line"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "line 2: '# BEGIN SOLUTION' without a matching END"),
])
def test_broken_markers_name_the_cell_and_line(source, message):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["exercise"]})])
    with pytest.raises(lab.LabSourceError, match="cell 0") as err:
        lab.variant(notebook, solutions=False)
    assert message in str(err.value)


def test_markers_and_exercise_tags_must_go_together():
    untagged = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# BEGIN SOLUTION\n# END SOLUTION")])
    with pytest.raises(lab.LabSourceError, match="not a code cell tagged 'exercise'"):
        lab.variant(untagged, solutions=True)
    empty = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["exercise"]})])
    with pytest.raises(lab.LabSourceError, match="has no # BEGIN SOLUTION"):
        lab.variant(empty, solutions=True)


def test_cli_writes_both_variants(tmp_path, capsys):
    assert lab.main(["build", str(tmp_path / "student.ipynb")]) == 0
    assert lab.main(["solutions", str(tmp_path / "sub" / "solutions.ipynb")]) == 0
    assert (tmp_path / "student.ipynb").read_text(encoding="utf-8") == lab.STUDENT.read_text(encoding="utf-8")
    meta = nbformat.read(tmp_path / "sub" / "solutions.ipynb", as_version=4).metadata["pocl_lab"]
    assert meta["variant"] == "solutions"


def test_the_main_job_leaves_the_lab_out_and_lab_runs_it_alone(tmp_path, monkeypatch):
    """`--lab` executes the committed student notebook alone (on classroom unless --profile says otherwise), `--lab
    solutions` the generated solutions variant; both into <runs root>/<profile>/lab/."""
    assert lab.STUDENT not in collection() and not [p for p in collection() if "lab" in p.stem]
    seen = {}
    monkeypatch.setattr(reproduce, "RUNS_ROOT", tmp_path / "runs")  # where the solutions variant is generated
    monkeypatch.setattr(reproduce, "run_collection",
                        lambda profile, notebooks, extra, progress, out_dir: seen.update(
                            profile=profile, nbs=notebooks, out=out_dir))
    assert reproduce.main(["--lab"]) == 0
    assert seen["profile"] == "classroom" and seen["nbs"] == [lab.STUDENT]
    assert seen["out"] == tmp_path / "runs" / "classroom" / "lab"
    assert reproduce.main(["--profile", "smoke", "--lab", "solutions"]) == 0
    assert seen["profile"] == "smoke" and seen["out"] == tmp_path / "runs" / "smoke" / "lab"
    assert seen["nbs"] == [tmp_path / "runs" / "smoke" / "lab" / "source" / "11_lab_solutions.ipynb"]
    assert seen["nbs"][0].read_text(encoding="utf-8") == lab.render(solutions=True)


# ---- both variants, executed -------------------------------------------------------------------------------------


def _streams(path) -> tuple[str, list]:
    cells = nbformat.read(path, as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.outputs]
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream"), outputs


@pytest.mark.slow
@pytest.mark.notebooks
def test_both_variants_execute_on_smoke(tmp_path, monkeypatch):
    """Solutions: four ✓ and the student's pieces drive the experiment. Student: every check says "not implemented
    yet", nothing fails, and the experiment runs on pocl_utils's pieces. Both end with the figure."""
    monkeypatch.setenv("POCL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    solutions = lab.write(tmp_path / "lab" / "11_lab_solutions.ipynb", solutions=True)
    t0 = time.time()
    times = run_collection("smoke", notebooks=[lab.STUDENT, solutions], out_dir=tmp_path / "executed",
                           log=lambda s: None)
    print(json.dumps(times), f"{time.time() - t0:.0f}s")
    for name in ("11_lab.ipynb", "11_lab_solutions.ipynb"):
        text, outputs = _streams(tmp_path / "executed" / name)
        assert not [o for o in outputs if o.output_type == "error"], name
        assert "same plan as pocl_utils's runner: True" in text
        assert "image/png" in outputs[-1].get("data", {}) or "image/png" in outputs[-2].get("data", {})
        if name == "11_lab.ipynb":
            assert text.count("not implemented yet") == 8  # four checks, four picks
            assert "✓" not in text
        else:
            assert text.count("✓ correct") == 4 and "✗" not in text and "not implemented" not in text
            assert text.count(": using your ") == 4
    for fig in ("lab_curriculum", "lab_kd_by_subset"):
        assert (tmp_path / "out" / "figures" / "smoke" / f"{fig}.png").stat().st_size > 0


# ---- the teacher's pack -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pack_prepares_once_and_students_unpack_a_ready_workspace(tmp_path, monkeypatch):
    """`classroom pack` on smoke: the archive holds every prepared step under runs/smoke/ and PACK.json; unpacked into
    another checkout's root, preparing there builds nothing (each STEP.json is the packed one, byte for byte)."""
    import tarfile

    from pocl_utils.experiment.pipeline import prepare
    from pocl_utils.notebook import classroom
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    archive = classroom.pack("smoke", tmp_path / "out" / "ws.tar.gz", runs_root=tmp_path / "teacher", log=print)
    names = tarfile.open(archive).getnames()
    for step in ("data", "tokenizer", "teacher", "student_init", "ranking"):
        assert f"runs/smoke/{step}/STEP.json" in names
    assert "runs/smoke/PACK.json" in names and not [n for n in names if "registry" in n or ".lock" in n]
    assert sorted(p.name for p in archive.parent.iterdir()) == ["ws.tar.gz"]  # no temporary file left
    ws_root = classroom.unpack(archive, tmp_path / "student")
    assert ws_root == tmp_path / "student" / "runs" / "smoke"
    meta = json.loads((ws_root / "PACK.json").read_text())
    assert meta["profile"] == "smoke" and set(meta["steps"]) >= {"teacher", "student_init", "ranking"}
    before = {d.name: (d / "STEP.json").read_bytes() for d in classroom.packed_steps(ws_root)}
    prepare("smoke", runs_root=tmp_path / "student" / "runs")
    assert {d.name: (d / "STEP.json").read_bytes() for d in classroom.packed_steps(ws_root)} == before


def test_pack_refuses_real_data_and_unknown_profiles_and_unpack_foreign_archives(tmp_path):
    import io
    import tarfile

    from pocl_utils.experiment.config import ConfigError
    from pocl_utils.notebook import classroom
    with pytest.raises(ConfigError, match="reads real data"):
        classroom.pack("real-lite", tmp_path / "x.tar.gz")
    with pytest.raises(ConfigError, match="unknown profile 'clasroom'"):
        classroom.pack("clasroom", tmp_path / "x.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="member 'etc/passwd' is not a file of one workspace"):
        classroom.unpack(bad, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_the_answer_key_solves_exercise_4_for_every_divergence(capsys):
    """docs/lab_answers.md holds one `divergence` per KIND; each passes the lab's grader for its KIND."""
    import re

    text = (lab.REPO_ROOT / "docs" / "lab_answers.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    kinds = []
    for block in blocks:
        namespace = {"torch": torch, "np": np}
        exec(block, namespace)  # noqa: S102 - our own documentation
        kinds.append(namespace["KIND"])
        lab.check_divergence(namespace["divergence"], namespace["KIND"])
    assert sorted(kinds) == sorted(losses.KINDS)
    assert capsys.readouterr().out.count("✓ correct") == len(losses.KINDS)
