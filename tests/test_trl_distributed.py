"""The TRL KD and GKD trainers on 2 processes (`accelerate launch`, gloo, CPU): each rank trains on its slice of the
curriculum's global batches, every example of a stage is seen once per epoch of that stage, and the 2-process run's
per-step losses equal one process's (GKD: on the dataset's batches; on the student's samples both ranks sample at the
same steps). Run as a script under `accelerate launch`, this file is also the worker the tests launch."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import spy_on_gkd

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
EPOCHS, BATCH = 3, 16


def _setup(root: Path):
    """The smoke world's training rows as a prompt/completion Dataset with a seeded difficulty ranking, and its plan."""
    import datasets

    from pocl_utils.curriculum import partition
    from pocl_utils.experiment.config import get_profile
    from pocl_utils.experiment.workspace import Workspace
    from pocl_utils.integrations import trl as pt
    ws = Workspace(get_profile("smoke"), root)
    rows = [ws.sets["train"][e.index] for e in ws.encoded("train")]
    rank = np.random.default_rng(5).permutation(len(rows)) + 1
    stage = np.empty(len(rows), dtype=np.int64)
    for i, part in enumerate(partition(np.argsort(rank), 4)):
        stage[part] = i + 1
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["output"], "difficulty_rank": int(k),
                                      "stage": int(s)} for r, k, s in zip(rows, rank, stage)])
    plan = pt.plan_curriculum(ds, total_steps=pt.steps_for(len(ds), epochs=EPOCHS, batch_size=BATCH),
                              tau=(1.0, 2.0), alpha=(0.3, 0.0), warmup_frac=0.05)
    return ws, ds, plan


def _train(root: Path, out: Path, per_device: int) -> dict:
    """Train the plan; returns this process's per-step log and the token sequences of each step's batch."""
    import trl

    from pocl_utils.integrations import trl as pt
    ws, ds, plan = _setup(root)
    args = trl.SFTConfig(output_dir=str(out), per_device_train_batch_size=per_device, learning_rate=3e-3,
                         weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine", logging_steps=1,
                         report_to=[], save_strategy="no", use_cpu=True, gradient_checkpointing=False,
                         max_length=None, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = pt.make_kd_trainer(curriculum=plan, teacher_model=ws.load_teacher("cpu"), divergence="fkl",
                                 model=ws.load_student_init("cpu"), args=args, train_dataset=ds,
                                 processing_class=ws.tokenizer)
    seen: list[list[list[int]]] = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *a, **kw):
        ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
        seen.append([[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)])
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = recording
    trainer.train()
    return {"log": trainer.pocl_log, "seen": seen,
            "stages": [[int(i) for i in s.samples] for s in plan.stages], "steps": [s.steps for s in plan.stages]}


GKD_STEPS = 6


