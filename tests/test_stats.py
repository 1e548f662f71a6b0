"""Statistics: t confidence intervals, paired differences over common seeds."""
import math

import pytest

from pocl_utils.stats import mean_ci, paired_diff


def test_mean_ci_hand_worked():
    m, half, n = mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302652729911275, sd = 1, sqrt(3)
    assert m == 2.0 and n == 3 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1])


def test_paired_diff_uses_common_seeds():
    m, half, n = paired_diff({0: 1.0, 1: 2.0, 2: 5.0}, {0: 2.0, 1: 4.0, 3: 9.0})
    assert n == 2 and m == pytest.approx(1.5)
