"""How many pairs to ask for: per document, per chunk and per split.

* document target = ceil(chars / 1000 * pairs_per_1k), at least 1 for a non-empty document;
* the document target is split train/valid/test by the ratios (with >= 3 pairs valid and test
  get at least 1 each, train the remainder);
* each split is spread over the chunks in proportion to their size by the largest-remainder
  method, so every chunk gets at least one pair whenever the document target allows it.

For a whole dataset (``plan_dataset``), documents with fewer than ``MIN_OWN_SPLITS`` pairs are too
small for a valid and a test pair of their own: their pairs are pooled and dealt out over the
splits so that the dataset as a whole meets the ratios as closely as possible (3,000 one-pair
documents at 0.6/0.2/0.2 give 1800/600/600, not 3000/0/0).
"""

from __future__ import annotations

import math

from datakeg.dataset.splits import SPLITS, Ratios

MIN_OWN_SPLITS = 3  # a document with at least this many pairs keeps its own valid/test


def document_target(chars: int, pairs_per_1k: float) -> int:
    if chars <= 0:
        return 0
    # round() first so 3000 chars at 0.1/1k does not become ceil(0.30000000000000004) = 1 too many
    return max(1, math.ceil(round(chars / 1000 * pairs_per_1k, 9)))


def apportion(total: int, weights: list[float], caps: list[int] | None = None, min_one: bool = False) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder method).

    ``caps`` bounds each share (what a cap cuts off goes to the others, again in proportion);
    ``min_one`` gives every item at least 1 when ``total`` allows. Ties go to the earlier item.
    """
    n = len(weights)
    caps = list(caps) if caps is not None else [total] * n
    if total > sum(caps):
        raise ValueError(f"cannot place {total} in capacities {caps}")
    shares = [0] * n
    remaining = total
    active = [i for i in range(n) if caps[i] > 0]
    while remaining > 0:
        wsum = sum(weights[i] for i in active)
        quota = {i: remaining * (weights[i] / wsum if wsum > 0 else 1 / len(active)) for i in active}
        add = {i: min(int(quota[i]), caps[i] - shares[i]) for i in active}
        left = remaining - sum(add.values())
        for i in sorted(active, key=lambda i: (-(quota[i] - int(quota[i])), i)):
            if left == 0:
                break
            if shares[i] + add[i] < caps[i]:
                add[i] += 1
                left -= 1
        for i in active:
            shares[i] += add[i]
        remaining = left  # > 0 only when caps stopped some items
        active = [i for i in active if shares[i] < caps[i]]
    if min_one and total >= n:
        wsum = sum(weights) or 1.0
        for i in range(n):
            if shares[i] == 0 and caps[i] > 0:
                donor = max((j for j in range(n) if shares[j] > 1),
                            key=lambda j: (shares[j] - total * weights[j] / wsum, -j))
                shares[donor] -= 1
                shares[i] += 1
    return shares


def split_counts(n: int, ratios: Ratios) -> dict[str, int]:
    """Split ``n`` pairs train/valid/test by ``ratios``; with n >= 3, valid and test get >= 1."""
    valid = round(n * ratios.valid)
    test = round(n * ratios.test)
    if n >= 3:
        valid = max(valid, 1) if ratios.valid > 0 else 0
        test = max(test, 1) if ratios.test > 0 else 0
    while valid + test > n:  # tiny n: keep what fits, valid first
        if test > 0 and test >= valid:
            test -= 1
        else:
            valid -= 1
    train = n - valid - test
    if ratios.train == 0 and train > 0:  # nothing for train: give the remainder to the others
        if ratios.valid > 0:
            valid += train
        else:
            test += train
        train = 0
    return {"train": train, "valid": valid, "test": test}


def _chunk_targets(chunk_sizes: list[int], total: int, by_split: dict[str, int]) -> list[dict[str, int]]:
    """Spread a document's split counts over its chunks (in proportion to size, >= 1 each if possible)."""
    per_chunk = apportion(total, [float(s) for s in chunk_sizes], min_one=True)
    # Fill the small splits first, bounded by what each chunk has left; train takes the rest.
    left = list(per_chunk)
    plan = [{s: 0 for s in SPLITS} for _ in chunk_sizes]
    for split in ("test", "valid"):
        shares = apportion(by_split[split], [float(c) for c in per_chunk], caps=left)
        for i, k in enumerate(shares):
            plan[i][split] = k
            left[i] -= k
    for i, k in enumerate(left):
        plan[i]["train"] = k
    return plan


