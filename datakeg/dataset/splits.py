"""The three splits of a dataset, in the order they are generated and written, and their ratios."""

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
