"""POCL in TRL (`pocl_utils.integrations.trl`): the measurer on a datasets.Dataset, the Baby Step batch sampler, and
the KD trainer against our own loop on the `smoke` world (same stages, batches and per-step losses)."""
import copy
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pocl_utils.curriculum import plan_stages
from pocl_utils.experiment.config import TrainSpec
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.training.batches import batch_stream

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
from pocl_utils.integrations import compare, trl as pt  # noqa: E402
from conftest import spy_on_gkd  # noqa: E402

SPEC = TrainSpec(lr=3e-3, batch_size=16, epochs=6, warmup_frac=0.05, weight_decay=0.0, grad_clip=1.0)
TAU, ALPHA = (1.0, 2.0), (0.3, 0.0)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return prepare("smoke", runs_root=tmp_path_factory.mktemp("runs"), device="cpu", until="ranking",
                   log=lambda s: None)


@pytest.fixture(scope="module")
def measured(ws):
    """The smoke training set as a prompt/completion Dataset, measured with the smoke student."""
    return pt.measure_difficulty(compare.train_dataset(ws), ws.load_student_init("cpu"), ws.tokenizer, n_subsets=4,
                                 max_new_tokens=ws.profile.max_new_tokens, batch_size=16, progress=False)


def test_rows_encode_as_our_pipeline_encodes_them(ws):
    for e in ws.encoded("train"):
        row = ws.sets["train"][e.index]
        mine, completion = pt.encode_row({"prompt": row["prompt"], "completion": row["output"]}, ws.tokenizer)
        assert (mine.prompt_ids, mine.response_ids, completion) == (e.prompt_ids, e.response_ids, row["output"])


def test_measured_columns_rank_as_our_ranking_step(ws, measured):
    """The four columns; the fused order is the one the pipeline's ranking step wrote (same student, same Eq. 2)."""
    assert set(pt.COLUMNS) <= set(measured.column_names)
    rank = np.asarray(measured["difficulty_rank"])
    assert sorted(rank.tolist()) == list(range(1, len(measured) + 1))
    position = {e.index: k for k, e in enumerate(ws.encoded("train"))}
    ours = [position[i] for i in ws.ranking.order("fusion")]
    assert np.argsort(rank, kind="stable").tolist() == ours
    np.testing.assert_allclose(measured["ce"], ws.ranking.ce[np.argsort(ws.ranking.ids)], rtol=1e-5)
    stage = np.asarray(measured["stage"])
    assert np.bincount(stage)[1:].tolist() == [16, 16, 16, 16]
    assert (np.diff(stage[np.argsort(rank)]) >= 0).all()  # easier rows never in a later subset


def test_as_messages_gives_gkd_rows_whose_text_is_prompt_plus_completion(ws):
    plain = datasets.Dataset.from_dict({"prompt": ["bread book\n"], "completion": ["bop put"], "stage": [2]})
    assert getattr(ws.tokenizer, "chat_template", None) is None  # the world tokenizer has none: a copy gets one
    rows, tok = pt.as_messages(plain, ws.tokenizer)
    assert rows.column_names == ["stage", "messages"] and rows[0]["stage"] == 2
    assert rows[0]["messages"] == [{"role": "user", "content": "bread book\n"},
                                   {"role": "assistant", "content": "bop put"}]
    assert pt.row_texts(rows[0], tok) == ("bread book\n", "bop put", True)  # as the plain row's texts
    assert tok is not ws.tokenizer and getattr(ws.tokenizer, "chat_template", None) is None
    assert pt.as_messages(plain, tok)[1] is tok  # a tokenizer with a template is handed back as it is
    with pytest.raises(ValueError, match="needs 'prompt' and 'completion' columns, has \\['stage'\\]"):
        pt.as_messages(plain.remove_columns(["prompt", "completion"]))
    with pytest.raises(ValueError, match="row 1: 'prompt' and 'completion' must be strings"):
        pt.as_messages(datasets.Dataset.from_dict({"prompt": ["a", "b"], "completion": ["c", None]}))


def test_messages_rows_are_prompt_and_last_assistant_message(ws):
    tok = copy.deepcopy(ws.tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}>{% endif %}")
    row = {"messages": [{"role": "user", "content": "bread book"}, {"role": "assistant", "content": "bop put"}]}
    assert pt.row_texts(row, tok) == ("bread book>", "bop put", True)
    with pytest.raises(ValueError, match="row 3: needs 'prompt' and 'completion' or 'messages'"):
        pt.encode_row({"text": "x"}, tok, 3)


def _plan(measured, restarts=True):
    steps = pt.steps_for(len(measured), epochs=SPEC.epochs, batch_size=SPEC.batch_size)
    return pt.plan_curriculum(measured, total_steps=steps, tau=TAU, alpha=ALPHA, seed=0, restarts=restarts,
                              warmup_frac=SPEC.warmup_frac)


