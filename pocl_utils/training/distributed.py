"""Process topology for data-parallel training under `accelerate launch`, in one place.

`accelerate.PartialState` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, opens the process group (NCCL on GPUs,
gloo on CPU) and pins each process to its GPU. `loop.run_steps` calls `prepare_model`, then:

- every rank draws the same global batch and trains on `shard(indices)`, its slice;
- its loss is its shard's summed token loss divided by the GLOBAL response-token count (`all_sum`), so the ranks'
  losses add up to the 1-process token mean;
- under DDP the gradient hook sums the buckets (DDP would average), so every rank holds the 1-process gradient.

Under an FSDP launch (e.g. configs/accelerate/fsdp.yaml) `prepare_model` shards with FSDP2 (`shard_model`, one unit
per transformer block plus the root); the step still equals the 1-process step. Every rank must then call the model
the same number of times (evaluation and GKD's sampling run on every rank). Checkpoints are gathered whole
(`full_state_dict`) into ordinary safetensors files. Preparation steps run on the main rank first, alone
(`main_first`).

With one process nothing is initialised, accelerate is not imported, and every function returns the 1-process
answer at once.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from functools import lru_cache, partial
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

if TYPE_CHECKING:
    from accelerate.utils import FullyShardedDataParallelPlugin

from ..modeling import models
from ..modeling.heads import FUSED_AT, HIDDEN_AT, LOGITS_AT, fused_inputs, hidden_at_positions, logits_at_positions

# Main-rank-only phases (preparing the workspace, evaluating a run) can take hours on the paper profile while the other
# ranks wait at a barrier; a dead rank does not leave the others hanging that long, since torchrun then stops them all.
TIMEOUT = timedelta(hours=24)
_ENV_WORLD = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, then MPI launchers
# True inside `main_first`'s block: this process runs as a 1-process program (no collectives). A context variable,
# not a module flag: its value belongs to the block that set it, is restored when the block exits (also on an
# error), and is per thread.
_ALONE: ContextVar[bool] = ContextVar("pocl_alone", default=False)


def launched() -> bool:
    """True when started as one of several processes (`accelerate launch` with num_processes > 1)."""
    return max(int(os.environ.get(k, "1")) for k in _ENV_WORLD) > 1


@lru_cache(maxsize=None)
def _state():
    """The process group, opened on first use (only when launched)."""
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)
    if state.num_processes <= 1:
        raise RuntimeError(f"pocl_utils.training.distributed: the environment says {os.environ.get('WORLD_SIZE')} "
                           f"processes but accelerate found none (distributed_type {state.distributed_type}); launch "
                           f"with `accelerate launch --config_file configs/accelerate/<config>.yaml`")
    return state


def world_size() -> int:
    """Processes training together (1 when not launched, or inside `main_first`)."""
    return 1 if _ALONE.get() or not launched() else _state().num_processes


def rank() -> int:
    """This process's index among the launched processes (0 when not launched)."""
    return _state().process_index if launched() else 0


def is_main() -> bool:
    """The process that writes files (registry, checkpoints, results) and logs."""
    return rank() == 0


def device(prefer: str = "auto") -> torch.device:
    """This process's device: its own GPU when launched on GPUs, else `models.pick_device(prefer)`.

    `prefer`: a profile's `device` setting ("auto", "cpu", "cuda", "cuda:1", "mps").
    Raises ConfigError: (key "device") not launched: as `models.pick_device`; launched: `prefer` is neither "auto" nor
    the type of the device the launch gave this process (the launch config chooses the devices).
    """
    if not launched():
        return models.pick_device(prefer)
    dev = _state().device
    dev = torch.device("cpu") if dev.type == "cpu" else dev  # accelerate says cpu:0; the rest of pocl says cpu
    if prefer not in ("auto", dev.type):
        raise models.ConfigError(f"device {prefer!r}: under accelerate launch each process runs on the device the "
                                 f"launch gives it ({dev}); set device to 'auto' or {dev.type!r}", key="device")
    return dev


_MICRO: ContextVar[tuple[int, int]] = ContextVar("pocl_micro_batch", default=(0, 1))  # (j, k): `micro_batch`


