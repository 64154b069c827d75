"""Fold-level statistics: the corrected resampled t, Holm's adjustment, and their calibration on
simulated comparisons whose true difference is known."""

import math

import numpy as np
import pytest
from scipy import stats

from xattn.tuning.statistics import corrected_t, fold_means, holm


def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)  # 3 x 0.01
    assert adjusted["c"] == pytest.approx(0.06)  # 2 x 0.03
    assert adjusted["b"] == pytest.approx(0.06)  # 1 x 0.04, raised to keep the order
    assert math.isnan(adjusted["d"])


def test_seeds_are_averaged_within_a_fold_and_r_through_fisher_z():
    runs = {("0", "0"): {"test_pearson": 0.9}, ("0", "1"): {"test_pearson": 0.1}, ("1", "0"): {"test_pearson": 0.5}}
    means = fold_means(runs, "test_pearson")
    assert means["1"] == pytest.approx(0.5)
    assert means["0"] == pytest.approx(np.tanh((np.arctanh(0.9) + np.arctanh(0.1)) / 2)) != pytest.approx(0.5)


def test_too_few_folds_give_no_interval():
    assert math.isnan(corrected_t(np.array([0.1]))["ci95_low"]) and corrected_t(np.array([]))["n_folds"] == 0


def simulated_fold_differences(effect: float, folds: int, worlds: int, seed: int) -> np.ndarray:
    """Fold differences as region cross-validation makes them, the way the correction models it:
    each fold's difference is the effect plus noise that is correlated across folds through the
    training regions they share (correlation n_test / n_all = 1 / K), so the folds' spread alone
    underestimates the uncertainty of their mean."""
    rng = np.random.default_rng(seed)
    rho = 1 / folds
    shared = rng.normal(size=(worlds, 1))
    own = rng.normal(size=(worlds, folds))
    return effect + 0.05 * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * own)


@pytest.mark.parametrize("folds", [4, 10])
def test_the_corrected_interval_covers_a_known_effect_and_the_naive_one_does_not(folds):
    effect = 0.03
    results = [corrected_t(d) for d in simulated_fold_differences(effect, folds, 4000, seed=folds)]
    covered = np.mean([r["ci95_low"] <= effect <= r["ci95_high"] for r in results])
    naive = np.mean([r["naive_ci95_low"] <= effect <= r["naive_ci95_high"] for r in results])
    print(f"K = {folds}: corrected coverage {covered:.3f}, naive {naive:.3f}")
    assert covered >= 0.93
    assert naive < covered - 0.03  # the fold spread alone is too narrow


@pytest.mark.parametrize("folds", [4, 10])
def test_with_no_effect_at_most_five_percent_are_called_different(folds):
    results = [corrected_t(d) for d in simulated_fold_differences(0.0, folds, 4000, seed=100 + folds)]
    false_positives = np.mean([r["p_value"] < 0.05 for r in results])
    print(f"K = {folds}: false positives {false_positives:.3f}")
    assert false_positives <= 0.055  # 5% up to the simulation's own noise (sd 0.0034)


def test_the_minimum_detectable_difference_is_detected_four_times_in_five():
    folds, worlds = 10, 4000
    spread = simulated_fold_differences(0.0, folds, worlds, seed=7)
    mdd = np.median([corrected_t(d)["mdd80"] for d in spread])
    detected = np.mean([corrected_t(d)["p_value"] < 0.05 for d in simulated_fold_differences(mdd, folds, worlds, 8)])
    assert 0.7 <= detected <= 0.9
    assert stats.t.ppf(0.975, folds - 1) > 0  # df = K - 1
