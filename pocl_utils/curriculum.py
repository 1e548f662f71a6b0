"""Training scheduler of POCL (paper §3.2-3.3): ordering, partition into subsets, Baby Step stages, tau/alpha
schedules; and the two training protocols that give each stage its optimizer settings (batch, steps, lr, warm-up):

* `paper-text`: the paper's text (A.2.2): POCL takes the baseline's optimizer steps, shared out over the stages by
  size, at the baseline's batch and learning rate.
* `official`: the official scripts (liuliuyuan6/POCL at f034fd3, `scripts/gpt2/kd/kd_base.sh` and
  `scripts/gpt2/pocl/train_0.1B_1.5B/t0.sh`-`t3.sh`), scaled by ratio to a profile's baseline (E epochs at batch b,
  peak lr eta): each stage 0.4 E epochs of its own rows at batch 8 b and lr eta / 5, no warm-up. With the scripts' own
  E = 20, b = 8, eta = 5e-4 a stage is 8 epochs at batch 64 and lr 1e-4, as t0.sh-t3.sh set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

ORDERS = ("easy_to_hard", "hard_to_easy", "random")
PROTOCOLS = ("official", "paper-text")
CONTROLS = ("pocl-optimizer", "restarts")  # see `plan_run`

# The official scripts' settings as ratios of a POCL stage's to the KD baseline's (liuliuyuan6/POCL at f034fd3; files
# under scripts/gpt2/, lines of that commit). Every launch has `--warmup-iters 0` and `--lr-decay-style cosine`
# (kd/kd_base.sh L57-58, pocl/train_0.1B_1.5B/t0.sh L58-59) and runs on GPUS_PER_NODE=4 (L7 of each).
OFFICIAL_STAGE_EPOCHS = 8 / 20  # t0.sh-t3.sh `--epochs 8` (t0.sh L62) / kd_base.sh `--epochs 20` (L61)
OFFICIAL_STAGE_BATCH = 8  # t0.sh-t3.sh BATCH_SIZE=16 (t0.sh L27) x 4 GPUs = 64 / kd_base.sh BATCH_SIZE=2 (L26) x 4 = 8
OFFICIAL_STAGE_LR = 1 / 5  # t0.sh-t3.sh LR=0.0001 (t0.sh L28) / kd_base.sh LR=0.0005 (L27)
# kd_base.sh `--kd-ratio 1.0` (L62): the KD baselines train on the KD loss alone, alpha = 1 - kd-ratio = 0. (The stages'
# kd-ratio 0.7/0.8/0.9/1.0 and --temperature-kld 1/1.33/1.67/2, t0.sh-t3.sh L63 and L100, are Eqs. 4 and 3 with the
# paper's alpha 0.3 -> 0 and tau 1 -> 2: the run's own schedules.)
OFFICIAL_BASELINE_ALPHA = 0.0


def apply_order(easy_first: np.ndarray, order: str, *, seed: int = 0) -> np.ndarray:
    """Reorder an easiest-first index array for the order ablation (Table 7): E2H keeps it, H2E reverses, random
    shuffles.

    Returns a new index array in the requested order.
    """
    easy_first = np.asarray(easy_first)
    if order == "easy_to_hard":
        return easy_first.copy()
    if order == "hard_to_easy":
        return easy_first[::-1].copy()
    if order == "random":
        return np.random.default_rng(seed).permutation(easy_first)
    raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")


def partition(order: np.ndarray | list[int], n: int) -> list[np.ndarray]:
    """Split an ordered index array into n (1 <= n <= N) consecutive int64 subsets d_1..d_n (§3.1), of sizes
    floor(N/n) or floor(N/n)+1 (the larger ones first), covering every index exactly once.
    """
    order = np.asarray(order, dtype=np.int64)
    if n < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n}")
    if n > len(order):
        raise ValueError(f"cannot split {len(order)} samples into {n} non-empty subsets")
    base, extra = divmod(len(order), n)
    sizes = [base + (1 if i < extra else 0) for i in range(n)]
    bounds = np.cumsum([0] + sizes)
    return [order[bounds[i]:bounds[i + 1]] for i in range(n)]


def baby_step(subsets: list[np.ndarray]) -> list[np.ndarray]:
    """Baby Step scheduler (§3.2): stage i trains on d_1 ∪ ... ∪ d_i.

    `subsets`: d_1..d_n, easiest first (`partition`).
    Returns n arrays; the i-th is the concatenation d_1 ∪ ... ∪ d_i.
    """
    return [np.concatenate(subsets[: i + 1]) for i in range(len(subsets))]


def linear_schedule(start: float, end: float, n: int) -> list[float]:
    """Per-stage values of Eq. 3 (tau) and Eq. 4 (alpha): v_i = v_0 + (v_n - v_0) * (i-1)/(n-1), i = 1..n, n >= 1, as
    floats (Eq. 4's v_0 - (v_0 - v_n) * (i-1)/(n-1) is the same line); n = 1 gives [start].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [float(start)]
    return [float(start + (end - start) * i / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class Stage:
    """One stage of a run: which samples, at which distillation temperature and SFT ratio, for how many optimizer
    steps, at which batch size and peak learning rate, with how many linear warm-up steps.

    `restart`: the stage starts a fresh AdamW and cosine schedule (over its own steps); False: it continues the run's
    one schedule, which spans every stage's steps and warms up over the first stage's `warmup`.
    """

    index: int  # 1-based stage number i
    samples: np.ndarray  # indices into the training set
    tau: float
    alpha: float
    steps: int
    batch: int = 0  # examples per optimizer step
    lr: float = 0.0  # peak learning rate of the stage's cosine schedule
    warmup: int = 0  # linear warm-up steps at the start of the stage's schedule
    restart: bool = True

    @property
    def epochs(self) -> float:
        """Passes over the stage's own samples: steps * batch / rows."""
        return self.steps * self.batch / max(1, len(self.samples))


def split_steps(total_steps: int, stage_sizes: list[int]) -> list[int]:
    """Steps per stage proportional to its size (largest remainders rounded up, every stage >= 1), summing exactly to
    `total_steps`. With equal epochs per stage this is the paper's budget: 20 baseline epochs = 8 epochs on each of the
    stages of sizes N/4, N/2, 3N/4, N (A.2.2), so baseline and POCL take the same number of optimizer steps.
    """
    if total_steps < len(stage_sizes):
        raise ValueError(f"{total_steps} optimizer steps cannot cover {len(stage_sizes)} stages; raise epochs or lower "
                         f"n_subsets")
    sizes = np.asarray(stage_sizes, dtype=float)
    raw = total_steps * sizes / sizes.sum()
    steps = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - steps), kind="stable")[: total_steps - steps.sum()]:
        steps[i] += 1  # largest remainders first
    while (steps == 0).any():  # every stage trains at least once; the largest stage pays, so the sum stays exact
        steps[np.argmax(steps)] -= 1
        steps[np.argmin(steps)] += 1
    return [int(s) for s in steps]


def plan_stages(easy_first: np.ndarray, *, n_subsets: int, total_steps: int, tau: tuple[float, float],
                alpha: tuple[float, float], order: str = "easy_to_hard", seed: int = 0,
                partition_fn: Callable = partition, baby_step_fn: Callable = baby_step,
                tau_schedule: Callable = linear_schedule, alpha_schedule: Callable = linear_schedule) -> list[Stage]:
    """The whole POCL schedule: order the ranked samples, partition, Baby Step, tau/alpha per stage, step budget.

    `total_steps`: the baseline's optimizer steps, shared out over the stages by size (`split_steps`).
    `tau`, `alpha`: (v_0, v_n) of Eq. 3 and Eq. 4. `order`: one of ORDERS (Table 7's ablation); `seed` shuffles
    "random".
    Returns one Stage per i = 1..n: the samples of d_1 ∪ ... ∪ d_i, tau_i, alpha_i and the stage's steps.
    """
    ordered = apply_order(easy_first, order, seed=seed)
    stages = [np.asarray(s, dtype=np.int64) for s in baby_step_fn(partition_fn(ordered, n_subsets))]
    taus = tau_schedule(tau[0], tau[1], n_subsets)
    alphas = alpha_schedule(alpha[0], alpha[1], n_subsets)
    steps = split_steps(total_steps, [len(s) for s in stages])
    return [Stage(i + 1, s, float(taus[i]), float(alphas[i]), steps[i]) for i, s in enumerate(stages)]


@dataclass(frozen=True)
class Protocol:
    """A training protocol (one of PROTOCOLS) applied to a profile's KD baseline: E epochs at batch b, peak lr eta.

    `warmup_frac` and `stage_warmup` apply under paper-text only (the official scripts warm up for 0 steps):
    stage_warmup True gives every stage's fresh schedule a linear warm-up over warmup_frac of its own steps; False warms
    up once, over warmup_frac of the run's total steps, at the start of its first stage (the baseline's warm-up).
    """

    name: str  # official | paper-text
    epochs: float  # E, the baseline's passes over the training set
    batch: int  # b
    lr: float  # eta
    warmup_frac: float = 0.0
    stage_warmup: bool = False

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; valid: {', '.join(PROTOCOLS)}")

    def baseline_steps(self, n_rows: int) -> int:
        """The baseline's optimizer steps: ceil(E * N / b), at least 1."""
        return max(1, math.ceil(self.epochs * n_rows / self.batch))

    def stage_settings(self) -> tuple[float, int, float]:
        """(epochs per stage, batch, lr) of a POCL stage: official (0.4 E, 8 b, eta / 5); paper-text (E, b, eta), whose
        steps are then the baseline's shared out by size (`split_steps`), not E passes per stage."""
        if self.name == "official":
            return (OFFICIAL_STAGE_EPOCHS * self.epochs, OFFICIAL_STAGE_BATCH * self.batch,
                    OFFICIAL_STAGE_LR * self.lr)
        return self.epochs, self.batch, self.lr

    def one_stage(self, n_rows: int, steps: int | None = None, batch: int | None = None,
                  lr: float | None = None) -> tuple[int, int, float, int]:
        """(steps, batch, lr, warm-up) of a run of one stage on `n_rows` rows: the baseline's, or the given ones."""
        steps = steps or self.baseline_steps(n_rows)
        warmup = int(self.warmup_frac * steps) if self.name == "paper-text" else 0
        return steps, batch or self.batch, lr or self.lr, warmup

    def stages(self, stage_rows: list[int], restarts: bool = True) -> list[tuple[int, int, float, int, bool]]:
        """(steps, batch, lr, warm-up, restart) of each POCL stage, given the rows each stage trains on.

        official: steps_i = ceil(0.4 E * rows_i / (8 b)), no warm-up. paper-text: the baseline's ceil(E * N / b) steps
        (N = the last stage's rows, every row) shared out by rows (`split_steps`); the warm-up as `Protocol` says.
        With restarts False one schedule spans every stage: it warms up in the first stage only (paper-text:
        warmup_frac of the total steps; official: 0) and later stages do not restart.
        """
        epochs, batch, lr = self.stage_settings()
        if self.name == "official":
            steps = [max(1, math.ceil(epochs * r / batch)) for r in stage_rows]
        else:
            steps = split_steps(self.baseline_steps(stage_rows[-1]), stage_rows)
        total = sum(steps)
        if self.name == "official":
            warm = [0] * len(steps)
        elif restarts and self.stage_warmup:
            warm = [int(self.warmup_frac * s) for s in steps]
        elif restarts:  # one warm-up per run: the baseline's, in the first stage
            warm = [min(steps[0], int(self.warmup_frac * total))] + [0] * (len(steps) - 1)
        else:  # one schedule over `total` steps: its warm-up may run past the first stage
            warm = [int(self.warmup_frac * total)] + [0] * (len(steps) - 1)
        return [(s, batch, lr, w, restarts or i == 0) for i, (s, w) in enumerate(zip(steps, warm))]


def plan_run(easy_first: np.ndarray, protocol: Protocol, *, pocl: bool, n_subsets: int, tau: tuple[float, float],
             alpha: tuple[float, float], order: str = "easy_to_hard", seed: int = 0, restarts: bool = True,
             control: str = "") -> list[Stage]:
    """Every stage of one run under a protocol: samples, tau, alpha, steps, batch, lr, warm-up, restart.

    * baseline (pocl False, no control): one stage of every row at (tau_0, alpha_0), the baseline's steps, b and eta.
    * POCL: `plan_stages`' Baby Step stages, each with `protocol.stages`' settings.
    * control "pocl-optimizer": one stage of every row at (tau_0, alpha_0), with POCL's batch, lr and total steps (the
      n_subsets stages the POCL run of this protocol would take); the warm-up of a one-stage run.
    * control "restarts": POCL's stages' steps, batch, lr, warm-up and restarts, but every stage trains on every row at
      (tau_0, alpha_0): the restarts without the curriculum.

    `easy_first`: the training positions, easiest first (only its length matters without POCL); the other arguments
    as in `plan_stages`. `restarts` False = one optimizer and schedule across the stages.
    Raises ValueError: an unknown control, or a control asked of a POCL run.
    """
    easy_first = np.asarray(easy_first, dtype=np.int64)
    n = len(easy_first)
    every = np.arange(n, dtype=np.int64)
    if control and (control not in CONTROLS or pocl):
        raise ValueError(f"control {control!r}: expected one of {', '.join(CONTROLS)} on a run without POCL")
    if not pocl and not control:
        steps, batch, lr, warm = protocol.one_stage(n)
        return [Stage(1, every, float(tau[0]), float(alpha[0]), steps, batch, lr, warm, True)]
    curriculum = plan_stages(easy_first, n_subsets=n_subsets, total_steps=max(n_subsets, 1), tau=tau, alpha=alpha,
                             order=order, seed=seed)
    settings = protocol.stages([len(s.samples) for s in curriculum], restarts=restarts)
    if control == "pocl-optimizer":
        steps, batch, lr, warm = protocol.one_stage(n, sum(s[0] for s in settings), settings[0][1], settings[0][2])
        return [Stage(1, every, float(tau[0]), float(alpha[0]), steps, batch, lr, warm, True)]
    if control == "restarts":
        return [Stage(i + 1, every, float(tau[0]), float(alpha[0]), *settings[i]) for i in range(len(settings))]
    return [replace(s, steps=st, batch=b, lr=lr, warmup=w, restart=r)
            for s, (st, b, lr, w, r) in zip(curriculum, settings)]


def plan_rows(stages: list[Stage]) -> list[dict]:
    """The plan as one dict per stage: stage, rows, batch, epochs (over the stage's rows), steps, lr, warmup, restart,
    tau, alpha; and a last row "total" (rows: the largest stage; epochs: steps x batch / that; lr: the peak)."""
    rows = [{"stage": s.index, "rows": len(s.samples), "batch": s.batch, "epochs": s.epochs, "steps": s.steps,
             "lr": s.lr, "warmup": s.warmup, "restart": s.restart, "tau": s.tau, "alpha": s.alpha} for s in stages]
    n = max(r["rows"] for r in rows)
    total = {"stage": "total", "rows": n, "batch": "", "steps": sum(r["steps"] for r in rows),
             "epochs": sum(r["steps"] * r["batch"] for r in rows) / max(1, n), "lr": max(r["lr"] for r in rows),
             "warmup": sum(r["warmup"] for r in rows), "restart": sum(r["restart"] for r in rows), "tau": "",
             "alpha": ""}
    return rows + [total]


def format_plan(stages: list[Stage]) -> str:
    """`plan_rows` as a fixed-width text table (one line per stage and the total), for printing."""
    rows = plan_rows(stages)
    cols = list(rows[0])

    def cell(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)

    table = [cols] + [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)
