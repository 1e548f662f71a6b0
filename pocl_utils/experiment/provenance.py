"""What a result was computed on: device, precision policy (`models.policy_for`) and library versions. A bf16 and an
fp32 run of one configuration differ, so the policy is part of every run key and every record carries `environment()`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..modeling.models import policy_for


def precision(device: torch.device | str, compile: bool = False) -> str:
    """The precision policy's tag for `device` (`models.policy_for(device, compile).tag`), as written into run keys:
    "fp32" on the CPU; on CUDA "bf16-autocast+fused", with "+compiled" under the profile's `compile`.
    """
    return policy_for(device, compile).tag


def device_name(device: torch.device | str) -> str:
    """A readable device name: the GPU's model on CUDA (e.g. "NVIDIA H200"), else the device type."""
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
    """One phrase for set-up lines: "device <name> (<precision>, torch <version>, transformers <version>)"."""
    env = environment(device)
    name = env["device_name"] if env["device_name"] != env["device"] else env["device"]
    return f"device {name} ({env['precision']}, torch {env['torch']}, transformers {env['transformers']})"
