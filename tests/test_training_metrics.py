"""regression_metrics: values, degenerate inputs, types."""

import warnings

import numpy as np
import pytest
from scipy import stats

from xattn.training.metrics import regression_metrics


def test_perfect_prediction():
    target = np.array([0.1, 0.5, -0.3, 0.9], dtype=np.float32)
    metrics = regression_metrics(target.copy(), target)
    assert metrics == {"mse": 0.0, "pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0), "r2": 1.0}


def test_values_match_definitions():
    rng = np.random.default_rng(0)
    target = rng.normal(size=200)
    prediction = target + rng.normal(scale=0.5, size=200)
    metrics = regression_metrics(prediction.astype(np.float32), target)
    p = prediction.astype(np.float32).astype(np.float64)
    assert metrics["mse"] == pytest.approx(np.mean((p - target) ** 2))
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(p, target)[0])
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(p, target)[0])
    assert metrics["r2"] == pytest.approx(1 - np.sum((p - target) ** 2) / np.sum((target - target.mean()) ** 2))
    assert all(type(v) is float for v in metrics.values())


def test_constant_prediction_gives_zero_correlation_without_warnings():
    target = np.array([0.0, 1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = regression_metrics(np.full(4, 1.5), target)
    assert metrics["pearson"] == 0.0 and metrics["spearman"] == 0.0
    assert metrics["r2"] == pytest.approx(0.0)  # predicting the mean explains nothing
    assert metrics["mse"] == pytest.approx(1.25)


def test_constant_target_and_single_value():
    assert regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 1.0]))["r2"] == 0.0
    assert regression_metrics(np.array([1.0, 1.0]), np.array([1.0, 1.0]))["r2"] == 1.0
    single = regression_metrics(np.array([2.0]), np.array([1.0]))
    assert single["pearson"] == 0.0 and single["mse"] == 1.0


def test_shape_mismatch_and_empty_are_errors():
    with pytest.raises(ValueError, match="3 values but target has 2"):
        regression_metrics(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        regression_metrics(np.zeros(0), np.zeros(0))