def _slice(items: list, part: int, parts: int) -> list:
    """The part-th of `parts` contiguous slices of `items`, sizes differing by at most one (earlier ones larger)."""
    size, extra = divmod(len(items), parts)
    start = part * size + min(part, extra)
    return items[start:start + size + (part < extra)]


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's contiguous slice of a global batch, which is the same on every rank (all of it with one process);
    inside `micro_batch(j, k)`, the j-th of k slices of it. Sizes differ by at most one (earlier ranks get the extra
    example); a batch smaller than the world (times k) leaves some slices empty.
    """
    mine = list(indices) if world_size() == 1 else _slice(list(indices), rank(), world_size())
    j, k = _MICRO.get()
    return mine if k == 1 else _slice(mine, j, k)


@contextmanager
def micro_batch(j: int, k: int) -> Iterator[None]:
    """Within the block `shard` gives the j-th (0 <= j < k) of k micro-batches of this rank's slice (gradient
    accumulation), so the loop and the losses that re-slice a batch (GKD's samples) pick the same rows."""
    token = _MICRO.set((j, k))
    try:
        yield
    finally:
        _MICRO.reset(token)


@contextmanager
def no_sync(model: torch.nn.Module, skip: bool = True) -> Iterator[None]:
    """With `skip`, the backwards inside the block keep their gradients local, not summed over the ranks (gradient
    accumulation's micro-batches before the last); accelerate's `Accelerator.no_sync` for pocl's DDP routing and FSDP2
    models (after `prepare_model`). One process, or `skip` False: nothing changes.
    """
    step_forward = getattr(model, FUSED_AT, None)  # data parallel: a partial of the DDP wrapper
    if not skip or world_size() == 1:
        yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif step_forward is not None:
        with step_forward.func.no_sync():
            yield
    else:
        yield


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (float64, so token counts stay exact); a collective: every
    rank passes as many values.

    Returns the sums, as floats (the values themselves with one process).
    """
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device())  # [K]
    torch.distributed.all_reduce(t)
    return t.tolist()


class _StepForward(torch.nn.Module):
    """The trained model's step forwards (`heads`' functions) as one module's forward, which DDP can wrap."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor):
        fn = {LOGITS_AT: logits_at_positions, HIDDEN_AT: hidden_at_positions, FUSED_AT: fused_inputs}[name]
        return fn(self.model, input_ids, attention_mask, keep)


def _sum_hook(state, bucket):
    """DDP communication hook: the gradient buckets summed over the ranks, not averaged (each rank's loss is already
    its token-weighted share of the global mean, `loop._shard_loss`)."""
    fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


@lru_cache(maxsize=None)
def _accelerator():
    from accelerate import Accelerator
    _state()  # the process group, opened once
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")  # pocl's own autocast (models)


def prepare_model(model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
    """Ready `model` for training on the launched processes, in place; returns it.

    FSDP2-sharded under an FSDP launch (`shard_model`), else wrapped by accelerate's `prepare` in DDP (gradients summed
    during the backward), its step forwards (`heads`) routed through the wrapper. With `compile`, each transformer block
    is first compiled in place (`compile_blocks`). One process: unchanged.
    """
    if world_size() == 1 or is_prepared(model):
        return model
    if compile:
        compile_blocks(model)
    if fsdp():
        return shard_model(model)
    ddp = _accelerator().prepare_model(_StepForward(model))
    ddp.register_comm_hook(None, _sum_hook)
    for name in (LOGITS_AT, HIDDEN_AT, FUSED_AT):
        setattr(model, name, partial(ddp, name))  # a function attribute: not a submodule, no reference cycle
    return model


def compile_blocks(model: torch.nn.Module) -> list[str]:
    """Compile each transformer block of `model` in place (`nn.Module.compile`, dynamic shapes): the compiled unit a
    data-parallel or sharded step can use. DDP's gradient hooks and FSDP2's gathers stay outside the compiled code, at
    the block boundaries, and the state dict keeps its names.

    Returns the qualified names of the compiled blocks.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [(name, m) for name, m in model.named_modules() if type(m).__name__ in names]
    for _, block in blocks:
        block.compile(dynamic=True)
    return [name for name, _ in blocks]


def is_prepared(model: torch.nn.Module) -> bool:
    """Whether `prepare_model` has taken `model` over (sharded, or its gradients summed by DDP).

    Returns True when sharded or routed through DDP.
    """
    return is_sharded(model) or getattr(model, FUSED_AT, None) is not None


def fsdp() -> bool:
    """True when launched on several processes with an FSDP config: trained models are sharded (`shard_model`)."""
    return world_size() > 1 and fsdp_plugin() is not None


def fsdp_plugin() -> FullyShardedDataParallelPlugin | None:
    """accelerate's `FullyShardedDataParallelPlugin` of this launch (from the ACCELERATE_USE_FSDP / FSDP_* variables
    `accelerate launch` exports); None when not an FSDP launch. pocl shards with FSDP2 only.

    Raises ValueError: an FSDP1 config (fsdp_version 1).
    """
    from accelerate.utils import FullyShardedDataParallelPlugin, parse_flag_from_env
    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return None
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(f"pocl_utils.training.distributed: the accelerate config asks for FSDP version "
                         f"{plugin.fsdp_version}; pocl shards with FSDP2: set fsdp_config.fsdp_version: 2 (as "
                         f"configs/accelerate/fsdp.yaml)")
    return plugin


@lru_cache(maxsize=None)
def _mesh():
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device().type, (world_size(),))


def block_classes(model: torch.nn.Module, plugin: FullyShardedDataParallelPlugin | None = None) -> set[str]:
    """Class names of the model's FSDP units: the plugin's transformer_cls_names_to_wrap (None = read from the
    environment) and the model's own `_no_split_modules` (GPT2Block, LlamaDecoderLayer, ...), so one config serves
    every profile's model.
    """
    if plugin is None:
        from accelerate.utils import FullyShardedDataParallelPlugin
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    names = set(plugin.transformer_cls_names_to_wrap or ())
    return names | set(getattr(model, "_no_split_modules", None) or ())


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Under an FSDP launch, shard `model` in place over the ranks with FSDP2, as accelerate's plugin (`fsdp_plugin`)
    sets it: each transformer block a unit, then the root (embeddings, tied LM head); gradients summed, not averaged.
    Otherwise, or if already sharded, unchanged. Returns the same model.
    """
    if not fsdp() or is_sharded(model):
        return model
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
    plugin = fsdp_plugin()
    kwargs = {"mesh": _mesh(), "reshard_after_forward": plugin.reshard_after_forward,
              "offload_policy": plugin.cpu_offload}
    names = block_classes(model, plugin)
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    # `logits_at_positions` calls the inner model and the LM head directly, past the root's forward hooks that gather
    # the root's parameters (embeddings, head); bound to the model and registered, it runs inside those hooks
    for name, method in ((LOGITS_AT, logits_at_positions), (HIDDEN_AT, hidden_at_positions)):
        setattr(model, name, MethodType(method, model))
        register_fsdp_forward_method(model, name)
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)  # `loop._shard_loss` already weighs each rank's share
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is sharded with FSDP2 (an `FSDPModule`).

    Returns True for an FSDP2-sharded model; False where torch.distributed is unavailable.
    """
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameter and buffer name -> whole tensor, sharded model or not.

    A sharded model is gathered by torch's distributed-checkpoint `get_model_state_dict` (full_state_dict) on every
    rank (each keeps its own checkpoint to resume from; a collective: every rank must call it). Tied names
    (embeddings and LM head) share one tensor, as in `model.state_dict()`.
    """
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    first: dict[int, torch.Tensor] = {}
    owner = _owners(model)
    return {name: first.setdefault(owner.get(name, id(t)), t) for name, t in state.items()}