def test_sampler_yields_our_loops_batches_and_shards_them(measured):
    plan = _plan(measured)
    easy_first = np.argsort(np.asarray(measured["difficulty_rank"]), kind="stable")
    ours = plan_stages(easy_first, n_subsets=4, total_steps=plan.total_steps, tau=TAU, alpha=ALPHA)
    assert [(s.index, s.samples.tolist(), s.tau, s.alpha, s.steps) for s in plan.stages] == \
        [(s.index, s.samples.tolist(), s.tau, s.alpha, s.steps) for s in ours]
    expected = []
    for s in ours:
        stream = batch_stream(s.samples, [], SPEC.batch_size, np.random.default_rng([0, s.index]), "cpu")
        expected += [next(stream) for _ in range(s.steps)]
    one = pt.BabyStepBatchSampler(plan, SPEC.batch_size)
    assert list(one) == expected and len(one) == plan.total_steps == len(expected)
    ranks = [list(pt.BabyStepBatchSampler(plan, SPEC.batch_size, rank=r, world=2, accumulation=2)) for r in (0, 1)]
    for k, batch in enumerate(expected):  # rank 0's two micro-batches, then rank 1's, make up the global batch
        assert ranks[0][2 * k] + ranks[0][2 * k + 1] + ranks[1][2 * k] + ranks[1][2 * k + 1] == batch
    with pytest.raises(ValueError, match="stage 1 has a batch of"):
        pt.BabyStepBatchSampler(plan, 15, world=2, accumulation=8)


@pytest.mark.parametrize("restarts", [True, False])
def test_kd_trainer_equals_our_loop_over_the_first_20_steps(ws, measured, tmp_path, restarts):
    """Same stages, batches and per-step loss. alpha ends at 0.1, not the paper's 0: with alpha_n = 0 smoke's last
    stage has losses near 0.004, where the two paths' fp32 rounding (about 5e-8, from step 4 on; the weights are
    bitwise equal before) alone exceeds 1e-5 relative."""
    steps = pt.steps_for(len(measured), epochs=SPEC.epochs, batch_size=SPEC.batch_size)
    plan = pt.plan_curriculum(measured, total_steps=steps, tau=TAU, alpha=(0.3, 0.1), restarts=restarts,
                              warmup_frac=SPEC.warmup_frac)
    assert plan.total_steps >= 20 and len(plan.stages) == 4
    trainer = compare.train_with_trl(ws, measured, plan, SPEC, tmp_path)
    ours = compare.train_with_our_loop(ws, plan, SPEC)[1]
    mine = [row["loss"] for row in trainer.pocl_log]
    assert len(mine) == plan.total_steps
    assert [row["stage"] for row in trainer.pocl_log] == [plan.stage_at(k).index for k in range(plan.total_steps)]
    np.testing.assert_allclose(mine[:20], ours[:20], rtol=1e-5)


