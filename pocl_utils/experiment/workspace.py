"""A profile's prepared artefacts on disk: steps cached under their keys, the Workspace that loads them, and the
steps that world and real workspaces share (difficulty ranking, teacher cache, SeqKD responses).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..data import EVAL_SETS, DataError, Encoded, close_response, encode_examples, load_instructions
from ..training import distributed
from .config import PREPARE_THREADS, Profile, cache_top_k, config_hash, eval_sets
from ..difficulty import Ranking, score_samples
from ..modeling.generate import generate
from ..modeling.models import load_checkpoint, load_tokenizer
from .provenance import environment, precision
from .results import REPO_ROOT, Registry, atomic_write_json, exclusive_lock
from ..training.teacher_cache import TeacherCache, build_teacher_cache

RUNS_ROOT = Path(os.environ.get("POCL_RUNS_DIR", REPO_ROOT / "runs"))


class StepError(RuntimeError):
    """A prepared step's STEP.json cannot be read; the message names the file and the folder to delete."""

    def __init__(self, path: Path, problem: str):
        self.problem = problem
        super().__init__(f"{path}: {problem}; delete the folder {path.parent} and re-run, which rebuilds that step")


def step_dir(root: Path, name: str, key: str, build: Callable[[Path], None], *,
             record: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> Path:
    """Run `build(tmp_dir)` unless `root/name` already holds the complete output for `key`; the result appears
    atomically. Returns `root/name`.

    STEP.json holds `record` (e.g. the device) and every file the step wrote with its size and sha256 (`manifest`).
    A step whose files no longer match it, whose STEP.json is unreadable, or built for another key is rebuilt, with a
    line saying so. Concurrent processes build a step once: the builder holds an exclusive lock on `root/.name.lock`
    (released by the kernel if it is killed), the others wait. A failed build leaves nothing behind.
    """
    out = root / name
    if _intact(out, key):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f".{name}.lock"):
        problem = _step_problem(out, key)
        if problem is None:  # built by another process while this one waited
            return out
        if problem != "missing" and not problem.startswith("built for another"):
            log(f"[prepare] {out}: {problem}; rebuilding the step")
        for stale in root.glob(f".{name}.*.tmp"):  # left by a killed builder; we hold the lock, so none is live
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{name}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True)
        try:
            t0 = time.time()
            build(tmp)
            atomic_write_json(tmp / "STEP.json", {"key": key, "wall_s": round(time.time() - t0, 3), **(record or {}),
                                                  "files": manifest(tmp)})
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op after the rename; removes a failed build's partial output
    return out


