"""The LM head at chosen positions only: a step needs the logits (or the hidden states) of the N response-predicting
positions, not of all B * T. Imported by `models` and `distributed` (which registers these on a sharded model), and by
nothing else of pocl's: it imports only torch."""
from __future__ import annotations

import torch

LOGITS_AT = "pocl_logits_at"  # the name `distributed.prepare_model` gives `logits_at_positions` on a prepared model
HIDDEN_AT = "pocl_hidden_at"  # ... and `hidden_at_positions`
FUSED_AT = "pocl_fused_at"  # ... and `fused_inputs` (data parallel only: FSDP shards the LM head outside forward)
COMPILED_AT = "pocl_compiled_at"  # `fused_inputs` compiled (`models.compiled_inputs`, opt-in on CUDA)


def logits_at_positions(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:
    """LM-head logits at the positions where `keep` [B, T] is True only, [N, V] in flattened (b, t) order: the head
    runs on N rows of hidden states instead of B*T. `keep` may also be the flat indices [N] of those positions
    (`hidden_at_positions`)."""
    return model.get_output_embeddings()(hidden_at_positions(model, input_ids, attention_mask, keep))


def hidden_at_positions(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:
    """Final hidden states [N, H] (after the last norm, before the LM head) where `keep` [B, T] bool is True, or at
    the flat (b * T + t) indices `keep` [N] int64 (an index gather: no host sync, unlike a boolean mask)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    if keep.dtype == torch.bool:
        return hidden[keep]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)


def fused_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the fused loss needs: hidden states at `keep` [N, H], the LM head's weight [V, H] and bias [V] or None.
    The head comes out of the call as views, so that a wrapper (DDP) sees it used in the forward."""
    head = model.get_output_embeddings()
    bias = None if head.bias is None else head.bias.view_as(head.bias)
    return hidden_at_positions(model, input_ids, attention_mask, keep), head.weight.view_as(head.weight), bias
