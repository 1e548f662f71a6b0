"""What a result was computed on: device, precision policy and library versions.

The precision policy follows `models.policy_for`: bf16 autocast and the fused loss on CUDA, plain fp32
elsewhere. A bf16 run and an fp32 run of the same configuration give different numbers, so the policy is part of
every run key (`runner.run_key`) and every record carries `environment()`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..modeling.models import policy_for


def precision(device: torch.device | str, compile: bool = False) -> str:
    """The precision policy's tag a run's steps use on `device` (`models.policy_for(device, compile).tag`), as written
    into run keys.

    "fp32" on the CPU; on CUDA "bf16-autocast+fused" (bf16 autocast, the loss fused with the LM head, the teacher
    stored in bf16), with "+compiled" under the profile's `compile` (the step forward, or each block under
    `accelerate launch`). CPU keys are unchanged by the GPU path's tags.
    """
    return policy_for(device, compile).tag


def device_name(device: torch.device | str) -> str:
    """A readable device name: the GPU's model on CUDA, else the device type.

    Args:
        device: a torch.device or its name.

    Returns:
        The name, e.g. "NVIDIA H200" or "cpu".
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return dev.type


def environment(device: torch.device | str, grad_accum: int = 1, compile: bool = False) -> dict[str, Any]:
    """Device, precision policy and torch/transformers versions, as stored in run records and STEP.json files:
    {"device": type, "device_name", "precision", "torch", "transformers"}, plus "grad_accum" (the profile's
    micro-batches per step) when it is > 1.
    """
    import transformers
    dev = torch.device(device)
    return {"device": dev.type, "device_name": device_name(dev), "precision": precision(dev, compile),
            "torch": torch.__version__, "transformers": transformers.__version__,
            **({"grad_accum": grad_accum} if grad_accum > 1 else {})}


def describe(device: torch.device | str) -> str:
    """One phrase for set-up lines, e.g. 'device cpu (fp32, torch 2.5.1)'.

    Args:
        device: the device the run's steps run on (a torch.device or its name).

    Returns:
        "device <name> (<precision>, torch <version>, transformers <version>)".
    """
    env = environment(device)
    name = env["device_name"] if env["device_name"] != env["device"] else env["device"]
    return f"device {name} ({env['precision']}, torch {env['torch']}, transformers {env['transformers']})"