HASH_LIMIT = 256 * 2**20  # files up to this size are checked by sha256 at every set-up; bigger ones by size only


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {size, sha256} of every file under `folder` (STEP.json excluded).

    Returns POSIX relative path -> {"size": bytes, "sha256": hex digest}, sorted by path.
    """
    return {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "STEP.json"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _intact(out: Path, key: str) -> bool:
    try:
        return _step_problem(out, key) is None
    except OSError:
        return False


def _step_problem(out: Path, key: str) -> str | None:
    """None if `out` holds the finished step `key` with every file as its STEP.json recorded; else what is wrong.
    Steps finished before STEP.json listed its files are trusted as they are."""
    try:
        info = step_info(out)
    except StepError as e:
        return e.problem
    if info is None:
        return "missing"
    if info.get("key") != key:
        return "built for another configuration"
    for rel, want in (info.get("files") or {}).items():
        f = out / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} when the step finished"
        if size <= HASH_LIMIT and _sha256(f) != want["sha256"]:
            return f"{rel} changed since the step finished (sha256 differs)"
    return None


def step_info(out: Path) -> dict[str, Any] | None:
    """A finished step's STEP.json (None if the step is not there); StepError naming the file if it is unreadable.

    Returns STEP.json's object (key, wall_s, the build record and files), or None when the folder has no STEP.json.
    Raises StepError: STEP.json is not valid JSON, not UTF-8, or not a JSON object.
    """
    path = out / "STEP.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StepError(path, f"unreadable STEP.json ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict):
        raise StepError(path, "unreadable STEP.json (not a JSON object)")
    return info


def _step_key(out: Path) -> str | None:
    info = step_info(out)
    return None if info is None else info.get("key")


@dataclass
class Workspace:
    """The prepared artefacts of one profile, loaded lazily from disk (cheap to re-create in worker processes)."""

    profile: Profile
    root: Path

    @property
    def registry(self) -> Registry:
        return Registry(self.root / "registry")

    @property
    def device(self) -> torch.device:
        """The device this process runs the profile's models on: its `device` setting (`distributed.device`).

        Raises ConfigError: (key "device") a device this machine lacks, with the ones it has.
        """
        return distributed.device(self.profile.device)

    def cached(self, kind: str, name: str, params: dict[str, Any],
               compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """compute()'s metrics, stored once in the registry (`kind`) under a key hashing (name, `params`, the prepared
        steps' keys, this device's precision policy); a later call with the same key loads the stored record.

        Returns the registry record (config, "metrics", timing and provenance), as read back from disk.
        """
        dev = self.device
        key = config_hash({"name": name, "params": params, "prep": self.step_keys(),
                           "precision": precision(dev, self.profile.compile)})
        reg = self.registry
        if not reg.done(kind, key):
            t0 = time.time()
            config = {"name": name, **params, **environment(dev, **self.profile.engine())}
            reg.save(kind, key, config, compute(), time.time() - t0)
        return reg.load(kind, key)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.root / "tokenizer")

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @cached_property
    def sets(self) -> dict[str, list[dict]]:
        """Role -> rows: train, valid and the eval sets (`roles`)."""
        return {role: load_instructions(self.root / "data" / f"{role}.jsonl") for role in roles(self.profile)}

    def encoded(self, role: str) -> list:
        """The tokenized examples of `role` ("train", "valid" or an eval set), encoded once per Workspace
        (`data.encode_examples`), `index` = the row's position in `sets[role]`. Prompts longer than max_prompt_len are
        dropped; responses are cut to fit max_len.

        Raises DataError: every prompt of a non-empty set is longer than max_prompt_len.
        """
        return self._encoded[role]

    @cached_property
    def _encoded(self) -> dict[str, list]:
        p, out = self.profile, {}
        for role, rows in self.sets.items():
            out[role] = encode_examples(rows, self.tokenizer, max_prompt_len=p.max_prompt_len, max_len=p.max_len)[0]
            if rows and not out[role]:  # an empty set would fail later with an unrelated error
                raise DataError(f"all {len(rows)} prompts are longer than max_prompt_len = {p.max_prompt_len} tokens; "
                                  f"raise the profile's max_prompt_len", path=self.root / "data" / f"{role}.jsonl",
                                  field="prompt")
        return out

    @cached_property
    def ranking(self):
        return Ranking.from_csv(self.root / "ranking" / "ranking.csv")

    @cached_property
    def teacher_cache(self):
        """The cached teacher outputs of the train set; None when the profile runs the teacher live."""
        if cache_top_k(self.profile) is None:
            return None
        return TeacherCache.load(self.root / "teacher_cache" / "cache.safetensors")

    @cached_property
    def seqkd_encoded(self) -> list:
        rows = json.loads((self.root / "seqkd" / "responses.json").read_text())
        return [replace(e, response_ids=r) for e, r in zip(self.encoded("train"), rows)]

    def step_keys(self) -> dict[str, str | None]:
        """The cache key each prepared step was built with (its STEP.json; None if missing). Runs are keyed on these, so
        a result always names the artefacts it was trained from, for world and real profiles alike."""
        return {name: _step_key(self.root / name) for name in STEPS}

    def built_with(self) -> dict[str, str | None]:
        """The precision policy each prepared step was built with (STEP.json; None for a step built before it was
        recorded), e.g. {"teacher": "bf16-autocast", ...}."""
        return {name: (step_info(self.root / name) or {}).get("precision") for name in STEPS}

    def load_teacher(self, device: torch.device):
        """The prepared teacher (the "teacher" step's checkpoint), in eval mode.

        Raises CheckpointError: a truncated or corrupt weights file; FileNotFoundError: the step is not built.
        """
        return load_checkpoint(self.root / "teacher" / "model", device).eval()

    def load_student_init(self, device: torch.device):
        """A fresh copy of the student's initial weights (the "student_init" step's checkpoint).

        Raises CheckpointError: a truncated or corrupt weights file; FileNotFoundError: the step is not built.
        """
        return load_checkpoint(self.root / "student_init" / "model", device)


ROLES = ("train", "valid") + EVAL_SETS  # the roles of world and real workspaces


def roles(p: Profile) -> tuple[str, ...]:
    """The sets of a profile's workspace: train, valid and the eval sets (`config.eval_sets`), each once."""
    return tuple(dict.fromkeys(("train", "valid") + eval_sets(p)))
