"""POCL in Hugging Face TRL: difficulty columns for any `datasets.Dataset`, the Baby Step curriculum as a batch
sampler, per-stage tau and alpha (Eq. 3, 4), and trainers that train with them.

    ds = measure_difficulty(ds, student, tokenizer, n_subsets=4)          # + rouge_l, ce, difficulty_rank, stage
    plan = plan_curriculum(ds, total_steps=600, tau=(1.0, 2.0), alpha=(0.2, 0.0))
    trainer = make_kd_trainer(curriculum=plan, teacher_model=teacher, divergence="fkl", model=student,
                              args=SFTConfig(...), train_dataset=ds, processing_class=tokenizer)

Off-policy KD (POCL's main setting) is `KDTrainer`: TRL's `SFTTrainer` (its tokenization, collator, logging,
checkpoints) whose loss is ours, `training.step.step_loss`:

    L = alpha_i * CE + (1 - alpha_i) * tau_i^2 * D(p_tau_i || q_tau_i)              (Eq. 1 / Eq. 7)

with D any of `losses.DIVERGENCES`. On-policy KD is TRL's `DistillationTrainer` (`DistillationTrainer` here): its
generalized JSD at beta (0 = forward KL, 1 = reverse KL) times tau_i^2, which TRL leaves out; the loss temperature
tau_i is separate from the sampling temperature (`DistillationConfig.temperature`, fixed when the trainer is built).
GKD is TRL's experimental GKDTrainer (`GKDTrainer` here): with probability `GKDConfig.lmbda` a step trains on the
student's samples; its loss is ours, as above with D the generalized JSD, the CE on the dataset's completions.

The curriculum (`Curriculum`, planned by `curriculum.plan_stages`) is a list of stages: stage i trains on
d_1 ∪ ... ∪ d_i for its share of the optimizer steps. `BabyStepBatchSampler` yields each stage's batches as our loop
draws them (`training.batches.epoch_batches`, seeded per stage), so a Trainer run sees the same batches, has a fixed
length (max_steps is right), resumes from a checkpoint (the batches are a function of the step), and on several
processes each rank takes its contiguous slice of every global batch (each example of a stage once per epoch). With
`restarts` each stage starts a fresh optimizer state and learning-rate schedule, as the official POCL scripts do;
without, one schedule runs over all the stages.

TRL is an optional extra: this module imports without it; the trainers raise `ImportError` naming the extra.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..curriculum import Stage, partition, plan_stages
from ..data import Encoded
from ..difficulty import RRF_K, Ranking, score_samples, special_ids
from ..losses import DIVERGENCES, kd_loss
from ..modeling.models import precision_for
from ..training.batches import Batch, epoch_batches
from ..training.step import TOKENS, live_teacher, step_loss

TRL_EXTRA = "pip install 'pocl_utils[trl]'"
COLUMNS = ("rouge_l", "ce", "difficulty_rank", "stage")
JSD_BETA = {"fkl": 0.0, "rkl": 1.0}  # TRL's generalized JSD at these beta is forward / reverse KL


def require_trl():
    """The `trl` module, or ImportError in one line naming the extra to install."""
    try:
        import trl
    except ImportError:
        raise ImportError(f"pocl_utils.integrations.trl needs TRL, which is not installed: {TRL_EXTRA}") from None
    return trl


# ---------------------------------------------------------------------------------------------------------------
# the difficulty measurer on a datasets.Dataset
# ---------------------------------------------------------------------------------------------------------------

def _content(messages: list[dict], where: str) -> str:
    try:
        return "".join(m["content"] for m in messages)
    except (TypeError, KeyError):
        raise ValueError(f"{where}: expected a list of {{'role', 'content'}} messages") from None


def row_texts(row: dict, tokenizer, where: str = "row") -> tuple[str, str, bool]:
    """A row's prompt text (chat-templated when conversational), its completion text, and whether it is
    conversational; the formats TRL's SFTTrainer reads.

    "prompt"/"completion" strings; "prompt"/"completion" message lists (the prompt through the chat template with the
    generation prompt); or "messages", whose last message (the assistant's) is the completion.

    Raises ValueError: naming `where`, a row with neither format, or an empty completion.
    """
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            text, conversational = prompt, False
        else:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            completion, conversational = _content(completion, f"{where}: completion"), True
    elif "messages" in row:
        messages = row["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: 'messages' must end with the assistant's message (the completion)")
        text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        completion, conversational = _content(messages[-1:], f"{where}: messages"), True
    else:
        raise ValueError(f"{where}: needs 'prompt' and 'completion' or 'messages' columns, has {sorted(row)}")
    if not completion:
        raise ValueError(f"{where}: the completion is empty")
    return text, completion, conversational


CONCAT_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}{% endif %}")  # the messages' texts, nothing between


def as_messages(dataset, tokenizer=None):
    """A prompt/completion dataset as the rows TRL's GKDTrainer reads: "messages" = [{"role": "user", "content":
    prompt}, {"role": "assistant", "content": completion}], the other columns (difficulty_rank,
    stage, ...) kept, "prompt" and "completion" dropped.

    `tokenizer`: when given, the tokenizer to hand the trainer: itself if it has a chat template, else a copy whose
    template only concatenates the messages' texts (`CONCAT_CHAT_TEMPLATE`; base models such as GPT-2 have none), so a
    row's text is the plain prompt + completion.
    Returns the dataset, or (dataset, tokenizer) with `tokenizer`.
    Raises ValueError: the dataset has no "prompt" or "completion" column, or (naming the row) one is not a string.
    """
    import copy

    def convert(row: dict, index: int) -> dict:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not (isinstance(prompt, str) and isinstance(completion, str)):
            raise ValueError(f"row {index}: 'prompt' and 'completion' must be strings, got {prompt!r}, {completion!r}")
        return {"messages": [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": completion}]}

    if not {"prompt", "completion"} <= set(dataset.column_names):
        raise ValueError(f"as_messages: needs 'prompt' and 'completion' columns, has {sorted(dataset.column_names)}")
    out = dataset.map(convert, with_indices=True, remove_columns=["prompt", "completion"])
    if tokenizer is None:
        return out
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = CONCAT_CHAT_TEMPLATE
    return out, tokenizer


def encode_row(row: dict, tokenizer, index: int = 0) -> tuple[Encoded, str]:
    """A row as an `Encoded` example (prompt ids; completion ids ending in EOS) and its completion text.

    Tokenized as TRL's SFTTrainer does: prompt + completion together, the completion starting where the prompt's own
    tokens stop being a prefix; special tokens only for plain text (a chat template writes its own).
    """
    prompt, completion, conversational = row_texts(row, tokenizer, f"row {index}")
    eos_id, _ = special_ids(tokenizer)
    kw = {"add_special_tokens": not conversational}
    alone, whole = tokenizer(prompt, **kw)["input_ids"], tokenizer(prompt + completion, **kw)["input_ids"]
    cut = next((k for k, (a, b) in enumerate(zip(alone, whole)) if a != b), min(len(alone), len(whole)))
    response = whole[cut:] if whole[-1:] == [eos_id] else whole[cut:] + [eos_id]
    return Encoded(whole[:cut], response, index=index), completion


def measure_difficulty(dataset, model: torch.nn.Module, tokenizer, *, n_subsets: int = 4, max_new_tokens: int = 64,
                       batch_size: int = 16, method: str = "fusion", k: float = RRF_K, progress: bool = True):
    """The dataset with POCL's difficulty columns, measured with the student (§3.1, Eq. 2).

    Adds "rouge_l" (ROUGE-L F x 100 of the student's greedy output against the completion), "ce" (its mean token
    cross-entropy on the completion, nats), "difficulty_rank" (1 = easiest by `method`: "fusion", FR = 1/(k + r_rouge)
    + 1/(k + r_ce); "rouge_l" or "ce" for the §5.1 ablation) and "stage" (i of the subset d_i the row falls in when
    the ranking is cut into `n_subsets`), replacing old columns of those names. Scored by `difficulty.score_samples`
    on the model's device.

    `dataset`: prompt/completion or messages rows (`row_texts`); `tokenizer` needs EOS (and a chat template for those).
    Raises ValueError: a row in neither format (naming it), a row too long for the model, or n_subsets outside
    1..len(dataset).
    """
    from tqdm.auto import tqdm
    rows = [encode_row(row, tokenizer, i) for i, row in enumerate(dataset)]
    encoded, refs = [e for e, _ in rows], [[c] for _, c in rows]
    chunk = batch_size * 8  # a bar tick per 8 batches; each chunk is scored in length-sorted batches
    rouge, ce = np.empty(len(rows)), np.empty(len(rows))
    for s in tqdm(range(0, len(rows), chunk), desc="difficulty", disable=not progress, unit="chunk"):
        part = score_samples(model, tokenizer, encoded[s:s + chunk], max_new_tokens=max_new_tokens,
                             batch_size=batch_size, references=refs[s:s + chunk], k=k)
        rouge[part.ids], ce[part.ids] = part.rouge_l, part.ce
    easy_first = Ranking.build(np.arange(len(rows)), rouge, ce, k=k).order(method)  # row positions, easiest first
    rank, stage = np.empty(len(rows), dtype=np.int64), np.empty(len(rows), dtype=np.int64)
    rank[easy_first] = np.arange(1, len(rows) + 1)
    for i, subset in enumerate(partition(easy_first, n_subsets)):
        stage[subset] = i + 1
    out = dataset.remove_columns([c for c in COLUMNS if c in dataset.column_names])
    for name, values in zip(COLUMNS, (rouge, ce, rank, stage)):
        out = out.add_column(name, values.tolist())
    return out


# ---------------------------------------------------------------------------------------------------------------
# the curriculum and its batches
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Curriculum:
    """POCL's stages for a Trainer: which rows, tau_i, alpha_i and optimizer steps per stage (`curriculum.Stage`).

    restarts: each stage starts a fresh optimizer state and schedule (the official scripts); False = one schedule.
    seed: the seed of each stage's batch shuffles (stage i draws from `default_rng([seed, i])`, as our loop).
    warmup_frac: each schedule's warm-up, int(warmup_frac * its steps) steps (as `loop.optimizer_for`); None = the
        TrainingArguments' warm-up.
    """

    stages: tuple[Stage, ...]
    restarts: bool = True
    seed: int = 0
    warmup_frac: float | None = None

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def starts(self) -> list[int]:
        """The global optimizer step (0-based) at which each stage begins."""
        return np.cumsum([0] + [s.steps for s in self.stages])[:-1].tolist()

    def stage_at(self, step: int) -> Stage:
        """The stage that optimizer step `step` (0-based) belongs to; the last one past the end."""
        for stage, start in zip(self.stages, self.starts()):
            if step < start + stage.steps:
                return stage
        return self.stages[-1]


def plan_curriculum(dataset, *, total_steps: int, n_subsets: int | None = None, tau: tuple[float, float] = (1.0, 1.0),
                    alpha: tuple[float, float] = (0.0, 0.0), order: str = "easy_to_hard", seed: int = 0,
                    restarts: bool = True, warmup_frac: float | None = None) -> Curriculum:
    """POCL's schedule from the dataset's "difficulty_rank" column (`measure_difficulty`), by `curriculum.plan_stages`.

    `dataset`: rows with "difficulty_rank" (and "stage", whose largest value is the default n_subsets).
    `total_steps`: the baseline's optimizer steps (e.g. `steps_for`), shared out over the stages by their sizes.
    `n_subsets`: n; None = the dataset's number of stages.
    `tau`: (tau_0, tau_n), Eq. 3; alpha: (alpha_0, alpha_n), Eq. 4 (the CE weight).
    `order`: "easy_to_hard", "hard_to_easy" or "random" (Table 7); seed: its shuffle's and the batches' seed.
    restarts, warmup_frac: as in `Curriculum`.
    Returns the Curriculum.
    Raises ValueError: no "difficulty_rank" column, or a plan `plan_stages` rejects.
    """
    if "difficulty_rank" not in dataset.column_names:
        raise ValueError("plan_curriculum: the dataset has no 'difficulty_rank' column; run measure_difficulty first")
    if n_subsets is None and "stage" not in dataset.column_names:
        raise ValueError("plan_curriculum: pass n_subsets, or a dataset with a 'stage' column (measure_difficulty)")
    easy_first = np.argsort(np.asarray(dataset["difficulty_rank"]), kind="stable")
    n = n_subsets or int(max(dataset["stage"]))
    stages = plan_stages(easy_first, n_subsets=n, total_steps=total_steps, tau=tau, alpha=alpha, order=order,
                         seed=seed)
    return Curriculum(tuple(stages), restarts, seed, warmup_frac)


def baseline_curriculum(n_rows: int, *, total_steps: int, tau: float = 1.0, alpha: float = 0.0, seed: int = 0,
                        warmup_frac: float | None = None) -> Curriculum:
    """The baseline as a one-stage Curriculum: every row for all the steps at (tau, alpha), as our loop runs it."""
    return Curriculum((Stage(1, np.arange(n_rows), float(tau), float(alpha), int(total_steps)),), True, seed,
                      warmup_frac)


def steps_for(n_rows: int, *, epochs: float, batch_size: int) -> int:
    """The baseline's optimizer steps: `epochs` passes over n_rows in global batches of `batch_size` (at least 1)."""
    from ..experiment.config import TrainSpec
    from ..training.loop import total_steps
    return total_steps(n_rows, TrainSpec(batch_size=batch_size, epochs=epochs))


