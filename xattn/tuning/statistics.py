"""Fold-level statistics of a paired comparison: the fold, not the run, is the unit of evidence.

Seeds of one fold share its split, so they are averaged first (Pearson r through Fisher's z).
The K fold differences are still not independent: every two folds share most of their training
regions. The corrected resampled t (Nadeau and Bengio, 2003) widens the variance of their mean
from s^2 / K to (1 / K + n_test / n_train) s^2, with df = K - 1; for K equal region folds
n_test / n_train is 1 / (K - 1). Several baselines tested against one reference get Holm's
step-down adjustment. Every p-value names its method and the smallest value it can take.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from scipy import stats

CORRECTED_T = "corrected resampled t over folds (Nadeau-Bengio), df = K - 1"
POWER = 0.80  # the power the minimum detectable difference is stated at
ALPHA = 0.05


def fold_means(runs: dict[tuple[str, str], dict[str, float]], metric: str) -> dict[str, float]:
    """`metric` per fold, averaged over the fold's seeds; Pearson r is averaged as Fisher's z."""
    by_fold: dict[str, list[float]] = defaultdict(list)
    for (fold, _seed), metrics in runs.items():
        if metric in metrics and math.isfinite(metrics[metric]):
            by_fold[fold].append(float(metrics[metric]))
    return {fold: mean_of(values, metric) for fold, values in by_fold.items()}


def fisher_z(correlations) -> np.ndarray:
    """Fisher's z of correlations, clipped off +-1 (where z is infinite)."""
    return np.arctanh(np.clip(np.asarray(correlations, dtype=np.float64), -0.999999, 0.999999))


def mean_of(values: list[float], metric: str) -> float:
    """The mean of `values`; of correlations, through Fisher's z."""
    if metric.endswith("pearson") or metric.endswith("spearman"):
        return float(np.tanh(np.mean(fisher_z(values))))
    return float(np.mean(values))


def corrected_t(differences: np.ndarray, test_train_ratio: float | None = None) -> dict[str, Any]:
    """Mean of K fold differences with its corrected 95% interval, two-sided p and the minimum
    difference detectable at 80% power from the observed spread; the naive interval beside it."""
    k = len(differences)
    result: dict[str, Any] = {"n_folds": k, "p_method": CORRECTED_T, "p_floor": 0.0}
    nan = dict.fromkeys(("mean_difference", "ci95_low", "ci95_high", "p_value", "mdd80"), math.nan)
    nan.update(naive_ci95_low=math.nan, naive_ci95_high=math.nan)
    if k == 0:
        return {**result, **nan}
    mean = float(np.mean(differences))
    if k < 2:
        return {**result, **nan, "mean_difference": mean}
    ratio = 1.0 / (k - 1) if test_train_ratio is None else test_train_ratio
    variance = float(np.var(differences, ddof=1))
    se = math.sqrt((1.0 / k + ratio) * variance)
    naive_se = math.sqrt(variance / k)
    critical = float(stats.t.ppf(1 - ALPHA / 2, k - 1))
    if se > 0:
        p_value = float(2 * stats.t.sf(abs(mean) / se, k - 1))
    else:
        p_value = 1.0 if mean == 0 else 0.0
    return {
        **result,
        "mean_difference": mean,
        "ci95_low": mean - critical * se,
        "ci95_high": mean + critical * se,
        "p_value": p_value,
        "mdd80": (critical + float(stats.t.ppf(POWER, k - 1))) * se,
        "naive_ci95_low": mean - critical * naive_se,
        "naive_ci95_high": mean + critical * naive_se,
    }


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of several p-values (NaN ones are left out and stay NaN)."""
    finite = sorted((p, key) for key, p in p_values.items() if math.isfinite(p))
    adjusted = {key: math.nan for key in p_values}
    running = 0.0
    for rank, (p, key) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[key] = running
    return adjusted