STEPS = ("data", "tokenizer", "teacher", "student_init", "ranking", "teacher_cache", "seqkd")  # in build order


def workspace_root(profile: Profile, runs_root: Path | None = None) -> Path:
    """The folder of a profile's workspace.

    `runs_root`: the folder holding one workspace per profile; None = RUNS_ROOT ($POCL_RUNS_DIR, default runs/).
    Returns `runs_root / profile.name`.
    """
    return Path(runs_root or RUNS_ROOT) / profile.name


def build_steps(ws: Workspace, builders: dict[str, Callable], keys: dict[str, str], dev, *,
                log: Callable[[str], None] = print, tag: str = "prepare") -> None:
    """Build (or find) each named step in order with `builder(ws, tmp_dir, dev)`, cached under `keys[name]`.

    Under `accelerate launch` the main process builds each step alone while the others wait (`main_first`), except
    the teacher SFT (`trained_together`), which every process trains together. Steps build with the profile's
    `prepare_threads` torch threads (`cpu_threads`); each step's STEP.json records `environment(dev, ...)` and that
    thread count.
    """
    with cpu_threads(ws.profile.prepare_threads):
        record = {**environment(dev, **ws.profile.engine()), "cpu_threads": torch.get_num_threads()}
        _build_each(ws, builders, keys, dev, record, log, tag)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch CPU threads, then restore the caller's count; n = 0 leaves the count as it is.

    A CPU matmul splits its sums across threads, so the thread count changes float rounding: the same step trained with
    one thread and with two gives weights that differ after a few hundred steps. Pinning it makes a prepared workspace
    the same on every machine, whatever its cores.
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_each(ws: Workspace, builders: dict[str, Callable], keys: dict[str, str], dev, record: dict[str, Any],
                log: Callable[[str], None], tag: str) -> None:
    for name, build in builders.items():
        t0 = time.time()
        b = partial(build, ws)
        if distributed.world_size() > 1 and trained_together(ws.profile, name):
            _build_together(ws.root, name, keys[name], lambda tmp: b(tmp, dev), record=record, log=log)
        else:
            with distributed.main_first():
                step_dir(ws.root, name, keys[name], lambda tmp: b(tmp, dev), record=record, log=log)
        log(f"[{tag}] {name:13s} ready ({time.time() - t0:.1f}s)")


def trained_together(p: Profile, name: str) -> bool:
    """Whether all launched processes build step `name` together: the "teacher" step of a profile that trains its
    teacher (world profiles, and real ones with `sft_teacher`; OPT-2.7B's SFT is what needs FSDP's sharding)."""
    return name == "teacher" and (p.data == "world" or p.sft_teacher)


