"""How benchmarks.platform_overhead splits a study's extra time into once-per-study and
per-trial parts, and what it projects from them (pure arithmetic; the measurement itself
runs real studies and is too slow for the suite)."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
platform_overhead = importlib.import_module("benchmarks.platform_overhead")
overhead_parts, GOAL = platform_overhead.overhead_parts, platform_overhead.GOAL


def timeline(trial_spans, between=0.0):
    return {"trials_total": sum(trial_spans), "between_trials": between}


def test_a_study_with_known_fixed_and_per_trial_costs_is_split_back_into_them():
    plain = [60.0, 62.0]
    per_trial, fixed = 0.5, 14.0
    spans = [t + per_trial for t in plain]
    plain_wall = 3.0 + sum(plain)  # the plain process has its own start-up
    study_wall = plain_wall + fixed + len(plain) * per_trial
    parts = overhead_parts(study_wall, plain_wall, plain, timeline(spans))
    assert parts["fixed_s"] == pytest.approx(fixed)
    assert parts["per_trial_s"] == pytest.approx(per_trial)
    eight = parts["projected_overhead_fraction"]["8_trials"]
    assert eight == pytest.approx((fixed + 8 * per_trial) / (fixed + 8 * (61.0 + per_trial)))


def test_trials_for_goal_is_the_smallest_study_under_the_goal():
    plain = [60.0, 60.0]
    parts = overhead_parts(100.0 + 14.0 + 1.0, 100.0, plain, timeline([60.5, 60.5]))
    n = parts["trials_for_goal"]
    fixed, p, t = parts["fixed_s"], parts["per_trial_s"], parts["trial_s"]

    def overhead(k):
        return (fixed + k * p) / (fixed + k * (t + p))

    assert overhead(n) < GOAL <= overhead(n - 1)


def test_a_per_trial_cost_over_the_goal_never_reaches_it():
    plain = [2.0, 2.0]
    parts = overhead_parts(30.0, 10.0, plain, timeline([3.0, 3.0]))
    assert parts["per_trial_fraction"] > GOAL
    assert parts["trials_for_goal"] is None


def test_a_missing_timeline_is_reported_not_raised():
    assert "error" in overhead_parts(30.0, 10.0, [2.0, 2.0], {"error": "no runs"})
