"""Training scheduler of POCL (paper §3.2-3.3): ordering, partition into subsets, Baby Step stages, tau/alpha
schedules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ORDERS = ("easy_to_hard", "hard_to_easy", "random")


def apply_order(easy_first: np.ndarray, order: str, *, seed: int = 0) -> np.ndarray:
    """Reorder an easiest-first index array for the order ablation (Table 7): E2H keeps it, H2E reverses, random
    shuffles.

    Args:
        easy_first: sample indices, easiest first.
        order: one of ORDERS.
        seed: the shuffle's seed for "random".

    Returns:
        A new index array in the requested order.
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
    """Split an ordered index array into n consecutive subsets d_1..d_n (§3.1).

    Sizes are floor(N/n) or floor(N/n)+1 (the larger ones first), covering every index exactly once.

    Args:
        order: N sample indices, easiest first.
        n: the number of subsets, 1 <= n <= N.

    Returns:
        n int64 arrays d_1..d_n, consecutive slices of `order`.
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

    Args:
        subsets: d_1..d_n, easiest first (`partition`).

    Returns:
        n arrays; the i-th is the concatenation d_1 ∪ ... ∪ d_i.
    """
    return [np.concatenate(subsets[: i + 1]) for i in range(len(subsets))]


def linear_schedule(start: float, end: float, n: int) -> list[float]:
    """Per-stage values of Eq. 3 (tau) and Eq. 4 (alpha): v_i = v_0 + (v_n - v_0) * (i-1)/(n-1), i = 1..n.

    Eq. 4 is written v_0 - (v_0 - v_n) * (i-1)/(n-1), the same line. n = 1 gives [start].

    Args:
        start: v_0, the value of stage 1.
        end: v_n, the value of stage n.
        n: the number of stages, >= 1.

    Returns:
        The n values v_1..v_n as floats.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [float(start)]
    return [float(start + (end - start) * i / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class Stage:
    """One POCL stage: which samples, at which distillation temperature and SFT ratio, for how many optimizer steps."""

    index: int  # 1-based stage number i
    samples: np.ndarray  # indices into the training set
    tau: float
    alpha: float
    steps: int


def split_steps(total_steps: int, stage_sizes: list[int]) -> list[int]:
    """Give each stage a share of `total_steps` proportional to its size, summing exactly to `total_steps`.

    With equal epochs per stage this reproduces the paper's budget: 20 baseline epochs = 8 epochs on each of the
    stages of sizes N/4, N/2, 3N/4, N (A.2.2), so baseline and POCL take the same number of optimizer steps.

    Args:
        total_steps: the optimizer steps to share out, at least one per stage.
        stage_sizes: the number of samples of each stage.

    Returns:
        Steps per stage (largest remainders rounded up, every stage >= 1), summing to `total_steps`.
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

    Args:
        easy_first: sample indices, easiest first (a difficulty ranking).
        n_subsets: n, the number of subsets and stages.
        total_steps: optimizer steps of the baseline, shared out over the stages by size (`split_steps`).
        tau: (tau_0, tau_n) of Eq. 3.
        alpha: (alpha_0, alpha_n) of Eq. 4.
        order: one of ORDERS (Table 7's ablation); seed: the shuffle's seed for "random".
        partition_fn, baby_step_fn, tau_schedule, alpha_schedule: the pieces (the lab passes a student's own).

    Returns:
        One Stage per i = 1..n: the samples of d_1 ∪ ... ∪ d_i, tau_i, alpha_i and the stage's steps.
    """
    ordered = apply_order(easy_first, order, seed=seed)
    stages = [np.asarray(s, dtype=np.int64) for s in baby_step_fn(partition_fn(ordered, n_subsets))]
    taus = tau_schedule(tau[0], tau[1], n_subsets)
    alphas = alpha_schedule(alpha[0], alpha[1], n_subsets)
    steps = split_steps(total_steps, [len(s) for s in stages])
    return [Stage(i + 1, s, float(taus[i]), float(alphas[i]), steps[i]) for i, s in enumerate(stages)]
