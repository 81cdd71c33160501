import pytest

from datakeg.errors import ConfigError
from datakeg.targets import Ratios, apportion, document_target, plan_targets, split_counts


def test_document_target():
    assert document_target(0, 10) == 0
    assert document_target(1, 10) == 1
    assert document_target(1000, 10) == 10
    assert document_target(1001, 10) == 11
    assert document_target(3000, 0.1) == 1  # no float creep: 0.30000000000000004 -> 1, not 2
    assert document_target(19222, 10) == 193


def test_apportion_largest_remainder():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [5, 3, 2]) == [4, 2, 1]
    assert apportion(3, [100, 1, 1], min_one=True) == [1, 1, 1]
    assert apportion(2, [1, 1, 1], min_one=True) == [1, 1, 0]
    assert apportion(5, [10, 1], caps=[2, 10]) == [2, 3]


def test_split_counts():
    assert split_counts(10, Ratios()) == {"train": 6, "valid": 2, "test": 2}
    assert split_counts(3, Ratios()) == {"train": 1, "valid": 1, "test": 1}
    assert split_counts(2, Ratios()) == {"train": 2, "valid": 0, "test": 0}
    assert split_counts(5, Ratios(0.8, 0.1, 0.1)) == {"train": 3, "valid": 1, "test": 1}


@pytest.mark.parametrize("bad", [(0.5, 0.2, 0.2), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_ratios_must_sum_to_one(bad):
    with pytest.raises(ConfigError, match="sum to 1|between 0 and 1"):
        Ratios(*bad)


@pytest.mark.parametrize("sizes,per1k", [([3000, 1000, 200], 10), ([1000] * 5, 1), ([50, 4000, 10], 2.5), ([400], 10)])
def test_plan_targets_consistent(sizes, per1k):
    total, plan = plan_targets(sizes, per1k, Ratios())
    assert total == document_target(sum(sizes), per1k)
    assert sum(sum(t.values()) for t in plan) == total
    by_split = {s: sum(t[s] for t in plan) for s in ("train", "valid", "test")}
    assert by_split == split_counts(total, Ratios())
    if total >= len(sizes):
        assert all(sum(t.values()) >= 1 for t in plan)
    assert all(v >= 0 for t in plan for v in t.values())
