"""Training batches by device: length-grouped on CUDA (less padding), the CPU's uniform reshuffles unchanged."""
import itertools

import numpy as np
import torch

from pocl_utils.data import Encoded
from pocl_utils.training.batches import batch_stream, epoch_batches

LENGTHS = [3 + (7 * i) % 29 for i in range(40)]  # 40 examples of lengths 3..31


def _encoded() -> list[Encoded]:
    return [Encoded([1, 2], [5] * (n - 2), i, {}) for i, n in enumerate(LENGTHS)]


def _padding(batches: list[list[int]]) -> int:
    """Pad tokens of right-padded batches: sum over batches of (longest - each)."""
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_cpu_batches_are_the_uniform_reshuffles_draw_for_draw():
    samples = np.arange(3, 40)  # a stage's positions
    got = batch_stream(samples, _encoded(), 4, np.random.default_rng(5), torch.device("cpu"))
    want = epoch_batches(samples, 4, np.random.default_rng(5))
    assert list(itertools.islice(got, 50)) == list(itertools.islice(want, 50))


def test_cuda_batches_are_grouped_by_length_and_keep_every_epoch():
    samples = np.arange(40)
    per_epoch = 10  # 40 examples in batches of 4
    got = list(itertools.islice(batch_stream(samples, _encoded(), 4, np.random.default_rng(5), "cuda"), 3 * per_epoch))
    uniform = list(itertools.islice(epoch_batches(samples, 4, np.random.default_rng(5)), 3 * per_epoch))
    for e in range(3):
        epoch = got[e * per_epoch:(e + 1) * per_epoch]
        assert sorted(sum(epoch, [])) == list(range(40))  # every example once per epoch
    assert _padding(got) < _padding(uniform) / 2
