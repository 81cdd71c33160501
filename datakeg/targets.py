"""How many pairs to ask for: per document, per chunk and per split.

* document target = ceil(chars / 1000 * pairs_per_1k), at least 1 for a non-empty document;
* the document target is split train/valid/test by the ratios (with >= 3 pairs valid and test
  get at least 1 each, train the remainder);
* each split is spread over the chunks in proportion to their size by the largest-remainder
  method, so every chunk gets at least one pair whenever the document target allows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from datakeg.errors import ConfigError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Ratios:
    train: float = 0.6
    valid: float = 0.2
    test: float = 0.2

    def __post_init__(self):
        values = (self.train, self.valid, self.test)
        if any(v < 0 or v > 1 for v in values):
            raise ConfigError(
                f"split ratios must lie between 0 and 1, got train={self.train}, valid={self.valid}, test={self.test}",
                "Use e.g. --train-pct 0.6 --valid-pct 0.2 --test-pct 0.2.",
            )
        if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"split ratios must sum to 1, got {self.train} + {self.valid} + {self.test} = {sum(values):g}",
                "Adjust --train-pct, --valid-pct and --test-pct so that they add up to 1 (e.g. 0.6/0.2/0.2).",
            )


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


def plan_targets(chunk_sizes: list[int], pairs_per_1k: float, ratios: Ratios) -> tuple[int, list[dict[str, int]]]:
    """Targets for one document: (document total, per-chunk {split: count})."""
    total = document_target(sum(chunk_sizes), pairs_per_1k)
    per_chunk = apportion(total, [float(s) for s in chunk_sizes], min_one=True)
    by_split = split_counts(total, ratios)
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
    return total, plan
