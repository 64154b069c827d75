"""Regression metrics for predicted versus observed connectivity.

Every value is a plain Python float, so a metrics dict can go straight into
`ray.tune.report`, MLflow or JSON without conversion.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def regression_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean squared error, Pearson and Spearman correlation and R² of `prediction`.

    Computed in float64 whatever the input precision (bf16-trained models included).

    Degenerate inputs give finite numbers instead of NaN, because a NaN metric makes a
    tuning trial unrankable: when either array is constant (or has fewer than two
    values) the correlations are 0.0 — "no linear/monotonic relation", which is what a
    model predicting a constant has learned. R² follows scikit-learn: with a constant
    target it is 1.0 for a perfect prediction and 0.0 otherwise.
    """
    p = np.asarray(prediction, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.size} values but target has {t.size}")
    if p.size == 0:
        raise ValueError("cannot compute metrics of an empty prediction")
    residual = float(np.sum((p - t) ** 2))
    return {
        "mse": residual / p.size,
        "pearson": _correlation(stats.pearsonr, p, t),
        "spearman": _correlation(stats.spearmanr, p, t),
        "r2": _r2(residual, t),
    }


def _correlation(method, p: np.ndarray, t: np.ndarray) -> float:
    """A scipy correlation coefficient, 0.0 where it is undefined (constant input)."""
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return 0.0
    return float(method(p, t)[0])


def _r2(residual: float, t: np.ndarray) -> float:
    total = float(np.sum((t - t.mean()) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1.0 - residual / total
