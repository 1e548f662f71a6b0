"""How a model is scored: the paper's protocol on the five eval sets (sampled responses, ROUGE-L, mean over seeds),
greedy ROUGE-L (on the validation subset for checkpoint selection, and on the eval sets as a deterministic second
protocol), the evaluation's part of a run key, and the cached scores of the reference models (the teacher and the
untrained student).

May import the method's modules, `modeling` and `experiment.workspace`; nothing of `training`, `analysis` or
`notebook`.
"""
from __future__ import annotations

from typing import Any

from ..data import EVAL_SETS
from ..evaluate import evaluate_set, greedy_rouge, subset
from ..modeling.models import pick_device
from .workspace import Workspace


def eval_key(p) -> dict[str, Any]:
    key = {"seeds": list(p.eval_seeds), "max_examples": p.eval_max_examples, "new": p.max_new_tokens}
    return key if p.greedy_max_examples < 0 else {**key, "greedy": p.greedy_max_examples}


def eval_data(ws: Workspace, role: str, max_examples: int) -> tuple[list, list[list[str]]]:
    """A set's encoded prompts and reference lists, on the profile's seeded subset."""
    enc = ws.encoded(role)
    enc = [enc[i] for i in subset(len(enc), max_examples)]
    return enc, [ws.sets[role][e.index]["references"] for e in enc]


def validation_score(ws: Workspace, model) -> float:
    """Greedy ROUGE-L on the validation subset (checkpoint selection, A.2.2)."""
    enc, refs = eval_data(ws, "valid", ws.profile.valid_max_examples)
    return greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=ws.profile.max_new_tokens)


def evaluate_model(ws: Workspace, model) -> dict[str, Any]:
    """The paper's protocol on the five eval sets: sampled responses (temperature 1), ROUGE-L, mean over seeds."""
    p = ws.profile
    out = {}
    for role in EVAL_SETS:
        enc, refs = eval_data(ws, role, p.eval_max_examples)
        out[role] = evaluate_set(model, ws.tokenizer, enc, refs, seeds=p.eval_seeds, max_new_tokens=p.max_new_tokens)
    return out


def greedy_scores(ws: Workspace, model) -> dict[str, Any]:
    """Greedy ROUGE-L on `greedy_max_examples` rows of each eval set (0 = all): deterministic, so smaller effects are
    separable than under sampling. Empty when the profile asks for none (-1)."""
    p, out = ws.profile, {}
    if p.greedy_max_examples < 0:
        return out
    for role in EVAL_SETS:
        enc, refs = eval_data(ws, role, p.greedy_max_examples)
        out[role] = {"mean": greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=p.max_new_tokens),
                     "n": len(enc)}
    return out


def scores(ws: Workspace, model) -> dict[str, Any]:
    """A model's eval metrics: "eval" (the paper's sampled protocol) and "greedy" (see greedy_scores)."""
    return {"eval": evaluate_model(ws, model), "greedy": greedy_scores(ws, model)}


REFERENCE_MODELS = {"Teacher": "load_teacher", "Student (init)": "load_student_init"}  # name -> Workspace loader


def reference_score(ws: Workspace, name: str) -> dict[str, Any]:
    """The registry record of one reference model's scores on the eval sets ('Teacher' or 'Student (init)'), cached."""
    load = getattr(ws, REFERENCE_MODELS[name])
    return ws.cached("reference", name, eval_key(ws.profile), lambda: scores(ws, load(pick_device()).eval()))


def reference_scores(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The teacher's (Table 1's 'Teacher' row) and the untrained student's scores on the eval sets, cached."""
    return {name: reference_score(ws, name) for name in REFERENCE_MODELS}
