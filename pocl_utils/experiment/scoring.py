"""How a model is scored: the paper's sampled protocol on the five eval sets, greedy ROUGE-L (validation subset for
checkpoint selection; eval sets as a deterministic second protocol), the validation loss, the evaluation's part of a
run key, and the cached scores of the teacher and the untrained student.

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
    """The evaluation's part of a run key: {"seeds", "max_examples", "new": max_new_tokens}, plus "greedy" unless
    greedy_max_examples is -1, so keys from before greedy scoring stay the same."""
    key = {"seeds": list(p.eval_seeds), "max_examples": p.eval_max_examples, "new": p.max_new_tokens}
    return key if p.greedy_max_examples < 0 else {**key, "greedy": p.greedy_max_examples}


def eval_data(ws: Workspace, role: str, max_examples: int) -> tuple[list, list[list[str]]]:
    """(encoded prompts, reference lists) of a set's seeded subset (`evaluate.subset`, seed 0; 0 = every example)."""
    enc = ws.encoded(role)
    enc = [enc[i] for i in subset(len(enc), max_examples)]
    return enc, [ws.sets[role][e.index]["references"] for e in enc]


def validation_score(ws: Workspace, model) -> float:
    """Mean greedy ROUGE-L in [0, 100] on `valid_max_examples` validation rows (checkpoint selection, A.2.2)."""
    enc, refs = eval_data(ws, "valid", ws.profile.valid_max_examples)
    return greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=ws.profile.max_new_tokens)


def validation_loss(ws: Workspace, model) -> float:
    """Mean over `valid_max_examples` validation rows of each row's teacher-forced mean CE (nats) over its reference
    response tokens incl. EOS (`difficulty.response_ce`). Lower is better."""
    enc, _ = eval_data(ws, "valid", ws.profile.valid_max_examples)
    _, ce = greedy_outputs_and_ce(model, enc, eos_id=ws.eos_id, pad_id=ws.pad_id, max_new_tokens=1)
    return float(np.mean(ce))


def selection_values(ws: Workspace, model) -> dict[str, float]:
    """What checkpoint selection measures by the profile's `select_metric`: {"rouge_l": `validation_score`} or
    {"loss": `validation_loss`}."""
    if ws.profile.select_metric == "loss":
        return {"loss": validation_loss(ws, model)}
    return {"rouge_l": validation_score(ws, model)}


def selection_score(p, values: dict[str, float]) -> float:
    """The selection score of a check's `selection_values` (higher is better): values["rouge_l"], or -values["loss"]."""
    return -values["loss"] if p.select_metric == "loss" else values["rouge_l"]


def evaluate_model(ws: Workspace, model) -> dict[str, Any]:
    """The paper's protocol: sampled responses (temperature 1), ROUGE-L, mean over the profile's `eval_seeds`, on
    `eval_max_examples` rows (0 = all) of each eval set. Set -> `evaluate.evaluate_set`'s result.
    """
    p = ws.profile
    out = {}
    for role in eval_sets(p):
        enc, refs = eval_data(ws, role, p.eval_max_examples)
        out[role] = evaluate_set(model, ws.tokenizer, enc, refs, seeds=p.eval_seeds, max_new_tokens=p.max_new_tokens)
    return out


def greedy_scores(ws: Workspace, model) -> dict[str, Any]:
    """Greedy ROUGE-L on `greedy_max_examples` rows of each eval set (0 = all; -1 = none, {}); deterministic, so
    smaller effects are separable than under sampling. Set -> `evaluate.greedy_rouge_rows`' result.
    """
    p, out = ws.profile, {}
    if p.greedy_max_examples < 0:
        return out
    for role in eval_sets(p):
        enc, refs = eval_data(ws, role, p.greedy_max_examples)
        out[role] = greedy_rouge_rows(model, ws.tokenizer, enc, refs, max_new_tokens=p.max_new_tokens)
    return out


def scores(ws: Workspace, model) -> dict[str, Any]:
    """{"eval": `evaluate_model`'s result (the paper's sampled protocol), "greedy": `greedy_scores`' result}."""
    return {"eval": evaluate_model(ws, model), "greedy": greedy_scores(ws, model)}


REFERENCE_MODELS = {"Teacher": "load_teacher", "Student (init)": "load_student_init"}  # name -> Workspace loader


def reference_score(ws: Workspace, name: str) -> dict[str, Any]:
    """The registry record of one reference model's scores ("metrics": `scores`' result), cached per prepared steps,
    evaluation settings and precision policy (`Workspace.cached`, kind "reference"), computed on `Workspace.device`.

    Raises KeyError: a name that is not a key of REFERENCE_MODELS ("Teacher" or "Student (init)").
    """
    load = getattr(ws, REFERENCE_MODELS[name])
    return ws.cached("reference", name, eval_key(ws.profile), lambda: scores(ws, load(ws.device).eval()))


def reference_scores(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Reference model name -> its cached registry record (`reference_score`): Table 1's 'Teacher' and the untrained
    student."""
    return {name: reference_score(ws, name) for name in REFERENCE_MODELS}