class BabyStepBatchSampler(torch.utils.data.Sampler):
    """The curriculum's batches for one process: stage by stage, `stage.steps` global batches each.

    Global batches are our loop's (`epoch_batches` over the stage's rows, seeded `[seed, stage]`); this rank takes its
    contiguous slice (sizes differ by at most one, earlier ranks larger, as `distributed.shard`), then splits it into
    `accumulation` micro-batches, or, with `repeat`, yields the slice `accumulation` times (TRL's generation batch,
    which DistillationTrainer splits itself). Its length is fixed: total steps x accumulation.

    Raises ValueError: a batch whose slice for some rank or micro-batch would be empty (naming the stage).
    """

    def __init__(self, curriculum: Curriculum, batch_size: int, *, rank: int = 0, world: int = 1,
                 accumulation: int = 1, repeat: bool = False):
        self.curriculum, self.batch_size, self.rank, self.world = curriculum, batch_size, rank, world
        self.accumulation, self.repeat = accumulation, repeat
        parts = world * (1 if repeat else accumulation)
        for s in curriculum.stages:
            sizes = {min(batch_size, len(s.samples)), len(s.samples) % batch_size or batch_size}
            if min(sizes) < parts:
                raise ValueError(f"BabyStepBatchSampler: stage {s.index} has a batch of {min(sizes)} rows, fewer than "
                                 f"the {parts} processes x micro-batches; use a batch size that divides the stage "
                                 f"sizes {[len(t.samples) for t in curriculum.stages]} or fewer processes")

    def global_batches(self):
        """Every global batch in training order: lists of row indices."""
        for stage in self.curriculum.stages:
            stream = epoch_batches(stage.samples, self.batch_size, np.random.default_rng([self.curriculum.seed,
                                                                                          stage.index]))
            for _ in range(stage.steps):
                yield next(stream)

    def __iter__(self):
        for batch in self.global_batches():
            mine = np.array_split(np.asarray(batch), self.world)[self.rank]
            if self.repeat:
                for _ in range(self.accumulation):
                    yield mine.tolist()
            else:
                for micro in np.array_split(mine, self.accumulation):
                    yield micro.tolist()

    def __len__(self) -> int:
        return self.curriculum.total_steps * self.accumulation


