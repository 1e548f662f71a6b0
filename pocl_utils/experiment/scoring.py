"""How a model is scored: the paper's protocol on the five eval sets (sampled responses, ROUGE-L, mean over seeds),
greedy ROUGE-L (on the validation subset for checkpoint selection, and on the eval sets as a deterministic second
protocol), the validation loss (the other signal checkpoint selection may use), the evaluation's part of a run key,
and the cached scores of the reference models (the teacher and the untrained student).

May import the method's modules, `modeling` and `experiment.workspace`; nothing of `training`, `analysis` or
`notebook`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..difficulty import greedy_outputs_and_ce
from ..evaluate import evaluate_set, greedy_rouge, greedy_rouge_rows, subset
from .config import eval_sets
from .workspace import Workspace


def eval_key(p) -> dict[str, Any]:
    """The evaluation's part of a run key: the settings that change a model's scores.

    Args:
        p: the profile.

    Returns:
        {"seeds": eval_seeds, "max_examples": eval_max_examples, "new": max_new_tokens}, plus "greedy":
        greedy_max_examples unless it is -1 (none), so keys from before greedy scoring stay the same.
    """
    key = {"seeds": list(p.eval_seeds), "max_examples": p.eval_max_examples, "new": p.max_new_tokens}
    return key if p.greedy_max_examples < 0 else {**key, "greedy": p.greedy_max_examples}


def eval_data(ws: Workspace, role: str, max_examples: int) -> tuple[list, list[list[str]]]:
    """A set's encoded prompts and reference lists, on the profile's seeded subset.

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        role: the set, a key of ROLES.
        max_examples: the subset's size (`evaluate.subset`, seed 0); 0 = every example.

    Returns:
        (encoded examples, each example's list of reference strings), in the set's order.
    """
    enc = ws.encoded(role)
    enc = [enc[i] for i in subset(len(enc), max_examples)]
    return enc, [ws.sets[role][e.index]["references"] for e in enc]


def validation_score(ws: Workspace, model) -> float:
    """Greedy ROUGE-L on the validation subset (checkpoint selection, A.2.2).

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        model: the causal LM to score.

    Returns:
        The mean ROUGE-L in [0, 100] on `valid_max_examples` rows of the validation set.
    """
    enc, refs = eval_data(ws, "valid", ws.profile.valid_max_examples)
    return greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=ws.profile.max_new_tokens)


def validation_loss(ws: Workspace, model) -> float:
    """The references' token cross-entropy under the model on the validation subset: mean over the rows of each row's
    mean CE over its response tokens incl. EOS (nats; `difficulty.response_ce`, teacher-forced). Lower is better.

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        model: the causal LM to score.

    Returns:
        The mean CE in nats on `valid_max_examples` rows of the validation set.
    """
    enc, _ = eval_data(ws, "valid", ws.profile.valid_max_examples)
    _, ce = greedy_outputs_and_ce(model, enc, eos_id=ws.eos_id, pad_id=ws.pad_id, max_new_tokens=1)
    return float(np.mean(ce))


def selection_values(ws: Workspace, model) -> dict[str, float]:
    """What checkpoint selection measures at a check, by the profile's `select_metric`: {"rouge_l": greedy ROUGE-L}
    (`validation_score`) or {"loss": the references' CE} (`validation_loss`), on the validation subset.

    Args:
        ws: the prepared workspace.
        model: the causal LM to score.

    Returns:
        One value, named by the metric.
    """
    if ws.profile.select_metric == "loss":
        return {"loss": validation_loss(ws, model)}
    return {"rouge_l": validation_score(ws, model)}


def selection_score(p, values: dict[str, float]) -> float:
    """The selection score of a check's values under profile `p` (higher is better): ROUGE-L, or minus the loss.

    Args:
        p: the profile (its select_metric).
        values: `selection_values`' result.

    Returns:
        values["rouge_l"], or -values["loss"].
    """
    return -values["loss"] if p.select_metric == "loss" else values["rouge_l"]


def evaluate_model(ws: Workspace, model) -> dict[str, Any]:
    """The paper's protocol on the five eval sets: sampled responses (temperature 1), ROUGE-L, mean over seeds.

    Each set is scored on `eval_max_examples` rows (0 = all) with the profile's `eval_seeds`.

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        model: the causal LM to score.

    Returns:
        Eval set name -> `evaluate.evaluate_set`'s result ({"per_seed", "mean", "std", "n", "per_row", "index"}).
    """
    p = ws.profile
    out = {}
    for role in eval_sets(p):
        enc, refs = eval_data(ws, role, p.eval_max_examples)
        out[role] = evaluate_set(model, ws.tokenizer, enc, refs, seeds=p.eval_seeds, max_new_tokens=p.max_new_tokens)
    return out


def greedy_scores(ws: Workspace, model) -> dict[str, Any]:
    """Greedy ROUGE-L on `greedy_max_examples` rows of each eval set (0 = all).

    Deterministic, so smaller effects are separable than under sampling. Empty when the profile asks for none (-1).

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        model: the causal LM to score.

    Returns:
        Eval set name -> `evaluate.greedy_rouge_rows`' result ({"mean": mean ROUGE-L in [0, 100], "n", "per_row",
        "index"}); {} when greedy_max_examples is -1.
    """
    p, out = ws.profile, {}
    if p.greedy_max_examples < 0:
        return out
    for role in eval_sets(p):
        enc, refs = eval_data(ws, role, p.greedy_max_examples)
        out[role] = greedy_rouge_rows(model, ws.tokenizer, enc, refs, max_new_tokens=p.max_new_tokens)
    return out


def scores(ws: Workspace, model) -> dict[str, Any]:
    """A model's eval metrics: "eval" (the paper's sampled protocol) and "greedy" (see greedy_scores).

    Args:
        ws: the prepared workspace (profile, tokenizer, sets).
        model: the causal LM to score.

    Returns:
        {"eval": `evaluate_model`'s result, "greedy": `greedy_scores`' result}.
    """
    return {"eval": evaluate_model(ws, model), "greedy": greedy_scores(ws, model)}


REFERENCE_MODELS = {"Teacher": "load_teacher", "Student (init)": "load_student_init"}  # name -> Workspace loader


def reference_score(ws: Workspace, name: str) -> dict[str, Any]:
    """The registry record of one reference model's scores on the eval sets ('Teacher' or 'Student (init)'), cached.

    Computed once per prepared steps, evaluation settings and precision policy (`Workspace.cached`, kind "reference"),
    on the workspace's device (`Workspace.device`).

    Args:
        ws: the prepared workspace.
        name: a key of REFERENCE_MODELS: "Teacher" or "Student (init)".

    Returns:
        The registry record; its "metrics" are `scores`' result.

    Raises:
        KeyError: a name that is not a reference model.
    """
    load = getattr(ws, REFERENCE_MODELS[name])
    return ws.cached("reference", name, eval_key(ws.profile), lambda: scores(ws, load(ws.device).eval()))


def reference_scores(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The teacher's (Table 1's 'Teacher' row) and the untrained student's scores on the eval sets, cached.

    Args:
        ws: the prepared workspace.

    Returns:
        Reference model name -> its registry record (`reference_score`).
    """
    return {name: reference_score(ws, name) for name in REFERENCE_MODELS}
