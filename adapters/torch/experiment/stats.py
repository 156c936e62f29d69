"""The statistics behind every accuracy comparison of the experiment.

- :func:`wilson_interval`: a 95% interval for one accuracy measured on ``n`` test examples
  (Wilson's score interval; E. B. Wilson, JASA 22 (1927) 209-212).
- :func:`mcnemar_test`: whether two models evaluated on the *same* test examples differ
  (McNemar's exact test on the discordant pairs; Q. McNemar, Psychometrika 12 (1947) 153-157).
  On one test set this is the right test: the two accuracies are not independent samples.
- :func:`paired_t_interval`: a 95% interval for the mean of per-seed paired differences
  (Student's t with ``n - 1`` degrees of freedom): the sweep's compressed-minus-scratch gap.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["compare_on_one_test_set", "mcnemar_test", "mean_std", "paired_t_interval", "wilson_interval"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    ``(p + z^2/(2n) -+ z sqrt(p (1 - p)/n + z^2/(4 n^2))) / (1 + z^2/n)`` with ``z`` the
    ``(1 + confidence)/2`` normal quantile. Unlike ``p -+ z sqrt(p(1-p)/n)`` it stays inside
    ``[0, 1]`` and keeps its coverage near accuracies of 0 or 1.

    Raises
    ------
    ValueError
        ``n < 1`` or ``successes`` outside ``0..n``.
    """
    from scipy.stats import norm

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got successes={successes}, n={n}.")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def mcnemar_test(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``only_a``: examples model A gets right and B wrong; ``only_b`` the reverse. Under "no
    difference" each discordant example is a fair coin: ``p = min(1, 2 P[X <= min(b, c)])``
    with ``X ~ Binomial(b + c, 1/2)``; 1.0 when there are no discordant examples.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a} and {only_b}.")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def compare_on_one_test_set(correct_a, correct_b, *, confidence: float = 0.95) -> dict:
    """Accuracy difference ``A - B`` of two models on the same examples, with its uncertainty.

    Parameters
    ----------
    correct_a, correct_b : array-like of bool, shape (n,)
        Whether each model classified each test example correctly.

    Returns
    -------
    dict
        ``diff`` (accuracy of A minus that of B), ``diff_ci95`` (a Wald interval for a paired
        difference of proportions, ``(b - c)/n -+ (z sqrt(b + c - (b - c)^2/n) + 1)/n``), ``only_a``,
        ``only_b`` (discordant counts; ``1/n`` is added to the half-width as a continuity
        correction, Fleiss et al., *Statistical Methods for Rates and Proportions*, 3rd ed., 2003,
        sec. 13.1, which keeps the interval in line with the exact test), ``p_value`` (:func:`mcnemar_test`) and
        ``significant`` (``p_value < 1 - confidence``).
    """
    from scipy.stats import norm

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal-length 1-D masks, got shapes {a.shape} and {b.shape}.")
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    z = float(norm.ppf(0.5 + confidence / 2))
    diff = (only_a - only_b) / n
    half = z * math.sqrt(max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n)) / n + 1.0 / n
    p = mcnemar_test(only_a, only_b)
    return {"diff": diff, "diff_ci95": [diff - half, diff + half], "only_a": only_a, "only_b": only_b,
            "p_value": p, "significant": bool(p < 1 - confidence)}


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def paired_t_interval(differences, confidence: float = 0.95) -> tuple[float, list[float] | None]:
    """Mean of paired differences and its Student-t interval ``mean -+ t_{n-1} s / sqrt(n)``.

    Returns ``(mean, [low, high])``; the interval is ``None`` for fewer than two differences.
    """
    from scipy.stats import t

    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    if d.size < 2:
        return mean, None
    half = float(t.ppf(0.5 + confidence / 2, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, [mean - half, mean + half]
