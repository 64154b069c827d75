"""The comparison of model families on matched final runs: same folds, same seeds.

Each family's best configuration was retrained on every outer region fold for every seed;
a baseline is compared with the study's own family on the runs that share (fold, seed), so the
difference is paired; its interval and p-value count folds, not runs (xattn.tuning.statistics),
and the p-values of several baselines are Holm-adjusted together.

With nulls (xattn.tuning.null_phase), each family's real mean test r is also set against the
mean r of each null dataset it was retrained on:

    p = (1 + #{nulls with r >= real r}) / (1 + N)

(the +1 counts the real data as one draw of the null distribution, so p is never 0 and its
smallest value is 1 / (N + 1)).
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from xattn.tracking import tags
from xattn.tracking.runs import arm_of
from xattn.tuning import statistics

METRICS = ("test_pearson", "test_mse", "test_r2")


def variant_arm(family: str, variant: str) -> str:
    return f"{family}:{variant}"


@dataclass(frozen=True)
class FinalResult:
    """The test metrics of one final run: one arm (a family, or a variant of the study's
    family), one outer fold, one seed."""

    family: str
    fold: str
    seed: str
    metrics: dict[str, float]


def compare_runs(runs, reference: str, metric: str = "test_pearson") -> dict[str, Any]:
    """`compare_results` over the FINISHED ones of MLflow final runs (tagged arm, fold, seed)."""
    results = [
        FinalResult(arm_of(run), run.data.tags.get(tags.FOLD), run.data.tags.get(tags.SEED),
                    {m: run.data.metrics[m] for m in METRICS if m in run.data.metrics})
        for run in runs
        if run.info.status == "FINISHED"
    ]  # fmt: skip
    return compare_results(results, reference, metric)


def compare_results(results: list[FinalResult], reference: str, metric: str = "test_pearson") -> dict[str, Any]:
    """Summaries per family and paired differences (reference minus baseline)."""
    by_family: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(dict)
    for result in results:
        by_family[result.family][(str(result.fold), str(result.seed))] = result.metrics
    families = []
    reference_runs = by_family.get(reference, {})
    # Every arm is summarised on the (fold, seed) runs all arms finished, so their means are comparable.
    paired = set.intersection(*(set(runs) for runs in by_family.values())) if by_family else set()
    for family in [reference] + sorted(f for f in by_family if f != reference):
        matched = by_family[family]
        entry: dict[str, Any] = {"family": family, "n_runs": len(matched), "n_paired_runs": len(paired)}
        for name in METRICS:
            # Seeds averaged within a fold (r through Fisher's z), then the folds: the fold is the unit.
            folds = statistics.fold_means({key: matched[key] for key in paired}, name)
            values = np.array([folds[fold] for fold in sorted(folds, key=_numeric)])
            entry[f"{name}_mean"] = statistics.mean_of(list(values), name) if values.size else math.nan
            entry[f"{name}_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
            entry[f"fold_{name}"] = {fold: folds[fold] for fold in sorted(folds, key=_numeric)}
        if family != reference:
            entry["vs_reference"] = paired_difference(reference_runs, matched, metric)
        families.append(entry)
    # Several baselines against one reference: their p-values are adjusted together.
    compared = {entry["family"]: entry["vs_reference"]["p_value"] for entry in families if "vs_reference" in entry}
    for entry in families:
        if "vs_reference" in entry:
            entry["vs_reference"]["p_holm"] = statistics.holm(compared)[entry["family"]]
    return {"reference": reference, "metric": metric, "families": families}


def paired_difference(reference: dict, baseline: dict, metric: str) -> dict[str, Any]:
    """Reference minus baseline over the (fold, seed) runs both have, as fold-level statistics
    (`xattn.tuning.statistics`): seeds averaged within each fold, a corrected t over the folds."""
    keys = sorted(k for k in reference.keys() & baseline.keys() if metric in reference[k] and metric in baseline[k])
    reference_folds = statistics.fold_means({k: reference[k] for k in keys}, metric)
    baseline_folds = statistics.fold_means({k: baseline[k] for k in keys}, metric)
    folds = sorted(reference_folds.keys() & baseline_folds.keys(), key=_numeric)
    differences = np.array([reference_folds[fold] - baseline_folds[fold] for fold in folds])
    return {"n_pairs": len(keys), "metric": metric, **statistics.corrected_t(differences)}


def _numeric(fold: str) -> tuple:
    return (0, int(fold), "") if str(fold).isdigit() else (1, 0, str(fold))


def validation_test_agreement(trials: list[dict[str, float]], metric: str, mode: str) -> dict[str, Any]:
    """Does the search select on a signal that predicts the test metric? The Spearman rank
    correlation, across a search's finished trials, between each trial's validation metric
    (`best_<metric>`, signed so that larger is better) and its test Pearson r.

    Positive means trials that validate better also test better; near zero means the tuner
    cannot tell good configurations from bad ones on this validation signal.

    Trials of several searches (a nested study's outer folds, each trial's `GROUP`) also get
    `spearman_within_folds`: the same correlation after centring validation and test on each
    fold's means. Pooled, a fold whose regions are easy raises both and makes the search look
    predictive; a search chooses within its fold, so the within-fold figure is the one that
    says whether it chooses well.
    """
    kept = [
        t
        for t in trials
        if math.isfinite(t.get(f"best_{metric}", math.nan)) and math.isfinite(t.get("test_pearson", math.nan))
    ]
    pairs = [(t[f"best_{metric}"], t["test_pearson"]) for t in kept]
    result: dict[str, Any] = {"metric": metric, "n_trials": len(pairs), "spearman": math.nan, "p_value": math.nan}
    values = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    if len(pairs) >= 3 and np.ptp(values[:, 0]) > 0 and np.ptp(values[:, 1]) > 0:
        sign = -1.0 if mode == "min" else 1.0
        rho, p_value = stats.spearmanr(sign * values[:, 0], values[:, 1])
        result.update(spearman=float(rho), p_value=float(p_value), p_method="Spearman, t approximation")
        if len(pairs) <= EXACT_SPEARMAN_UP_TO:
            # Few trials: the t approximation says p = 0 for a perfect ranking of 3, which 3 cannot give.
            result.update(p_value=exact_spearman_p(sign * values[:, 0], values[:, 1]), p_method="Spearman, exact")
            result["p_floor"] = 2 / math.factorial(len(pairs))
        result.update(_within_groups(values, [t.get(GROUP) for t in kept], sign))
    return result


GROUP = "_search"  # a trial's search (its outer fold) among those whose trials are pooled


def _within_groups(values: np.ndarray, groups: list, sign: float) -> dict[str, Any]:
    """Spearman of validation against test after centring both on their group's means (groups
    of one trial are left out: they carry no within-group ranking)."""
    sizes = {g: groups.count(g) for g in set(groups) if g is not None}
    keep = np.array([sizes.get(g, 0) > 1 for g in groups])
    if len(sizes) < 2 or keep.sum() < 3:
        return {}
    centred = values[keep].copy()
    kept_groups = np.array([str(g) for g, k in zip(groups, keep) if k])
    for group in set(kept_groups):
        centred[kept_groups == group] -= centred[kept_groups == group].mean(axis=0)
    if np.ptp(centred[:, 0]) == 0 or np.ptp(centred[:, 1]) == 0:
        return {}
    rho, _ = stats.spearmanr(sign * centred[:, 0], centred[:, 1])
    return {"spearman_within_folds": float(rho), "n_folds": len(set(kept_groups))}


EXACT_SPEARMAN_UP_TO = 8  # trials: 8! = 40320 orderings, enumerated in well under a second


def exact_spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of Spearman's rho from every ordering of y against x (ties keep their mid-ranks)."""
    import itertools

    rank_x, rank_y = stats.rankdata(x), stats.rankdata(y)
    orderings = np.array(list(itertools.permutations(rank_y)))
    centred_x = rank_x - rank_x.mean()
    centred = orderings - orderings.mean(axis=1, keepdims=True)
    rhos = centred @ centred_x / np.sqrt((centred**2).sum(axis=1) * (centred_x**2).sum())
    observed = rhos[0]  # the identity ordering comes first
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


