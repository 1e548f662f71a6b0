"""Partition, Baby Step, schedules and stage plans against hand-worked examples."""
import numpy as np
import pytest

from pocl_utils.curriculum import apply_order, baby_step, linear_schedule, partition, plan_stages, split_steps


def test_partition_sizes_hand_worked():
    parts = partition(np.arange(10), 4)  # 10 = 3 + 3 + 2 + 2
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def test_partition_keeps_order_and_covers_once():
    order = np.array([7, 3, 9, 0, 4, 1, 8, 2, 6, 5, 10])
    parts = partition(order, 3)
    assert np.concatenate(parts).tolist() == order.tolist()
    sizes = [len(p) for p in parts]
    assert all(s in (11 // 3, 11 // 3 + 1) for s in sizes)


@pytest.mark.parametrize("n,k", [(0, 5), (6, 5)])
def test_partition_rejects_bad_n(n, k):
    with pytest.raises(ValueError):
        partition(np.arange(k), n)


def test_baby_step_unions():
    stages = baby_step([np.array([4, 2]), np.array([0]), np.array([3, 1])])
    assert [s.tolist() for s in stages] == [[4, 2], [4, 2, 0], [4, 2, 0, 3, 1]]


def test_linear_schedule_eq3_eq4():
    assert linear_schedule(1.0, 2.0, 4) == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert linear_schedule(0.3, 0.0, 4) == pytest.approx([0.3, 0.2, 0.1, 0.0])
    assert linear_schedule(2.0, 1.0, 2) == [2.0, 1.0]
    assert linear_schedule(0.7, 0.1, 1) == [0.7]


def test_orders():
    e = np.array([5, 1, 3])
    assert apply_order(e, "easy_to_hard").tolist() == [5, 1, 3]
    assert apply_order(e, "hard_to_easy").tolist() == [3, 1, 5]
    r = apply_order(np.arange(50), "random", seed=1)
    assert sorted(r.tolist()) == list(range(50)) and r.tolist() != list(range(50))
    with pytest.raises(ValueError, match="valid"):
        apply_order(e, "sideways")


def test_split_steps_equal_budget_like_paper():
    # 20 baseline epochs over N=100 with batch 1 = 2000 steps; stages of 25/50/75/100 get 8 epochs each.
    assert split_steps(2000, [25, 50, 75, 100]) == [200, 400, 600, 800]
    steps = split_steps(101, [3, 6, 9, 11])
    assert sum(steps) == 101
    assert split_steps(4, [16, 32, 48, 64]) == [1, 1, 1, 1]  # few steps: still exact and every stage trains
    assert split_steps(5, [1, 1, 1, 100]) == [1, 1, 1, 2]
    with pytest.raises(ValueError, match="cannot cover"):
        split_steps(3, [1, 2, 3, 4])


def test_plan_stages_full():
    stages = plan_stages(np.arange(8)[::-1], n_subsets=4, total_steps=50, tau=(1, 2), alpha=(0.3, 0.0))
    assert [s.samples.tolist() for s in stages] == [[7, 6], [7, 6, 5, 4], [7, 6, 5, 4, 3, 2], list(range(7, -1, -1))]
    assert [s.tau for s in stages] == pytest.approx([1, 4 / 3, 5 / 3, 2])
    assert [s.alpha for s in stages] == pytest.approx([0.3, 0.2, 0.1, 0.0])
    assert sum(s.steps for s in stages) == 50
    h2e = plan_stages(np.arange(8), n_subsets=2, total_steps=9, tau=(1, 2), alpha=(0, 0), order="hard_to_easy")
    assert h2e[0].samples.tolist() == [7, 6, 5, 4]
