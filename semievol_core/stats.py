"""Statistics for comparing systems on the same test questions.

    lo, hi = bootstrap_ci(correct, samples=1000, seed=0)   # 95% percentile bootstrap of accuracy
    p = mcnemar_exact(correct_a, correct_b)                # two-sided exact McNemar p-value
    d, lo, hi = paired_difference(correct_a, correct_b)    # accuracy(a) - accuracy(b), 95% CI

McNemar looks only at the discordant questions (one system right, the other wrong): under the null
both kinds are equally likely, so their count is Binomial(b + c, 1/2). The exact test is right for
the small discordant counts that a few hundred test questions give.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_ci(correct: Sequence[bool], samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs the two systems' results on the same questions")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_difference(correct_a: Sequence[bool], correct_b: Sequence[bool], samples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """accuracy(a) - accuracy(b) on the same questions, with a percentile bootstrap CI that
    resamples questions (pairs), so the two systems' shared easy and hard questions cancel."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("a paired difference needs the two systems' results on the same questions")
    if a.size == 0:
        return (math.nan, math.nan, math.nan)
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
