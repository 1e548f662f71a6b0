"""The LM head at chosen positions only: a step needs the logits (or the hidden states) of the N response-predicting
positions, not of all B * T. Imported by `models` and `distributed` (which registers these on a sharded model), and by
nothing else of pocl's: it imports only torch."""
from __future__ import annotations

import torch

LOGITS_AT = "pocl_logits_at"  # the name `distributed.prepare_model` gives `logits_at_positions` on a prepared model
HIDDEN_AT = "pocl_hidden_at"  # ... and `hidden_at_positions`
FUSED_AT = "pocl_fused_at"  # ... and `fused_inputs` (data parallel only: FSDP shards the LM head outside forward)
COMPILED_AT = "pocl_compiled_at"  # `fused_inputs` compiled (`models.compiled_inputs`, opt-in on CUDA)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions [B, L] counted over the real tokens of `mask` [B, L] only, so a left-padded row sees its unpadded
    positions (GPT-2 and Llama default to arange, which shifts them by the padding); pads get 0, or on the right the
    last real position, and are masked out."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _positions_for(mask: torch.Tensor) -> torch.Tensor | None:
    """`position_ids(mask)`, or None (the model's default arange) when the batch is on the CPU and no row is padded on
    the left. Right-padded rows need no positions, and given as [B, L] they would change the float bits of training:
    the position embedding's gradient then accumulates per row, in another order than the default's broadcast
    [1, L] (the `laptop` reference results are pinned to the default). The check reads the mask, free on the CPU; on
    a GPU it would wait for the device, so there the positions are always given."""
    if mask.device.type == "cpu" and bool(mask[:, 0].all()):
        return None
    return position_ids(mask)


def logits_at_positions(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:
    """LM-head logits [N, V] at the kept positions only (`keep` as in `hidden_at_positions`), flattened (b, t): the
    head runs on N rows, not B*T."""
    return model.get_output_embeddings()(hidden_at_positions(model, input_ids, attention_mask, keep))


def hidden_at_positions(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:
    """Final hidden states [N, H] (after the last norm, before the LM head) at the kept positions, flattened (b, t).

    `keep`: [B, T] bool, or the flat indices b * T + t, [N] int64 (an index gather: no host sync, unlike a mask).
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=_positions_for(attention_mask)).last_hidden_state  # [B, T, H]
    if keep.dtype == torch.bool:
        return hidden[keep]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)


def fused_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the fused loss needs: (hidden [N, H] at the kept positions, LM head weight [V, H], bias [V] or None); the
    head comes out as views, so a wrapper (DDP) sees it used in the forward."""
    head = model.get_output_embeddings()
    bias = None if head.bias is None else head.bias.view_as(head.bias)
    return hidden_at_positions(model, input_ids, attention_mask, keep), head.weight.view_as(head.weight), bias