TIE_TOLERANCE = 1e-6  # test r that differ by less are the same r trained in another order


def null_test(real: list[float], nulls: dict[int, list[float]], runs_per_null: int, method: str) -> dict[str, Any]:
    """Real mean r against the mean r of every null that has all its runs (`runs_per_null`)."""
    real_r = float(np.mean(real)) if real else math.nan
    complete = {
        index: float(np.mean(values)) for index, values in sorted(nulls.items()) if len(values) == runs_per_null
    }
    values = np.array(list(complete.values()))
    result: dict[str, Any] = {"method": method, "n": len(values), "real_r": real_r, "r": [float(v) for v in values]}
    result["mean"] = float(values.mean()) if values.size else math.nan
    result["sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
    if values.size and math.isfinite(real_r):
        # A null within rounding of the real r is a tie, and a tie counts against the model: a
        # family that ignores expression scores its nulls as its real data, give or take the
        # summation order of stacked training (xattn/training/stacked.py).
        result["p"] = float((1 + np.sum(values >= real_r - TIE_TOLERANCE)) / (1 + values.size))
    else:
        result["p"] = math.nan
    return result


def null_comparison(
    finals, nulls, method: str, runs_per_null: int, metric: str = "test_pearson"
) -> dict[str, dict[str, Any]]:
    """`null_test` per arm from FINISHED MLflow final and null runs, for every arm that was
    retrained on `method` nulls.

    Real and null runs are grouped by arm (`arm_of`: a family, or "family:variant"), not by
    family: a variant's final runs carry its family's tag, and pooling them would set the
    family's nulls against a mixture of arms. An arm without null runs (variants are not
    retrained on nulls) gets no test rather than an empty one.
    """
    real: dict[str, list[float]] = defaultdict(list)
    drawn: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in finals:
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            real[arm_of(run)].append(run.data.metrics[metric])
    tested = set()
    for run in nulls:
        run_tags = run.data.tags
        if run_tags.get(tags.NULL_METHOD) != method:
            continue
        tested.add(arm_of(run))
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            drawn[arm_of(run)][int(run_tags[tags.NULL_INDEX])].append(run.data.metrics[metric])
    return {arm: null_test(real[arm], drawn.get(arm, {}), runs_per_null, method) for arm in real if arm in tested}


def comparison_frame(comparison: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for entry in comparison["families"]:
        row = {k: v for k, v in entry.items() if k not in ("vs_reference", "nulls") and not k.startswith("fold_")}
        for key, value in entry.get("vs_reference", {}).items():
            if key != "metric":
                row[f"diff.{key}"] = value
        row.update({f"null.{key}": value for key, value in entry.get("nulls", {}).items() if key != "r"})
        rows.append(row)
    return pd.DataFrame(rows)


MARKDOWN_COLUMNS = (
    "family", "n_runs", "test_pearson_mean", "test_pearson_sd", "test_mse_mean", "test_r2_mean",
    "diff.n_folds", "diff.mean_difference", "diff.ci95_low", "diff.ci95_high", "diff.p_value", "diff.p_holm",
    "diff.mdd80", "search_val_test_spearman", "search_val_test_spearman_within_folds",
    "null.n", "null.mean", "null.sd", "null.p",
)  # fmt: skip


def comparison_markdown(comparison: dict[str, Any]) -> str:
    frame = comparison_frame(comparison)
    shown = frame[[c for c in MARKDOWN_COLUMNS if c in frame.columns]]
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}"  # NaN: the reference has no difference to itself
    return str(value)


def log_comparison(client, parent_run_id: str, comparison: dict[str, Any]) -> None:
    client.log_text(parent_run_id, json.dumps(comparison, indent=2) + "\n", "comparison.json")
    buffer = io.StringIO()
    comparison_frame(comparison).to_csv(buffer, index=False)
    client.log_text(parent_run_id, buffer.getvalue(), "comparison.csv")
    for entry in comparison["families"]:
        for key, value in entry.items():
            if isinstance(value, float) and math.isfinite(value):
                client.log_metric(parent_run_id, f"compare.{entry['family']}.{key}", value)
        for key, value in entry.get("vs_reference", {}).items():
            if isinstance(value, float) and math.isfinite(value):
                client.log_metric(parent_run_id, f"compare.{entry['family']}.diff.{key}", value)
        for key, value in entry.get("nulls", {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                client.log_metric(parent_run_id, f"compare.{entry['family']}.null.{key}", float(value))


def load_comparison(client, study: str, run_id: str | None = None) -> dict[str, Any]:
    """The comparison.json of the newest study run of `study` (or of `run_id`)."""
    from xattn.errors import StudyNotFound
    from xattn.tracking.runs import find_parent_run, read_artifact_json

    parent = find_parent_run(client, study, run_id)
    names = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    if "comparison.json" not in names:
        raise StudyNotFound(
            f"study run {parent.info.run_id} of {study!r} has no comparison: add `compare_with:` to the spec and run it"
        )
    return read_artifact_json(client, parent.info.run_id, "comparison.json")
