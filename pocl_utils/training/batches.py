"""Training batches: `Batch` (right-padded prompt + response, labels aligned with the logits) and the streams of
example indices that feed the loop (uniform reshuffles, or length-grouped on a GPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import Encoded


@dataclass
class Batch:
    """Right-padded prompt + response sequences with their mask and labels (targets) aligned with the logits."""

    input_ids: torch.Tensor  # [B, T] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, T]
    # [B, T] aligned with logit positions: labels[b, t] = token t+1 if it is a response token, else -100
    labels: torch.Tensor
    positions: torch.Tensor | None = None  # [N] flat indices b * T + t of the targets, found on the CPU (no host sync)

    def to(self, device: torch.device) -> "Batch":
        """The batch on `device`; to a GPU from pinned memory, so the copies are really asynchronous.

        Returns a new Batch whose tensors live on `device`.
        """
        pin = torch.device(device).type == "cuda"
        moved = [None if t is None else (t.pin_memory() if pin and t.device.type == "cpu" else t).to(
            device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels, self.positions)]
        return Batch(*moved)

    def target_positions(self) -> torch.Tensor:
        """[N] flat indices b * T + t of the targets (`positions`, or found from the labels: a host sync on a GPU)."""
        if self.positions is not None:
            return self.positions
        return (self.labels.reshape(-1) != -100).nonzero().squeeze(1)


def make_batch(examples: list[Encoded], pad_id: int) -> Batch:
    """Right-pad prompt + response sequences into one batch; only response tokens (incl. EOS) are targets.

    Returns a Batch with input_ids, attention_mask and labels [B, T] (T = the longest example; labels[b, t] is token t +
    1 where that is a response token, else -100) and the targets' flat positions [N].
    """
    T = max(e.length for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for b, e in enumerate(examples):
        seq = e.prompt_ids + e.response_ids
        P, L = len(e.prompt_ids), len(seq)
        ids[b, :L] = torch.tensor(seq)
        mask[b, :L] = 1
        labels[b, P - 1:L - 1] = torch.tensor(e.response_ids)  # position t predicts token t+1
    return Batch(ids, mask, labels, (labels.reshape(-1) != -100).nonzero().squeeze(1))


def epoch_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Endless stream of shuffled mini-batches, reshuffled every epoch.

    `batch_size`: examples per batch (an epoch's last batch may be smaller).
    Returns a generator of batches, each a list of indices.
    """
    while True:
        perm = rng.permutation(indices)
        for s in range(0, len(perm), batch_size):
            yield perm[s:s + batch_size].tolist()


GROUP_BATCHES = 16  # length grouping sorts windows of this many batches (HF's group_by_length uses 50)


def length_grouped_batches(indices: np.ndarray, lengths: list[int] | np.ndarray, batch_size: int,
                           rng: np.random.Generator, group: int = GROUP_BATCHES):
    """Endless stream of mini-batches of similar lengths (less padding).

    Each epoch shuffles, sorts each window of `group` batches by length, cuts it into batches and shuffles the batches'
    order. Every example still appears once per epoch; a batch is not a uniform draw, as with HF Trainer's
    group_by_length.

    `lengths`: the length of each example, indexed by the values of `indices`.
    `batch_size`: examples per batch.
    `group`: the number of batches per sorted window.
    Returns a generator of batches, each a list of indices.
    """
    lengths = np.asarray(lengths)
    while True:
        perm = rng.permutation(indices)
        out = []
        for w in range(0, len(perm), batch_size * group):
            window = perm[w:w + batch_size * group]
            window = window[np.argsort(lengths[window], kind="stable")]
            out += [window[s:s + batch_size].tolist() for s in range(0, len(window), batch_size)]
        for k in rng.permutation(len(out)):
            yield out[k]


def batch_stream(indices: np.ndarray, encoded: list[Encoded], batch_size: int, rng: np.random.Generator,
                 device: torch.device | str):
    """The endless stream of training batches of `indices` for `device`.

    On CUDA the batches are length-grouped (less padding, `length_grouped_batches`); elsewhere they are uniform
    reshuffles (`epoch_batches`), which keeps the CPU's draws bitwise reproducible.

    `indices`: positions in `encoded` of the examples to train on.
    `batch_size`: examples per batch.
    Returns a generator of batches, each a list of indices.
    """
    if torch.device(device).type == "cuda":
        return length_grouped_batches(indices, [e.length for e in encoded], batch_size, rng)
    return epoch_batches(indices, batch_size, rng)