def test_trl_is_optional(tmp_path):
    """Without TRL the module imports; using a trainer raises one line naming the extra."""
    code = ("import sys; sys.modules['trl'] = None\n"
            "from pocl_utils.integrations import trl as pt\n"
            "for name in ('KDTrainer', 'GKDTrainer'):\n"
            "    try:\n        getattr(pt, name)\n    except ImportError as err:\n        print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"pocl_utils.integrations.trl needs TRL, which is not installed: {pt.TRL_EXTRA}"] * 2


def test_a_run_resumed_from_a_checkpoint_ends_as_the_uninterrupted_one(ws, measured, tmp_path):
    """Checkpoint at step 5 (inside stage 3), resume: the same batches, learning rates and losses, including stage 4's
    restart after the resume."""
    plan = pt.plan_curriculum(measured, total_steps=12, tau=TAU, alpha=ALPHA, warmup_frac=SPEC.warmup_frac)
    assert [s.steps for s in plan.stages] == [1, 2, 4, 5]  # stage 3 runs steps 3-6, stage 4 starts at 7
    saving = {"save_strategy": "steps", "save_steps": 5}
    whole = compare.train_with_trl(ws, measured, plan, SPEC, tmp_path, **saving)
    resumed = compare.train_with_trl(ws, measured, plan, SPEC, tmp_path, resume=str(tmp_path / "checkpoint-5"),
                                     **saving)
    assert [row["step"] for row in resumed.pocl_log] == list(range(5, 12))
    np.testing.assert_allclose([row["loss"] for row in resumed.pocl_log],
                               [row["loss"] for row in whole.pocl_log[5:]], rtol=1e-6)


def test_our_divergences_are_trls_times_tau_squared():
    """The facts docs/trl.md states, on the installed TRL: DistillationTrainer's chunked generalized JSD at beta and
    temperature tau, times tau^2, is our fkl (beta 0), rkl (beta 1) and jsd (beta); GKD's loss is the same divergence;
    the defaults differ from ours (DistillationConfig.beta 1.0, GKDConfig.beta 0.5, and GKD's temperature samples)."""
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    from pocl_utils.losses import divergence
    torch.manual_seed(0)
    hs, ht = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    ws_, wt = torch.randn(11, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    tau = 1.7
    for kind, beta in (("fkl", 0.0), ("rkl", 1.0), ("jsd", 0.5), ("jsd", 0.3)):
        ours = divergence(hs @ ws_.T, ht @ wt.T, kind, temperature=tau, mask=mask, beta=beta)
        theirs, _, _ = _chunked_divergence_loss(hs, ht, ws_, wt, mask, beta, temperature=tau)
        gkd = GKDTrainer.generalized_jsd_loss(hs @ ws_.T, ht @ wt.T, labels=mask.masked_fill(mask == 0, -100),
                                              beta=beta, temperature=tau)
        assert float(ours) == pytest.approx(float(theirs) * tau ** 2, rel=1e-6)  # TRL's kernel computes in fp32
        assert float(ours) == pytest.approx(float(gkd) * tau ** 2, rel=1e-9)
    fields = {c: {f: c.__dataclass_fields__[f].default for f in ("beta", "temperature")}
              for c in (trl.DistillationConfig, GKDConfig)}
    assert fields == {trl.DistillationConfig: {"beta": 1.0, "temperature": 1.0},
                      GKDConfig: {"beta": 0.5, "temperature": 0.9}}
    assert trl.__version__ == "1.16.0"  # the pin of pyproject.toml's [trl] extra, which these facts were read from


def test_on_policy_distillation_trainer_uses_the_stage_tau_for_the_loss_only(ws, measured, tmp_path):
    plan = pt.plan_curriculum(measured, total_steps=4, tau=(1.0, 2.5), alpha=(0.0, 0.0))
    args = trl.DistillationConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, learning_rate=1e-3,
                                  max_completion_length=4, temperature=0.7, report_to=[], save_strategy="no",
                                  use_cpu=True, logging_steps=1, seed=0, disable_tqdm=True)
    prompts = datasets.Dataset.from_dict({"prompt": measured["prompt"], "difficulty_rank": measured["difficulty_rank"],
                                          "stage": measured["stage"]})
    taus = []
    trainer = pt.DistillationTrainer(model=ws.load_student_init("cpu"), teacher_model=ws.load_teacher("cpu"),
                                     args=args, train_dataset=prompts, processing_class=ws.tokenizer,
                                     curriculum=plan, divergence="jsd")
    loss_at = trainer._compute_loss

    def recording(*a):
        out, trls = loss_at(*a), trl.DistillationTrainer._compute_loss(trainer, *a)[0]  # TRL's, at the same tau
        taus.append((trainer.temperature, trainer.generation_config.temperature, float(out[0] / trls)))
        return out

    trainer._compute_loss = recording
    trainer.train()
    assert trainer.beta == 0.5 and [row["tau"] for row in trainer.pocl_log] == [1.0, 1.5, 2.0, 2.5]
    assert taus == [(t, 0.7, pytest.approx(t ** 2, rel=1e-6)) for t in (1.0, 1.5, 2.0, 2.5)]  # loss x tau^2
    with pytest.raises(ValueError, match="alpha must be 0"):
        pt.DistillationTrainer(model=ws.load_student_init("cpu"), teacher_model=ws.load_teacher("cpu"), args=args,
                               train_dataset=prompts, processing_class=ws.tokenizer,
                               curriculum=pt.plan_curriculum(measured, total_steps=4, alpha=(0.5, 0.0)))


def test_gradient_accumulation_gives_the_whole_batchs_step(ws, measured, tmp_path):
    """Two micro-batches of 8 per step: the same global batches, and each step's loss the whole batch's token mean
    (each micro-batch weighted by its share of the step's tokens), so the run equals one with batches of 16."""
    plan = pt.plan_curriculum(measured, total_steps=12, tau=TAU, alpha=(0.3, 0.1), warmup_frac=SPEC.warmup_frac)
    whole = compare.train_with_trl(ws, measured, plan, SPEC, tmp_path / "whole")
    half = replace(SPEC, batch_size=8)
    split = compare.train_with_trl(ws, measured, plan, half, tmp_path / "split", gradient_accumulation_steps=2)
    assert len(split.pocl_log) == len(whole.pocl_log) == 12
    np.testing.assert_allclose([r["loss"] for r in split.pocl_log], [r["loss"] for r in whole.pocl_log], rtol=1e-5)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_trainer_follows_the_curriculum_and_our_loss(ws, measured, tmp_path, lmbda):
    """TRL's GKDTrainer with the curriculum: the sampler's batches stage by stage, each step's tau and alpha, and the
    loss our `kd_loss` of CE (on the dataset's completions) and tau^2 * jsd at the trainer's beta, on the dataset's
    batch (lmbda 0: no step generates) or on the student's samples (lmbda 1: every step does)."""
    from trl.experimental.gkd import GKDConfig

    from pocl_utils.losses import divergence, kd_loss
    from pocl_utils.modeling.heads import logits_at_positions
    rows, tok = pt.as_messages(measured.add_column("row", list(range(len(measured)))), ws.tokenizer)
    plan = pt.plan_curriculum(measured, total_steps=4, tau=(1.0, 2.5), alpha=(0.3, 0.0), seed=0)
    args = GKDConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, learning_rate=1e-3, lmbda=lmbda,
                     max_new_tokens=4, temperature=0.7, report_to=[], save_strategy="no", use_cpu=True,
                     logging_steps=1, seed=0, disable_tqdm=True)
    trainer = pt.GKDTrainer(model=ws.load_student_init("cpu"), teacher_model=ws.load_teacher("cpu"), args=args,
                            train_dataset=rows, processing_class=tok, curriculum=plan)
    (seen, generated), checked, loss_at = spy_on_gkd(trainer), [], trainer.compute_loss

    def ours(model, batch, stage):  # the loss from the models' logits by our losses module
        def logits(m, b):  # the logits at the completion tokens, by the forward our loss uses (TRL pads on the left)
            keep = torch.nn.functional.pad(b["labels"][:, 1:] != -100, (0, 1), value=False)
            return logits_at_positions(m, b["input_ids"], b["attention_mask"], keep), b["labels"][:, 1:][keep[:, :-1]]

        with torch.no_grad():
            student, _ = logits(model, batch)
            teacher, _ = logits(trainer.teacher_model, batch)
            gold, targets = logits(model, trainer._pocl_truth)
            kd = divergence(student[None], teacher[None], "jsd", temperature=stage.tau, beta=trainer.beta)
            return float(kd_loss(torch.nn.functional.cross_entropy(gold, targets), kd, stage.alpha))

    def loss(model, inputs, *a, **k):
        out = loss_at(model, inputs, *a, **k)
        checked.append((float(out.detach()), ours(model, inputs, trainer.pocl_stage)))
        return out

    trainer.compute_loss = loss
    trainer.train()
    assert seen == list(pt.BabyStepBatchSampler(plan, 16)) and len(seen) == plan.total_steps
    assert [(r["stage"], r["tau"], r["alpha"]) for r in trainer.pocl_log] == \
        [(s.index, s.tau, s.alpha) for s in map(plan.stage_at, range(plan.total_steps))]
    assert len({r["tau"] for r in trainer.pocl_log}) == 4 and trainer.pocl_log[0]["alpha"] == 0.3
    assert generated == ([] if lmbda == 0 else list(range(plan.total_steps)))
    assert len(checked) == plan.total_steps and trainer.beta == 0.5
    for mine, expected in checked:
        assert mine == pytest.approx(expected, rel=1e-5)
    assert [r["loss"] for r in trainer.pocl_log] == pytest.approx([m for m, _ in checked], rel=1e-6)
    with pytest.raises(ValueError, match="generalized JSD"):
        pt.GKDTrainer(model=ws.load_student_init("cpu"), teacher_model=ws.load_teacher("cpu"), args=args,
                      train_dataset=rows, processing_class=tok, curriculum=plan, divergence="tvd")


def test_train_dataset_gives_a_cut_response_as_its_kept_tokens(ws):
    """A response our encoding cuts to max_len (no EOS) reaches TRL as the text of its kept tokens, so a long real row
    cannot overflow the student's positions; an uncut one keeps the row's own text."""
    from pocl_utils.experiment.workspace import Workspace
    longest = max(len(e.prompt_ids) for e in ws.encoded("train"))
    short = Workspace(replace(ws.profile, max_prompt_len=longest, max_len=longest + 2), ws.root)
    rows = compare.train_dataset(short)
    cut = [(e, r) for e, r in zip(short.encoded("train"), rows) if e.response_ids[-1] != short.eos_id]
    assert cut, "max_len should cut some responses"
    for e, r in cut:
        assert short.tokenizer(r["completion"], add_special_tokens=False)["input_ids"] == e.response_ids
    whole = compare.train_dataset(ws)
    assert whole["completion"] == [ws.sets["train"][e.index]["output"] for e in ws.encoded("train")]
