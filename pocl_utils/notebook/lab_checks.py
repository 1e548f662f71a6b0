"""The lab's grader: each `check_*` runs a student's function on several inputs (edge cases included) and compares it
with pocl_utils's own implementation.

A check prints "✓ correct" when every input agrees. Otherwise it raises `WrongAnswer` (an AssertionError) whose
message names the input, the expected and the received value, and a hint about the likely mistake. A function that
still raises NotImplementedError gives `NotImplementedYet` ("not implemented yet"). In the notebook, `check(name, ...)`
prints the verdict and never raises, so a half-done lab still runs to the end, and `pick(name, ...)` hands the
experiment the student's functions once they pass and pocl_utils's until then.
"""
from __future__ import annotations

import contextlib
import io
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import rankdata

from .. import curriculum, difficulty, losses


class WrongAnswer(AssertionError):
    """A student's answer differs from pocl_utils's: the message says on which input, how, and what to look at."""


class NotImplementedYet(WrongAnswer):
    """The student's function still raises NotImplementedError."""


def _call(name: str, where: str, fn: Callable, *args: Any, hint: str = "", **kwargs: Any) -> Any:
    """fn(*args, **kwargs); NotImplementedError and any other error become one-line lab messages."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotImplementedYet(f"{name}: not implemented yet (replace the `raise NotImplementedError` line in the "
                                f"exercise cell with your code)") from None
    except Exception as e:  # the student sees one line, not a traceback
        raise WrongAnswer(f"{name} {where}: your function raised {type(e).__name__}: {e}"
                          + (f" — {hint}" if hint else "")) from e


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in np.ravel(values)) + "]"


def _passed(name: str, n_inputs: int) -> None:
    print(f"✓ correct: {name} (matches pocl_utils on {n_inputs} inputs)")


# ---- exercise 1: reciprocal rank fusion (Eq. 2) ------------------------------------------------------------------


def _rrf(rouge_l, ce, k: float, method: str = "average", zero_based: bool = False, flip: tuple = (False, False)):
    """Eq. 2 and its usual mistakes: 0-based ranks, ties broken by position, a list ranked the wrong way round."""
    r_rouge = rankdata(np.asarray(rouge_l) * (1 if flip[0] else -1), method=method) - zero_based  # 1 = highest
    r_ce = rankdata(np.asarray(ce) * (-1 if flip[1] else 1), method=method) - zero_based  # 1 = lowest
    return 1.0 / (k + r_rouge) + 1.0 / (k + r_ce)


RRF_MISTAKES = (  # (variant of Eq. 2, hint shown when the student's scores equal it)
    (dict(zero_based=True), "ranks start at 1: add 1 to 0-based ranks (rank 1 = the easiest sample)"),
    (dict(zero_based=True, method="ordinal"), "ranks from argsort(argsort(...)) start at 0 and break ties by "
     "position: add 1, and give tied scores the mean of their ranks (scipy.stats.rankdata)"),
    (dict(method="ordinal"), "tied scores must share the mean of their ranks (rankdata(..., method='average'))"),
    (dict(method="min"), "tied scores must share the mean of their ranks, not the lowest one"),
    (dict(flip=(True, False)), "rank 1 goes to the highest ROUGE-L (higher ROUGE-L = easier)"),
    (dict(flip=(False, True)), "rank 1 goes to the lowest CE (lower CE = easier)"),
    (dict(flip=(True, True)), "both lists are ranked the wrong way round: rank 1 = easiest = highest ROUGE-L, "
     "lowest CE"),
)


def _rrf_hint(rouge_l, ce, k: float, got: np.ndarray) -> str:
    variants = [(_rrf(rouge_l, ce, k, **kw), hint) for kw, hint in RRF_MISTAKES]
    variants += [(_rrf(rouge_l, ce, 0.0), "did you leave out k? Eq. 2 adds k to every rank")]
    if k != difficulty.RRF_K:
        variants += [(_rrf(rouge_l, ce, difficulty.RRF_K), f"the k argument is ignored: you used k = "
                      f"{difficulty.RRF_K}")]
    for values, hint in variants:
        if np.allclose(got, values, rtol=1e-6, atol=0):
            return hint
    return "FR_score = 1/(k + r_rougeL) + 1/(k + r_CE), with 1-based ranks and tied scores sharing their mean rank"


def _rrf_cases() -> list[tuple[str, Any, Any, float]]:
    rng = np.random.default_rng(0)
    rouge_l = np.round(rng.uniform(0, 100, 40), -1)  # rounded to tens: many ties
    ce = np.round(rng.uniform(0.2, 4.0, 40), 1)
    return [("three samples", [90.0, 10.0, 50.0], [3.0, 2.0, 0.5], 60),
            ("ties", [80.0, 10.0, 50.0, 50.0], [0.5, 3.0, 2.0, 1.0], 60),
            ("k = 10", [90.0, 10.0, 50.0], [3.0, 2.0, 0.5], 10),
            ("40 random samples with ties", rouge_l, ce, 60)]


def check_rrf(fuse_ranks: Callable) -> None:
    """Grade exercise 1, reciprocal rank fusion (Eq. 2); prints "✓ correct" when every input agrees.

    fuse_ranks(rouge_l, ce, k) against difficulty.fuse_ranks (Eq. 2): one fused score per sample, on four inputs (three
    samples, ties, k = 10, 40 random samples with ties), compared to a relative tolerance of 1e-6.

    `fuse_ranks`: the student's `fuse_ranks(rouge_l, ce, k)`; it gets two float64 arrays and `k` by keyword and must
    return one score per sample.
    Raises NotImplementedYet: the function still raises NotImplementedError.
    Raises WrongAnswer: on the first input where the function raises or a score differs; the message names the sample,
    its ranks, the expected and the received score, and a hint about the likely mistake.
    """
    cases = _rrf_cases()
    for label, rouge_l, ce, k in cases:
        where = f"({label}: rouge_l={_fmt(rouge_l[:5])}{'…' if len(rouge_l) > 5 else ''}, k={k})"
        got = _call("rrf", where, fuse_ranks, np.array(rouge_l, dtype=np.float64), np.array(ce, dtype=np.float64),
                    k=k)
        expected = difficulty.fuse_ranks(rouge_l, ce, k)
        try:
            got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
        except (TypeError, ValueError):
            raise WrongAnswer(f"rrf {where}: expected one score per sample ({len(expected)} numbers), "
                              f"got {got!r}") from None
        bad = np.flatnonzero(~np.isclose(got, expected, rtol=1e-6, atol=0))
        if bad.size:
            i = bad[0]
            r1, r2 = rankdata(-np.asarray(rouge_l), "average")[i], rankdata(ce, "average")[i]
            raise WrongAnswer(f"rrf ({label}): sample {i} has ranks ({r1:g}, {r2:g}) (ROUGE-L, CE); with k={k} "
                              f"expected 1/{k + r1:g}+1/{k + r2:g}={expected[i]:.5f}, got {got[i]:.5f} — "
                              f"{_rrf_hint(rouge_l, ce, k, got)}")
    _passed("rrf", len(cases))


# ---- exercise 2: partition and Baby Step stages (§3.1-3.2) -------------------------------------------------------


def _as_list_of_arrays(name: str, where: str, got: Any, n: int, what: str) -> list[np.ndarray]:
    try:
        out = [np.asarray(x).reshape(-1) for x in got]
    except TypeError:
        raise WrongAnswer(f"{name} {where}: expected a list of {n} {what}, got {type(got).__name__}") from None
    if len(out) != n:
        raise WrongAnswer(f"{name} {where}: expected {n} {what}, got {len(out)}")
    return out


def _partition_hint(order: np.ndarray, got: list[np.ndarray], expected: list[np.ndarray]) -> str:
    sizes, want = [len(x) for x in got], [len(x) for x in expected]
    if sum(sizes) < len(order):
        return (f"{len(order) - sum(sizes)} sample(s) got lost: when n does not divide N, the N mod n extra samples "
                f"go one each into the first subsets (np.array_split does this)")
    if sizes != want and sorted(sizes) == sorted(want):
        return "the larger subsets come first (our convention; np.array_split does this)"
    if sizes != want:
        return "subset sizes are ⌊N/n⌋ or ⌊N/n⌋+1 and add up to N"
    if np.array_equal(np.concatenate(got), np.arange(len(order))):
        return "return the sample ids held in `order`, not their positions"
    return "d_1, …, d_n are consecutive slices of `order`, kept in its (easiest-first) order"


def _baby_step_hint(subsets: list[np.ndarray], got: list[np.ndarray], i: int) -> str:
    expected = np.concatenate(subsets[: i + 1])
    if i > 0 and np.array_equal(got[i], subsets[i]):
        return f"not cumulative: stage {i + 1} must be d_1 ∪ … ∪ d_{i + 1}, not d_{i + 1} alone"
    if len(got[0]) == sum(len(s) for s in subsets) and len(subsets) > 1:
        return "stage 1 trains on d_1 alone (the easiest samples); the stages grow from there"
    if sorted(got[i].tolist()) == sorted(expected.tolist()):
        return "right samples, wrong order: concatenate d_1, …, d_i in this order (np.concatenate)"
    return "stage i = d_1 ∪ … ∪ d_i, the first i subsets concatenated"


def _stage_cases() -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(1)
    return [("8 samples, n=4", rng.permutation(8), 4),
            ("10 samples, n=4 (n does not divide N)", rng.permutation(10), 4),
            ("7 samples, n=3", rng.permutation(7), 3), ("one stage: 5 samples, n=1", rng.permutation(5), 1),
            ("n = N = 3", rng.permutation(3), 3)]


def check_stages(partition: Callable, baby_step: Callable) -> None:
    """Grade exercise 2, the partition into subsets and the Baby Step stages; prints "✓ correct" when both agree.

    partition(order, n_subsets) against curriculum.partition, then baby_step(subsets) against curriculum.baby_step (fed
    the correct subsets, so each function is judged on its own), on five inputs each (n dividing N or not, n = 1,
    n = N).

    `partition`: the student's `partition(order, n_subsets)`: it gets an int array of sample ids (easiest first) and the
    number of subsets n, and must return n arrays d_1..d_n.
    `baby_step`: the student's `baby_step(subsets)`: it gets the list d_1..d_n and must return n stages, stage i = d_1 ∪
    ... ∪ d_i.
    Raises NotImplementedYet: a function still raises NotImplementedError.
    Raises WrongAnswer: on the first input where a function raises or its result differs; the message names the input,
    the expected and the received value, and a hint.
    """
    cases = _stage_cases()
    for label, order, n in cases:
        where = f"({label}: order={order.tolist()}, n_subsets={n})"
        expected = curriculum.partition(order, n)
        got = _call("partition", where, partition, order.copy(), n)
        got = _as_list_of_arrays("partition", where, got, n, "subsets")
        if not all(np.array_equal(g, e) for g, e in zip(got, expected)):
            raise WrongAnswer(f"partition {where}: expected {[e.tolist() for e in expected]}, got "
                              f"{[g.tolist() for g in got]} — {_partition_hint(order, got, expected)}")
    for label, order, n in cases:
        subsets = curriculum.partition(order, n)
        where = f"({label}: subsets={[s.tolist() for s in subsets]})"
        got = _as_list_of_arrays("baby_step", where, _call("baby_step", where, baby_step, [s.copy() for s in subsets]),
                                 n, "stages")
        for i, want in enumerate(curriculum.baby_step(subsets)):
            if not np.array_equal(got[i], want):
                raise WrongAnswer(f"baby_step {where}: stage {i + 1} should be {want.tolist()}, got {got[i].tolist()}"
                                  f" — {_baby_step_hint(subsets, got, i)}")
    _passed("partition and baby_step", 2 * len(cases))


# ---- exercise 3: the tau and alpha schedules (Eq. 3-4) -----------------------------------------------------------


def _schedule_hint(sym: str, start: float, end: float, n: int, got: np.ndarray, expected: np.ndarray) -> str:
    i = np.arange(1, n + 1)
    mistakes = [(expected[::-1], f"the schedule is reversed: stage 1 uses {sym}_0, stage n ends at {sym}_n"),
                (start + (end - start) * i / n, f"did you use i/n? Eq. 3-4 use (i-1)/(n-1), so stage 1 is exactly "
                 f"{sym}_0 and stage n exactly {sym}_n"),
                (start + (end - start) * i / max(n - 1, 1), "off by one: for stages i = 1..n the fraction is "
                 "(i-1)/(n-1)"),
                (start + (start - end) * (i - 1) / max(n - 1, 1), f"sign: the line runs from {sym}_0 towards {sym}_n")]
    for values, hint in mistakes if n > 1 else []:
        if np.allclose(got, values, rtol=1e-9, atol=1e-12):
            return hint
    if not np.isclose(got[0], start):
        return f"stage 1 must use {sym}_0 = {start:g}"
    if not np.isclose(got[-1], end) and n > 1:
        return f"the last stage must reach {sym}_n = {end:g}"
    return f"{sym}_i = {sym}_0 + ({sym}_n − {sym}_0)·(i−1)/(n−1) for i = 1..n"


def _check_schedule(name: str, sym: str, fn: Callable, cases: list[tuple[float, float, int]]) -> None:
    for start, end, n in cases:
        where = f"({sym}_0={start:g}, {sym}_n={end:g}, n={n})"
        hint = f"with one stage (n = 1), (i-1)/(n-1) is 0/0: the only stage uses {sym}_0" if n == 1 else ""
        got = _call(name, where, fn, start, end, n, hint=hint)
        expected = np.asarray(curriculum.linear_schedule(start, end, n))
        try:
            got = np.asarray(got, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise WrongAnswer(f"{name}{where}: expected a list of {n} numbers, got {got!r}") from None
        if got.shape != expected.shape:
            raise WrongAnswer(f"{name}{where}: expected {n} values (one per stage i = 1..n), got {got.size}: "
                              f"{_fmt(got)}")
        if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
            raise WrongAnswer(f"{name}{where}: expected {_fmt(expected)}, got {_fmt(got)} — "
                              f"{_schedule_hint(sym, start, end, n, got, expected)}")


TAU_CASES = [(1.0, 2.0, 4), (2.0, 1.0, 4), (1.0, 3.0, 5), (1.0, 2.0, 2), (1.0, 2.0, 1)]  # paper, Table 8's 2-1, n=1
ALPHA_CASES = [(0.3, 0.0, 4), (0.0, 0.3, 4), (0.3, 0.3, 3), (0.3, 0.0, 1)]  # paper, Table 9's 0-0.3, constant, n=1


def check_schedules(tau_schedule: Callable, alpha_schedule: Callable) -> None:
    """Grade exercise 3, the tau and alpha schedules (Eq. 3-4); prints "✓ correct" when both agree.

    tau_schedule(tau_0, tau_n, n) (Eq. 3) and alpha_schedule(alpha_0, alpha_n, n) (Eq. 4) against
    curriculum.linear_schedule: one value per stage, endpoints exact, n = 1 allowed. The inputs are TAU_CASES and
    ALPHA_CASES.

    `tau_schedule`: the student's `tau_schedule(tau_0, tau_n, n)`, which must return the n stage temperatures.
    `alpha_schedule`: the student's `alpha_schedule(alpha_0, alpha_n, n)`, which must return the n stage SFT ratios.
    Raises NotImplementedYet: a function still raises NotImplementedError.
    Raises WrongAnswer: on the first input where a function raises or its values differ; the message names the input,
    the expected and the received values, and a hint.
    """
    _check_schedule("tau_schedule", "tau", tau_schedule, TAU_CASES)
    _check_schedule("alpha_schedule", "alpha", alpha_schedule, ALPHA_CASES)
    _passed("tau_schedule and alpha_schedule", len(TAU_CASES) + len(ALPHA_CASES))


# ---- exercise 4: one divergence (Eq. 7-9, Appendix A.2.4) --------------------------------------------------------


def _divergence_cases() -> list[tuple[str, Any, Any, float, Any]]:
    gen = torch.Generator().manual_seed(0)
    logits = lambda *shape: 3 * torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    s1, t1, s2, t2 = logits(2, 3, 7), logits(2, 3, 7), logits(2, 4, 9), logits(2, 4, 9)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    return [("logits [2, 3, 7], temperature 1, no mask", s1, t1, 1.0, None),
            ("logits [2, 3, 7], temperature 2, no mask", s1, t1, 2.0, None),
            ("logits [2, 4, 9], temperature 1.5, mask [[1,1,0,1],[0,1,1,0]]", s2, t2, 1.5, mask),
            ("logits [2, 4, 9], every token masked", s2, t2, 2.0, torch.zeros(2, 4, dtype=torch.bool)),
            ("student = teacher, temperature 2", t2, t2.clone(), 2.0, None)]


def _divergence_hint(kind: str, got: float, student, teacher, tau: float, mask) -> str:
    ref = partial(losses.divergence, temperature=tau, mask=mask)
    count = student.shape[0] * student.shape[1] if mask is None else int(mask.sum())
    if mask is not None and count == 0:
        return "with every token masked the mean is 0/0: return 0 (divide by max(count, 1))"
    plain = ref(student, teacher, kind, temperature=1.0).item()
    mistakes = [(ref(teacher, student, kind).item(), f"wrong direction: p and q are swapped; {kind} is "
                 f"{FORMULAS[kind]} with p = teacher, q = student"),
                (tau**2 * plain, "divide the logits by tau before the softmax (Eq. 8-9)"),
                (ref(student, teacher, kind).item() / tau**2, "Eq. 7 scales the divergence by tau²"),
                (plain, "the temperature is ignored: softmax(logits / tau), then multiply by tau²"),
                (ref(student, teacher, kind).item() * count, "average over the counted tokens, do not sum")]
    if mask is not None:
        n_all = mask.numel()
        mistakes += [(ref(student, teacher, kind, mask=None).item(), "tokens where mask is False must not count"),
                     (ref(student, teacher, kind).item() * count / n_all, "divide by the number of counted tokens "
                      "(mask True), not by all tokens")]
    mistakes += [(losses.divergence(student, teacher, other, temperature=tau, mask=mask).item(),
                  f"this is the {other} divergence, not {kind}") for other in losses.KINDS if other != kind]
    for value, hint in mistakes:
        if np.isclose(got, value, rtol=1e-5, atol=1e-9):
            return hint
    return (f"tau² · mean over counted tokens of {FORMULAS[kind]}, with p = softmax(teacher/tau), "
            f"q = softmax(student/tau)")


# p = teacher, q = student (Appendix A.2.4), with the default beta the check uses
FORMULAS = {d.name: d.formula + ("" if d.default_beta is None else f", β = {d.default_beta}")
            for d in losses.DIVERGENCES.values()}


def check_divergence(divergence: Callable, kind: str) -> None:
    """Grade exercise 4, one KD divergence (Eq. 7-9); prints "✓ correct" when every input agrees.

    divergence(student_logits, teacher_logits, *, temperature, mask) against losses.divergence(..., kind) with the
    kind's default beta, on random fp64 logits: temperature 1 and not, a mask, everything masked, p = q. Compared to a
    relative tolerance of 1e-5.

    `divergence`: the student's function; it gets [batch, tokens, vocab] student and teacher logits, then `temperature`
    and `mask` (a [batch, tokens] bool tensor, or None) by keyword, and must return one number: tau² times the mean over
    the counted tokens.
    Raises NotImplementedYet: the function still raises NotImplementedError.
    Raises WrongAnswer: `kind` is not one of losses.KINDS, or on the first input where the function raises or its value
    differs (the message names the input, the expected and the received value, and a hint).
    """
    if kind not in losses.KINDS:
        raise WrongAnswer(f"divergence: KIND = {kind!r} is not one of {', '.join(losses.KINDS)}")
    cases = _divergence_cases()
    for label, student, teacher, tau, mask in cases:
        where = f"(kind={kind!r}, {label})"
        got = _call("divergence", where, divergence, student.clone(), teacher.clone(), temperature=tau,
                    mask=None if mask is None else mask.clone())
        try:
            got = float(got)  # a 0-d tensor, numpy scalar or float
        except (TypeError, ValueError, RuntimeError):
            raise WrongAnswer(f"divergence {where}: expected one number (the mean over counted tokens), got "
                              f"{getattr(got, 'shape', type(got).__name__)}") from None
        expected = losses.divergence(student, teacher, kind, temperature=tau, mask=mask).item()
        if not np.isclose(got, expected, rtol=1e-5, atol=1e-9):
            raise WrongAnswer(f"divergence {where}: expected {expected:.5g}, got {got:.5g} — "
                              f"{_divergence_hint(kind, got, student, teacher, tau, mask)}")
    _passed(f"divergence, KIND={kind!r}", len(cases))


# ---- in the notebook ---------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[..., None]] = {"rrf": check_rrf, "stages": check_stages, "schedules": check_schedules,
                                          "divergence": check_divergence}


def check(name: str, *answers: Callable, **options: Any) -> None:
    """Grade one exercise and print the verdict (✓, or ✗ with the reason).

    Runs CHECKS[name] on the student's function(s); never raises WrongAnswer (nor NotImplementedYet), so a check cell
    does not stop the notebook.

    `name`: the exercise, a key of CHECKS: "rrf", "stages", "schedules" or "divergence".
    `**options`: passed on to the check (`kind=` for "divergence").
    Raises KeyError: `name` is not a key of CHECKS.
    """
    try:
        CHECKS[name](*answers, **options)
    except WrongAnswer as e:
        print(f"✗ {e}")


def reference(name: str, **options: Any) -> tuple[Callable, ...]:
    """pocl_utils's own functions for exercise `name`, with the student's signatures.

    `**options`: for "divergence", `kind=`: the divergence bound into losses.divergence.
    Returns a tuple of functions in the order the exercise's check takes them: (difficulty.fuse_ranks,) for "rrf",
    (curriculum.partition, curriculum.baby_step) for "stages", curriculum.linear_schedule twice (tau, alpha) for
    "schedules", and (losses.divergence with `kind` bound,) for "divergence".
    Raises KeyError: an unknown `name`, or "divergence" without `kind`.
    """
    refs = {"rrf": (difficulty.fuse_ranks,), "stages": (curriculum.partition, curriculum.baby_step),
            "schedules": (curriculum.linear_schedule, curriculum.linear_schedule)}
    if name == "divergence":
        return (partial(losses.divergence, kind=options["kind"]),)
    return refs[name]


def pick(name: str, *answers: Callable, **options: Any) -> Any:
    """The student's function(s) if they pass CHECKS[name], else pocl_utils's; prints which (one line).

    The check runs silently; functions that fail it or are not implemented yet are replaced by
    `reference(name, **options)`, so the closing experiment always runs.

    `**options`: passed on to the check and to `reference` (`kind=` for "divergence").
    Returns the chosen function when the exercise has one ("rrf", "divergence"), else the tuple of chosen functions
    (e.g. (partition, baby_step) for "stages").
    Raises KeyError: `name` is not a key of CHECKS.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            CHECKS[name](*answers, **options)
        print(f"{name}: using your {', '.join(getattr(f, '__name__', 'function') for f in answers)}")
        chosen = answers
    except WrongAnswer as e:
        why = "not implemented yet" if isinstance(e, NotImplementedYet) else "it does not pass its check yet"
        print(f"{name}: using pocl_utils's implementation ({why})")
        chosen = reference(name, **options)
    return chosen[0] if len(chosen) == 1 else chosen