def _owners(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> the id of the parameter object: tied names share one (a shard's data pointer cannot tell, as
    an empty shard has none)."""
    return {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into a sharded model, each rank keeping its own shard of each.

    torch's distributed-checkpoint `set_model_state_dict`, the counterpart of `full_state_dict`. Names missing from
    `state` must be tied to one present (safetensors stores a tied tensor once).

    `state`: name -> whole tensor.
    Raises KeyError: listing unexpected tensors, or missing tensors not tied to a present one.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    current = set(model.state_dict())
    unexpected = sorted(set(state) - current)
    if unexpected:
        raise KeyError(f"load_full_state_dict: unexpected tensors {unexpected}")
    owner = _owners(model)
    present = {owner[m] for m in state if m in owner}
    missing = {n for n in current - set(state) if owner.get(n) not in present}
    if missing:
        raise KeyError(f"load_full_state_dict: missing tensors {sorted(missing)}")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def save_checkpoint(model: torch.nn.Module, out_dir: Path) -> None:
    """`models.save_checkpoint` on the launched processes; only the main rank writes. A sharded model is gathered whole
    first (a collective: every rank must call)."""
    state = full_state_dict(model) if is_sharded(model) else None
    if world_size() > 1 and not is_main():
        return  # a step trained together (`pipeline.trained_together`): the main process writes it
    models.save_checkpoint(model, out_dir, state_dict=state)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """`models.save_weights` of a model that may be sharded (gathered whole first: a collective, every rank must call);
    every rank writes its own file, replaced if it exists."""
    models.save_weights(model, path, state_dict=full_state_dict(model) if is_sharded(model) else None)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """`models.load_weights` into a model that may be sharded: each rank then keeps its shard of every tensor.

    `path`: a file written by `save_weights`.
    Raises CheckpointError: the file is unreadable.
    Raises KeyError: (sharded model) unexpected or missing tensors.
    """
    if is_sharded(model):
        load_full_state_dict(model, models.read_weights(path))
    else:
        models.load_weights(model, path)


def barrier() -> None:
    """Wait until every rank gets here (nothing with one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def broadcast(obj: Any) -> Any:
    """The main rank's `obj` on every rank; a collective.

    `obj`: any picklable value; the other ranks' arguments are ignored.
    Returns the main rank's obj (obj itself with one process).
    """
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def alone() -> Iterator[None]:
    """Run the block as a 1-process program on this process: `world_size()` is 1 inside, so nothing in it makes a
    collective call (no other rank is there to answer)."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main rank first, as a 1-process program (`alone`), then on the others (accelerate's
    `main_process_first`: barriers before the others' turn and after the main rank's).

    For steps cached on disk (`pipeline.prepare`): the main rank builds them alone while the others wait at a
    barrier; the others then run the same block and find everything built. Without a launch it just runs the block."""
    if world_size() == 1:
        yield
        return
    with _state().main_process_first(), alone():
        yield


def close() -> None:
    """Wait for every rank, then close the process group (at the end of a launched program)."""
    if world_size() > 1:
        barrier()
        torch.distributed.destroy_process_group()