def stage_lr_lambda(curriculum: Curriculum, lambdas: list) -> Any:
    """The learning-rate factor of global step g with restarts: stage i's own schedule at g - start_i."""
    starts = curriculum.starts()

    def factor(step: int) -> float:
        i = curriculum.stages.index(curriculum.stage_at(step))
        return lambdas[i](step - starts[i])

    return factor


# ---------------------------------------------------------------------------------------------------------------
# the trainers
# ---------------------------------------------------------------------------------------------------------------

class CurriculumMixin:
    """POCL's curriculum for a `transformers.Trainer` subclass (put it first among the bases).

    The data order is `BabyStepBatchSampler`'s (the dataloader is this process's; its batches are already its shard),
    `args.max_steps` becomes the curriculum's total, each optimizer step knows its stage (`pocl_stage`, `pocl_tau`,
    `pocl_alpha`, logged with the loss), and with `curriculum.restarts` each stage starts with a fresh optimizer state
    and its own warm-up + decay (one LambdaLR over the run, a function of the step, so a resumed run continues it).
    `pocl_log` holds one row per optimizer step: step, stage, tau, alpha, loss, ce, kd: this process's share of the
    step's token means (summed over the processes they are the step's values; with one process, the values).
    """

    pocl_repeat_batches = False  # True for TRL trainers whose dataloader yields generation batches

    def __init__(self, *args, curriculum: Curriculum, **kwargs):
        self.curriculum = curriculum
        self._pocl_entered: int | None = None
        self.pocl_log: list[dict[str, float]] = []
        super().__init__(*args, **kwargs)
        self.args.max_steps = curriculum.total_steps
        self.args.num_train_epochs = 1

    @property
    def pocl_stage(self) -> Stage:
        return self.curriculum.stage_at(self.state.global_step)

    @property
    def pocl_tau(self) -> float:
        return self.pocl_stage.tau

    @property
    def pocl_alpha(self) -> float:
        return self.pocl_stage.alpha

    def get_train_dataloader(self):
        import datasets
        dataset, collator = self.train_dataset, self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        world, accumulation = self.accelerator.num_processes, self.args.gradient_accumulation_steps
        sampler = BabyStepBatchSampler(  # global batch: per-device batch x processes x accumulation steps
            self.curriculum, self.args.per_device_train_batch_size * world * accumulation,
            rank=self.accelerator.process_index, world=world, accumulation=accumulation,
            repeat=self.pocl_repeat_batches)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                                           num_workers=self.args.dataloader_num_workers,
                                           pin_memory=self.args.dataloader_pin_memory)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from transformers import get_scheduler
        plan = self.curriculum
        lengths = [s.steps for s in plan.stages] if plan.restarts else [plan.total_steps]
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only its lambdas are kept
        lambdas = [get_scheduler(self.args.lr_scheduler_type, dummy, num_warmup_steps=self._pocl_warmup(n),
                                 num_training_steps=n, scheduler_specific_kwargs=self.args.lr_scheduler_kwargs or {}
                                 ).lr_lambdas[0] for n in lengths]
        factor = stage_lr_lambda(plan, lambdas) if plan.restarts else lambdas[0]
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    def _pocl_warmup(self, steps: int) -> int:
        frac = self.curriculum.warmup_frac
        return self.args.get_warmup_steps(steps) if frac is None else int(frac * steps)

    def training_step(self, model, inputs, num_items_in_batch=None):
        stage, step = self.pocl_stage, self.state.global_step
        if self._pocl_entered != step:  # the first micro-batch of an optimizer step
            self._pocl_entered = step
            start = self.curriculum.starts()[self.curriculum.stages.index(stage)]
            if self.curriculum.restarts and stage.index > 1 and step == start:
                getattr(self.optimizer, "optimizer", self.optimizer).state.clear()  # a fresh AdamW's empty state
            self.pocl_enter_stage(stage)
            self.pocl_log.append({"step": step, "stage": stage.index, "tau": stage.tau, "alpha": stage.alpha,
                                  "loss": 0.0})
        loss = super().training_step(model, inputs, num_items_in_batch)
        return loss

    def pocl_enter_stage(self, stage: Stage) -> None:
        """Called before each optimizer step with its stage; subclasses set what their loss reads."""

    def _pocl_record(self, loss: torch.Tensor, parts: dict[str, Any], share: float = 1.0) -> None:
        """Add a micro-batch's loss and parts, weighted by its share of the step, to the step's `pocl_log` row."""
        if self.model.training and self.pocl_log:
            row = self.pocl_log[-1]
            row["loss"] += float(loss.detach()) * share
            for key in ("ce", "kd"):
                if key in parts:
                    row[key] = row.get(key, 0.0) + float(parts[key]) * share

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self.pocl_log:
            logs = {**logs, "pocl_stage": self.pocl_log[-1]["stage"], "pocl_tau": self.pocl_log[-1]["tau"],
                    "pocl_alpha": self.pocl_log[-1]["alpha"]}
        return super().log(logs, *args, **kwargs)


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    """Token-aligned labels [B, T] -> logit-aligned ones: position t predicts token t + 1 (a -100 column last)."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)


class KDLossMixin:
    """Off-policy KD with our loss for a Trainer whose batches have input_ids, attention_mask and labels (-100 off
    the completion): `training.step.step_loss` of the student against the live teacher at the stage's tau and alpha,

        L = alpha_i * CE + (1 - alpha_i) * tau_i^2 * D(p_tau_i || q_tau_i),

    D = `losses.DIVERGENCES[divergence]` at `beta` (None = its default). Weighted by the micro-batch's share of the
    step's tokens, so gradient accumulation and several processes give the token mean of the whole global batch.
    """

    def __init__(self, *args, teacher_model: torch.nn.Module, divergence: str = "fkl", beta: float | None = None,
                 **kwargs):
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence {divergence!r} is not one of {', '.join(DIVERGENCES)}")
        self.divergence, self.beta = divergence, beta
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # the Trainer counts the step's tokens (num_items_in_batch) for us
        self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)
        from trl.models.utils import _ForwardRedirection  # through the DDP wrapper's forward (its gradient hooks)
        self._pocl_redirect = _ForwardRedirection()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = Batch(inputs["input_ids"], inputs["attention_mask"], _shifted(inputs["labels"]))
        student = self.accelerator.unwrap_model(model)
        precision = precision_for(batch.input_ids.device)
        stage = self.pocl_stage
        rows = live_teacher(self.teacher_model, batch, precision=precision)
        loss, parts = self._pocl_redirect(model, student, step_loss, student, batch, rows, kind=self.divergence,
                                          tau=stage.tau, alpha=stage.alpha, beta=self.beta, precision=precision)
        share = 1.0
        if num_items_in_batch is not None:  # sum of token losses / the step's tokens over micro-batches and ranks
            share = parts[TOKENS] / num_items_in_batch
            self._pocl_record(loss, parts, float(share))
            loss = loss * (share * self.accelerator.num_processes)  # DDP then averages the gradients over processes
        else:
            self._pocl_record(loss, parts)
        return (loss, None) if return_outputs else loss


@lru_cache(maxsize=None)
def _classes() -> dict[str, type]:
    trl = require_trl()

    class KDTrainer(CurriculumMixin, KDLossMixin, trl.SFTTrainer):
        """TRL's SFTTrainer with POCL's curriculum and our KD loss (`KDLossMixin`): off-policy KD, POCL's setting.

        Keyword arguments besides SFTTrainer's: curriculum, teacher_model, divergence, beta."""

    class DistillationTrainer(CurriculumMixin, trl.DistillationTrainer):
        """TRL's on-policy DistillationTrainer with POCL's curriculum: the loss temperature is the stage's tau (the
        sampling temperature stays `DistillationConfig.temperature`) and the loss is multiplied by tau^2.

        Keyword arguments besides TRL's: curriculum, divergence ("fkl", "rkl" or "jsd", which sets TRL's beta: 0, 1,
        or `beta`, default our jsd's 0.5). alpha must be 0 in every stage (TRL's loss has no CE term)."""

        pocl_repeat_batches = True

        def __init__(self, *args, curriculum: Curriculum, divergence: str = "fkl", beta: float | None = None,
                     **kwargs):
            if any(s.alpha != 0 for s in curriculum.stages):
                raise ValueError("DistillationTrainer: TRL's on-policy loss has no CE term, so alpha must be 0 in "
                                 "every stage; use KDTrainer for alpha > 0")
            if divergence not in ("fkl", "rkl", "jsd"):
                raise ValueError(f"DistillationTrainer: TRL's loss is a generalized JSD (fkl, rkl or jsd), not "
                                 f"{divergence!r}; use KDTrainer for the other divergences")
            super().__init__(*args, curriculum=curriculum, **kwargs)
            self.beta = JSD_BETA.get(divergence, DIVERGENCES["jsd"].default_beta if beta is None else beta)
            self.sampling_temperature = self.temperature

        def pocl_enter_stage(self, stage: Stage) -> None:
            self.temperature = stage.tau  # read by the loss at each call; sampling uses generation_config

        def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
            loss, entropy, n = super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
            loss = loss * self.temperature ** 2  # tau^2 (Hinton et al.), which TRL does not apply
            self._pocl_record(loss, {})
            return loss, entropy, n

    return {"KDTrainer": KDTrainer, "DistillationTrainer": DistillationTrainer}


