"""Calibration of the corrected resampled t at the level of regions: in simulated two-model
comparisons on the real Schaefer-100 regions (tests/comparison_worlds.py), split into spatial
region folds as a study splits them, the corrected 95% interval over the K fold differences
covers the known effect at least 93% of the time, and with no effect at most 5% of comparisons
are called different. Unlike tests/test_statistics.py, the fold differences are not drawn with
the correlation the correction assumes: they come from models fitted on each fold's training
regions and scored by Pearson r over its test pairs, with pairs that share a region correlated.
"""

import math

import numpy as np
import pytest
from comparison_worlds import World, design, expected_difference, fold_differences

from xattn.tuning.statistics import corrected_t

FOLD_COUNTS = (4, 10)
WORLDS = 2000  # coverage and false positives: simulation sd 0.0049 at 95%
TARGET_WORLDS = 1000  # the independent simulation that measures the known effect
EFFECT = World()  # model A's population z is 0.10 above model B's (r 0.35)
NO_EFFECT = World(delta_z=0.0)  # the two models are exchangeable: the expected difference is exactly 0


@pytest.fixture(scope="module")
def regions(hcp_s100):
    return design(hcp_s100, FOLD_COUNTS)


@pytest.fixture(scope="module")
def effect_worlds(regions):
    return {
        "differences": fold_differences(regions, EFFECT, WORLDS, seed=1),
        "target": expected_difference(regions, EFFECT, TARGET_WORLDS, seed=2),
    }


@pytest.fixture(scope="module")
def null_worlds(regions):
    return fold_differences(regions, NO_EFFECT, WORLDS, seed=3)


@pytest.mark.parametrize("folds", FOLD_COUNTS)
def test_the_corrected_interval_covers_the_known_effect_of_region_folds(effect_worlds, folds):
    effect, effect_se = effect_worlds["target"][folds]["z"]
    results = [corrected_t(d) for d in effect_worlds["differences"][folds]["z"]]
    covered = np.mean([r["ci95_low"] <= effect <= r["ci95_high"] for r in results])
    naive = np.mean([r["naive_ci95_low"] <= effect <= r["naive_ci95_high"] for r in results])
    half_width = np.median([(r["ci95_high"] - r["ci95_low"]) / 2 for r in results])
    print(
        f"\nK = {folds}: known effect (expected fold difference in z) {effect:.4f} +- {effect_se:.4f} "
        f"(design {EFFECT.delta_z:.2f}); corrected coverage {covered:.3f}, naive {naive:.3f} "
        f"({WORLDS} worlds; median corrected half-width {half_width:.3f})"
    )
    assert effect > 10 * effect_se  # the world does hold an effect, and it is known precisely ...
    assert effect_se < 0.05 * half_width  # ... next to the intervals that should cover it
    assert covered >= 0.93


@pytest.mark.parametrize("folds", FOLD_COUNTS)
def test_with_no_effect_region_folds_call_at_most_five_percent_different(null_worlds, folds):
    results = [corrected_t(d) for d in null_worlds[folds]["z"]]
    false_positives = np.mean([r["p_value"] < 0.05 for r in results])
    naive = np.mean([not r["naive_ci95_low"] <= 0.0 <= r["naive_ci95_high"] for r in results])
    print(f"\nK = {folds}: false positives {false_positives:.3f} (naive interval {naive:.3f}, {WORLDS} worlds)")
    sd = math.sqrt(0.05 * 0.95 / WORLDS)
    assert false_positives <= 0.05 + 2 * sd  # 5% up to twice the simulation's own noise (0.060)