def plan_targets(chunk_sizes: list[int], pairs_per_1k: float, ratios: Ratios) -> tuple[int, list[dict[str, int]]]:
    """Targets for one document on its own: (document total, per-chunk {split: count}).

    A run over several documents should use ``plan_dataset``, which also balances the splits of
    documents too small for valid/test pairs of their own.
    """
    total = document_target(sum(chunk_sizes), pairs_per_1k)
    return total, _chunk_targets(chunk_sizes, total, split_counts(total, ratios))


def _deal(n: int, quotas: list[int]) -> list[int]:
    """The split index of each of ``n`` = sum(quotas) items, interleaved so that every prefix stays
    as close as possible to the final proportions (ties go to the earlier split)."""
    assigned = [0] * len(quotas)
    order = []
    for j in range(1, n + 1):
        k = max(range(len(quotas)), key=lambda i: (quotas[i] * j / n - assigned[i], -i))
        assigned[k] += 1
        order.append(k)
    return order


def dataset_split_counts(doc_totals: list[int], ratios: Ratios) -> tuple[list[dict[str, int]], list[str]]:
    """Split counts for every document of a dataset, and warnings about splits left empty.

    * a document with >= ``MIN_OWN_SPLITS`` pairs is split on its own, as ``split_counts`` does
      (valid and test get at least 1 each when their ratio is > 0);
    * the pairs of the smaller documents are pooled: the dataset totals are apportioned by the
      ratios (largest remainder), what the big documents already hold is subtracted, and the pool
      makes up the difference as far as it can (any excess goes by the ratios); the pool's pairs
      are then dealt in document order with a stable interleaving (e.g. train, valid, train, test,
      train, ...), so the result is deterministic and a document may mix splits;
    * a warning names each split that ends up empty although its ratio is > 0.
    """
    counts: list[dict[str, int] | None] = [split_counts(n, ratios) if n >= MIN_OWN_SPLITS else None
                                          for n in doc_totals]
    weights = [ratios.train, ratios.valid, ratios.test]
    grand = sum(doc_totals)
    desired = apportion(grand, weights) if grand else [0, 0, 0]
    fixed = [sum(c[s] for c in counts if c is not None) for s in SPLITS]
    pool = sum(n for n, c in zip(doc_totals, counts) if c is None)
    deficit = [max(0, d - f) for d, f in zip(desired, fixed)]
    if sum(deficit) >= pool:
        from_pool = apportion(pool, [float(d) for d in deficit]) if pool else [0, 0, 0]
    else:
        extra = apportion(pool - sum(deficit), weights)
        from_pool = [d + e for d, e in zip(deficit, extra)]
    dealt = iter(_deal(pool, from_pool))
    for i, n in enumerate(doc_totals):
        if counts[i] is None:
            c = {s: 0 for s in SPLITS}
            for _ in range(n):
                c[SPLITS[next(dealt)]] += 1
            counts[i] = c
    warnings = []
    if grand:
        totals = {s: sum(c[s] for c in counts) for s in SPLITS}
        for split, ratio in zip(SPLITS, weights):
            if ratio > 0 and totals[split] == 0:
                warnings.append(
                    f"the {split} split will be empty: {grand} pair(s) in all across {len(doc_totals)} document(s) "
                    f"are too few for a {split} share of {ratio:g}; raise --pairs-per-1k or add documents")
    return counts, warnings


def plan_dataset(docs_chunk_sizes: list[list[int]], pairs_per_1k: float,
                 ratios: Ratios) -> tuple[list[tuple[int, list[dict[str, int]]]], list[str]]:
    """Targets for all documents of a run, with the splits balanced over the whole dataset.

    Returns, per document in the given order, (document total, per-chunk {split: count}) as
    ``plan_targets`` does, and the warnings of ``dataset_split_counts``. Documents with
    >= ``MIN_OWN_SPLITS`` pairs get exactly what ``plan_targets`` gives them.
    """
    totals = [document_target(sum(sizes), pairs_per_1k) for sizes in docs_chunk_sizes]
    counts, warnings = dataset_split_counts(totals, ratios)
    plans = [(total, _chunk_targets(sizes, total, by_split))
             for sizes, total, by_split in zip(docs_chunk_sizes, totals, counts)]
    return plans, warnings