def _train_gkd(root: Path, out: Path, per_device: int, lmbda: float) -> dict:
    """TRL's GKDTrainer with the curriculum (alpha 0, as POCL's GKD; the trainer refuses alpha > 0 on samples under
    several processes) for GKD_STEPS steps; returns its per-step log, the dataset rows of each step's batch and the
    steps that sampled."""
    from trl.experimental.gkd import GKDConfig

    from pocl_utils.integrations import trl as pt
    ws, ds, _ = _setup(root)
    rows, tok = pt.as_messages(ds.add_column("row", list(range(len(ds)))), ws.tokenizer)
    plan = pt.plan_curriculum(rows, total_steps=GKD_STEPS, tau=(1.0, 2.0), alpha=(0.0, 0.0), seed=0)
    args = GKDConfig(output_dir=str(out), per_device_train_batch_size=per_device, learning_rate=1e-3, lmbda=lmbda,
                     max_new_tokens=4, temperature=1.0, report_to=[], save_strategy="no", use_cpu=True,
                     logging_steps=1, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = pt.GKDTrainer(model=ws.load_student_init("cpu"), teacher_model=ws.load_teacher("cpu"), args=args,
                            train_dataset=rows, processing_class=tok, curriculum=plan)
    seen, sampled = spy_on_gkd(trainer)
    trainer.train()
    return {"log": trainer.pocl_log, "seen": seen, "sampled": sampled,
            "batches": [list(map(int, b)) for b in pt.BabyStepBatchSampler(plan, BATCH)]}  # the global batches


def _worker(root: Path, out: Path, kind: str) -> None:
    import torch.distributed as dist
    result = _train(root, out, BATCH // 2) if kind == "kd" else _train_gkd(root, out, BATCH // 2, float(kind[3:]))
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def _launch(root: Path, out: Path, kind: str) -> list[dict]:
    """This file as the worker of a 2-process `accelerate launch`; returns each rank's result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(Path(__file__)),
           str(root), str(out), kind]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    from pocl_utils.experiment.pipeline import prepare
    pytest.importorskip("trl")
    return prepare("smoke", runs_root=tmp_path_factory.mktemp("runs"), device="cpu", until="student_init",
                   log=lambda s: None).root


def test_two_processes_see_each_stage_example_once_per_epoch_and_equal_one_process(smoke_root, tmp_path):
    ranks = _launch(smoke_root, tmp_path, "kd")
    one = _train(smoke_root, tmp_path / "one", BATCH)
    ws, ds, plan = _setup(smoke_root)
    sequences = [tuple(e.prompt_ids + e.response_ids) for e in ws.encoded("train")]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == plan.total_steps
    step = 0
    for stage in plan.stages:
        drawn = []  # the stage's examples in the order the two ranks trained on them
        for _ in range(stage.steps):
            assert Counter(map(tuple, ranks[0]["seen"][step] + ranks[1]["seen"][step])) == \
                Counter(map(tuple, one["seen"][step]))  # the two slices make up the one-process batch
            drawn += ranks[0]["seen"][step] + ranks[1]["seen"][step]
            step += 1
        n = len(stage.samples)
        for e in range(0, len(drawn) - n + 1, n):  # every full epoch of the stage: each example exactly once
            assert Counter(map(tuple, drawn[e:e + n])) == Counter(sequences[i] for i in stage.samples)
        assert len(drawn) >= n  # the stage ran at least one whole epoch
    two = np.array([a["loss"] + b["loss"] for a, b in zip(ranks[0]["log"], ranks[1]["log"])])
    # equal to float32 rounding: the two ranks' gradients are summed in another order than one process's, so the
    # weights drift by rounding from the first steps on; late losses (~3e-3) then differ by ~6e-8 absolute, so an
    # absolute floor of float32's epsilon (1.2e-7, on losses that start near 1) sits beside 1e-5 relative. A wrong
    # weighting of the ranks' token means (a factor 2, or a rank's share counted twice) is far outside both.
    np.testing.assert_allclose(two, [row["loss"] for row in one["log"]], rtol=1e-5, atol=1.2e-7)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_trainer_on_two_processes_shares_the_curriculums_batches(smoke_root, tmp_path, lmbda):
    """GKD on 2 processes: at each step the two ranks' rows make up the sampler's global batch, both run the same
    stage (tau) and sample at the same steps (lmbda 1: every step; 0: none); on the dataset's batches (lmbda 0) the
    per-step loss equals one process's, up to float32 rounding."""
    ranks = _launch(smoke_root, tmp_path, f"gkd{lmbda}")
    one = _train_gkd(smoke_root, tmp_path / "one", BATCH, lmbda)
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == GKD_STEPS == len(one["seen"])
    for step in range(GKD_STEPS):
        assert sorted(ranks[0]["seen"][step] + ranks[1]["seen"][step]) == sorted(one["batches"][step])
        assert sorted(one["seen"][step]) == sorted(one["batches"][step])
    assert ranks[0]["sampled"] == ranks[1]["sampled"] == ([] if lmbda == 0 else list(range(GKD_STEPS)))
    assert [r["tau"] for r in ranks[0]["log"]] == [r["tau"] for r in ranks[1]["log"]] == [r["tau"] for r in one["log"]]
    two = np.array([a["loss"] + b["loss"] for a, b in zip(ranks[0]["log"], ranks[1]["log"])])
    assert np.isfinite(two).all()
    if lmbda == 0:
        np.testing.assert_allclose(two, [r["loss"] for r in one["log"]], rtol=1e-5, atol=1.2e-7)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "kd")