@lru_cache(maxsize=None)
def _gkd_class() -> type:
    """Built apart from the others: importing `trl.experimental` warns that its APIs are unstable."""
    require_trl()
    from trl.experimental.gkd import GKDTrainer as TRLGKDTrainer

    class GKDTrainer(CurriculumMixin, TRLGKDTrainer):
        """TRL's experimental GKDTrainer with POCL's curriculum and our loss at the stage's tau and alpha.

        A step trains, with probability `GKDConfig.lmbda` (POCL's GKD: 0.5), on the student's own samples at the
        sampling temperature `GKDConfig.temperature` (TRL's draw), else on the dataset's completions (or the
        teacher's, with `seq_kd`). Its loss is `training.step.step_loss` against the live teacher:

            L = alpha_i * CE + (1 - alpha_i) * tau_i^2 * D(p_tau_i || q_tau_i),

        D TRL's generalized JSD at beta ("fkl": 0, "rkl": 1, "jsd": `beta`, default our jsd's 0.5), the CE on the
        dataset's completions even when the divergence is on samples (as `training.kd`). Each micro-batch's loss is
        its token mean, the processes' weighted by their tokens (N processes train as one); the Trainer averages
        the micro-batches of gradient accumulation.

        Keyword arguments besides TRL's: curriculum, divergence, beta."""

        def __init__(self, *args, curriculum: Curriculum, divergence: str = "jsd", beta: float | None = None,
                     **kwargs):
            if divergence not in ("fkl", "rkl", "jsd"):
                raise ValueError(f"GKDTrainer: GKD's loss is a generalized JSD (fkl, rkl or jsd), not "
                                 f"{divergence!r}; use KDTrainer for the other divergences")
            super().__init__(*args, curriculum=curriculum, **kwargs)
            if self.lmbda > 0 and self.accelerator.num_processes > 1 and any(s.alpha > 0 for s in curriculum.stages):
                raise ValueError("GKDTrainer: with alpha > 0 a step on samples runs the student twice (samples, and "
                                 "the dataset's completions for the CE), which DDP does not allow in one backward; "
                                 "use alpha = 0 (POCL's GKD) or one process")
            self.divergence = divergence
            self.beta = JSD_BETA.get(divergence, DIVERGENCES["jsd"].default_beta if beta is None else beta)
            self.model_accepts_loss_kwargs = False  # a micro-batch's loss is its own token mean
            self.teacher_model.eval().requires_grad_(False)
            self._pocl_truth: dict[str, Any] = {}
            from trl.models.utils import _ForwardRedirection  # through the DDP wrapper's forward
            self._pocl_redirect = _ForwardRedirection()

        def training_step(self, model, inputs, num_items_in_batch=None):
            self._pocl_truth = dict(inputs)  # the dataset's batch, before TRL swaps in generated outputs
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            stage, student = self.pocl_stage, self.accelerator.unwrap_model(model)
            batch = Batch(inputs["input_ids"], inputs["attention_mask"], _shifted(inputs["labels"]))
            precision = precision_for(batch.input_ids.device)
            beta = self.beta if self.divergence == "jsd" else None
            rows = live_teacher(self.teacher_model, batch, precision=precision)
            truth = self._pocl_truth if self.model.training else inputs
            generated = truth.get("input_ids") is not inputs["input_ids"]
            alpha = stage.alpha if not generated else 0.0  # on samples: CE on the dataset's batch, below
            loss, parts = self._pocl_redirect(model, student, step_loss, student, batch, rows, kind=self.divergence,
                                              tau=stage.tau, alpha=alpha, beta=beta, precision=precision)
            if generated and stage.alpha > 0:
                gold = Batch(truth["input_ids"], truth["attention_mask"], _shifted(truth["labels"]))
                ce, ce_parts = self._pocl_redirect(model, student, step_loss, student, gold, None, kind=None,
                                                   tau=1.0, alpha=1.0, precision=precision)
                loss, parts = kd_loss(ce, loss, stage.alpha), {**parts, "ce": ce_parts["ce"]}
            # the ranks' token means weighted by their tokens (samples differ in length), so N processes give one
            # process's loss; DDP then averages the gradients over processes
            mine = float(parts[TOKENS])
            total = float(self.accelerator.reduce(torch.tensor(mine, device=loss.device), reduction="sum"))
            weight = mine / total if total > 0 else 0.0
            self._pocl_record(loss, parts, weight / getattr(self, "current_gradient_accumulation_steps", 1))
            loss = loss * (weight * self.accelerator.num_processes)
            return (loss, None) if return_outputs else loss

    return GKDTrainer


def __getattr__(name: str):
    if name == "GKDTrainer":
        return _gkd_class()
    if name in ("KDTrainer", "DistillationTrainer"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_kd_trainer(*, curriculum: Curriculum, teacher_model: torch.nn.Module, divergence: str = "fkl",
                    beta: float | None = None, **trainer_kwargs):
    """A `KDTrainer` (TRL's SFTTrainer + POCL's curriculum + our KD loss); trainer_kwargs are SFTTrainer's.

    Raises ImportError: TRL is not installed (naming the extra).
    """
    return _classes()["KDTrainer"](curriculum=curriculum, teacher_model=teacher_model, divergence=divergence,
                                   beta=beta, **trainer_kwargs)
