import random

import pytest

from datakeg.errors import ConfigError
from datakeg.generation.targets import (
    SPLITS,
    Ratios,
    apportion,
    dataset_split_counts,
    document_target,
    plan_dataset,
    plan_targets,
    split_counts,
)


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


def totals(counts):
    return {s: sum(c[s] for c in counts) for s in SPLITS}


def test_dataset_of_one_pair_documents_meets_the_shares_exactly():
    counts, warnings = dataset_split_counts([1] * 3000, Ratios(0.6, 0.2, 0.2))
    assert totals(counts) == {"train": 1800, "valid": 600, "test": 600}
    assert all(sum(c.values()) == 1 for c in counts) and warnings == []
    # interleaved in document order, not train first: every stretch of 10 documents has all three
    for k in range(0, 3000, 10):
        assert all(totals(counts[k:k + 10])[s] > 0 for s in SPLITS)


def test_big_documents_keep_their_own_splits_and_small_ones_make_up_the_difference():
    docs = [10, 1, 1, 2, 1, 1, 1, 1, 3, 1, 2]
    counts, warnings = dataset_split_counts(docs, Ratios())
    for n, c in zip(docs, counts):
        assert sum(c.values()) == n
        if n >= 3:
            assert c == split_counts(n, Ratios())
    # 24 pairs at 0.6/0.2/0.2: largest remainder gives 14.4 -> 15 (remainders .4/.8/.8 -> valid, test)
    assert totals(counts) == dict(zip(SPLITS, apportion(24, [0.6, 0.2, 0.2]))) == {"train": 14, "valid": 5, "test": 5}
    assert warnings == []


def test_big_documents_over_their_share_leave_the_pool_to_the_others():
    # 100 three-pair documents hold 1/1/1 each (valid and test over 20%); the one-pair documents
    # go where the dataset falls short
    docs = [3] * 100 + [1] * 300
    counts, _ = dataset_split_counts(docs, Ratios())
    assert totals(counts) == {"train": 360, "valid": 120, "test": 120}
    counts, _ = dataset_split_counts([3] * 10 + [1] * 2, Ratios())  # the pool cannot make up train
    assert totals(counts) == {"train": 12, "valid": 10, "test": 10}


@pytest.mark.parametrize("ratios", [Ratios(0.5, 0.5, 0.0), Ratios(0.0, 0.5, 0.5), Ratios(1.0, 0.0, 0.0)])
def test_a_split_with_ratio_zero_gets_nothing(ratios):
    docs = [1] * 50 + [2] * 20 + [7, 40]
    counts, warnings = dataset_split_counts(docs, ratios)
    t = totals(counts)
    for split, r in zip(SPLITS, (ratios.train, ratios.valid, ratios.test)):
        if r == 0:
            assert t[split] == 0
        else:
            assert abs(t[split] - r * sum(docs)) < 1
    assert warnings == []


def test_dataset_split_counts_are_deterministic_and_close_to_the_shares():
    rng = random.Random(7)
    for _ in range(50):
        docs = [rng.choice([1, 1, 1, 2, 2, 3, 5, 12]) for _ in range(rng.randint(1, 200))]
        ratios = rng.choice([Ratios(), Ratios(0.8, 0.1, 0.1), Ratios(0.34, 0.33, 0.33)])
        first = dataset_split_counts(docs, ratios)
        assert first == dataset_split_counts(list(docs), ratios)
        counts, _ = first
        assert [sum(c.values()) for c in counts] == docs
        assert all(v >= 0 for c in counts for v in c.values())
        small_pool = sum(n for n in docs if n < 3)
        t = totals(counts)
        for split, r in zip(SPLITS, (ratios.train, ratios.valid, ratios.test)):
            want = r * sum(docs)
            # off the share by less than one pair, unless big documents alone already exceed it
            # (they keep >= 1 valid and test each) or the pool is too small to make it up
            big = sum(split_counts(n, ratios)[split] for n in docs if n >= 3)
            assert abs(t[split] - want) < 1 or big > want or small_pool < want - big


def test_empty_splits_are_warned_about():
    counts, warnings = dataset_split_counts([1], Ratios(0.6, 0.2, 0.2))
    assert counts == [{"train": 1, "valid": 0, "test": 0}]
    assert len(warnings) == 2
    assert "valid split will be empty" in warnings[0] and "test split will be empty" in warnings[1]
    _, warnings = dataset_split_counts([1, 1], Ratios(0.6, 0.2, 0.2))
    assert len(warnings) == 1 and "test split" in warnings[0]
    _, warnings = dataset_split_counts([1], Ratios(1.0, 0.0, 0.0))
    assert warnings == []
    assert dataset_split_counts([], Ratios()) == ([], [])


@pytest.mark.parametrize("docs", [[[3000, 1000, 200], [400], [120], [90, 60], [5000] * 3],
                                  [[100]] * 40 + [[2500, 2500]],
                                  [[400]]])
def test_plan_dataset_per_chunk_targets_sum_to_document_split_counts(docs):
    plans, warnings = plan_dataset(docs, 10, Ratios())
    doc_totals = [document_target(sum(sizes), 10) for sizes in docs]
    counts, expected_warnings = dataset_split_counts(doc_totals, Ratios())
    assert warnings == expected_warnings
    assert [total for total, _ in plans] == doc_totals
    for sizes, (total, plan), by_split in zip(docs, plans, counts):
        assert len(plan) == len(sizes)
        assert {s: sum(t[s] for t in plan) for s in SPLITS} == by_split
        if total >= len(sizes):
            assert all(sum(t.values()) >= 1 for t in plan)
        if total >= 3:  # documents big enough plan exactly as on their own
            assert (total, plan) == plan_targets(sizes, 10, Ratios())