def _build_together(root: Path, name: str, key: str, build: Callable[[Path], None], *,
                    record: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> None:
    """`step_dir` on the main process; the others run `build` in lockstep with it in a private folder, deleted after.
    The main process says whether it builds (it may find the step built, by an earlier or a concurrent launch)."""
    if distributed.is_main():
        told = []

        def build_main(tmp: Path) -> None:
            told.append(distributed.broadcast(True))
            build(tmp)

        step_dir(root, name, key, build_main, record=record, log=log)
        if not told:
            distributed.broadcast(False)
    elif distributed.broadcast(None):
        tmp = root / f".{name}.rank{distributed.rank()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()


def cache_mode(p: Profile) -> dict[str, str]:
    """The teacher cache's mode for its step key; "exact", the default, adds nothing to the key.

    Returns {} for "exact", else {"mode": p.teacher_cache}.
    """
    return {} if p.teacher_cache == "exact" else {"mode": p.teacher_cache}


def threads_key(p: Profile) -> dict[str, int]:
    """The preparation's thread count for the keys of the steps that train or run a model: {} at the default
    (PREPARE_THREADS, the count every committed workspace was built with) or 0 (unpinned), else {"threads": n}, so a
    workspace prepared with another count is never found for this one."""
    return {} if p.prepare_threads in (0, PREPARE_THREADS) else {"threads": p.prepare_threads}


def prep_keys(p: Profile) -> dict[str, str]:
    """Each step's cache key for a world profile: the profile fields it reads plus the key of the steps before it.

    Returns step name (STEPS) -> key.
    """
    data = config_hash({"data": p.data, "world": p.world, "seed": p.seed})
    tok = config_hash({"up": data, "vocab": p.vocab_size})
    enc = {"max_len": p.max_len, "max_prompt_len": p.max_prompt_len}
    teacher = config_hash({"up": tok, "spec": p.teacher, "train": p.teacher_sft, **enc, **threads_key(p),
                           **({"pretrain": p.teacher_pretrain_steps} if p.teacher_pretrain_steps else {}),
                           **({"mix": p.teacher_sft_mix} if p.teacher_sft_mix else {})})
    student = config_hash({"up": tok, "spec": p.student, "steps": p.student_pretrain_steps, **enc, **threads_key(p)})
    ranking = config_hash({"up": student, "new": p.max_new_tokens, "n": p.rank_max_examples})
    cache = config_hash({"up": teacher, **enc, **cache_mode(p)})
    seqkd = config_hash({"up": teacher, "new": p.max_new_tokens, **enc, "eos": "when stopped"})
    return {"data": data, "tokenizer": tok, "teacher": teacher, "student_init": student, "ranking": ranking,
            "teacher_cache": cache, "seqkd": seqkd}



# ---- the steps world and real workspaces share -------------------------------------------------------------------


def lm_blocks(texts: list[str], tokenizer, block: int) -> list:
    """Plain-LM training data as Encoded pairs (`index` = position): the first token is the 'prompt', every later
    token a target. The texts, tokenized without special tokens and each followed by EOS, are concatenated and cut into
    consecutive blocks of `block` tokens while more than `block` remain (the rest is dropped).
    """
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    starts = range(0, len(ids) - block, block)
    return [Encoded(ids[s:s + 1], ids[s + 1:s + block], index=k) for k, s in enumerate(starts)]


# A step builder is called as builder(ws, out, dev): it writes its artefacts into the folder `out`.


def ranking_step(ws: Workspace, out: Path, dev) -> None:
    """ranking.csv: the training samples scored by the initial student (`difficulty.score_samples`).

    The references are each training row's "output"; generation is greedy, up to the profile's max_new_tokens.
    """
    student = ws.load_student_init(dev).eval()
    enc = ws.encoded("train")
    refs = [[ws.sets["train"][e.index]["output"]] for e in enc]
    ranking = score_samples(student, ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens, references=refs)
    ranking.to_csv(out / "ranking.csv")


def teacher_cache_step(ws: Workspace, out: Path, dev) -> None:
    """The profile's teacher cache (`Profile.teacher_cache`): exact logits or top-k; nothing for "live".

    Writes cache.safetensors, the teacher's outputs on the encoded training set.
    """
    top_k = cache_top_k(ws.profile)
    if top_k is not None:
        cache = build_teacher_cache(ws.load_teacher(dev), ws.encoded("train"), ws.pad_id, top_k=top_k)
        cache.save(out / "cache.safetensors")


def seqkd_step(ws: Workspace, out: Path, dev) -> None:
    """SeqKD data: the teacher's greedy responses to the training prompts (teacher-generated outputs).

    Writes responses.json: one list of token ids per training example, up to max_new_tokens, closed with EOS only when
    the teacher stopped by itself (`data.close_response`).
    """
    enc = ws.encoded("train")
    outs = generate(ws.load_teacher(dev), [e.prompt_ids for e in enc], eos_id=ws.eos_id, pad_id=ws.pad_id,
                    max_new_tokens=ws.profile.max_new_tokens)
    atomic_write_json(out / "responses.json", [close_response(o, ws.profile.max_new_tokens, ws.eos_id) for o in outs])


def thin_log(log: list[dict[str, float]], points: int = 200) -> list[dict[str, float]]:
    """Every k-th row of a per-step loss log plus the last, k = max(1, len(log) // points) (so about `points` to
    2 `points` rows), each with "step" (its index in `log`) added first."""
    k = max(1, len(log) // points)
    return [{"step": i, **row} for i, row in enumerate(log) if i % k == 0 or i == len(log) - 1]
