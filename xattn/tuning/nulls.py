"""The null phase of a comparison: is a family's test r more than space?

With `comparison.nulls: {method, n}`, every compared family's best configuration is retrained
on `n` null datasets (`xattn.data.nulls`) of each outer fold, with the final runs' splits,
seeds and budget. Null i of fold k is the same draw for every family and seed, so the families
face the same nulls. Per family, the statistic of the real data and of each null is the mean
test Pearson r over its folds x seeds, and

    p = (1 + #{nulls with r >= real r}) / (1 + N)

(the +1 counts the real data as one draw of the null distribution, so p is never 0 and its
smallest value is 1 / (N + 1)). Null runs are MLflow child runs tagged `xattn.role = null`,
`xattn.null_method` and `xattn.null_index`; the phase resumes like the others.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from xattn.data.nulls import null_seed
from xattn.tracking import tags

NULL_METHOD = "_null_method"  # trial config keys, beside the final runs' _fold and _seed
NULL_INDEX = "_null_index"


def null_of_trial(config: dict[str, Any], seed: int, fold: int) -> dict[str, Any] | None:
    """Pop a null run's keys from its trial config; the null it trains on, or None for real data."""
    method = config.pop(NULL_METHOD, None)
    index = config.pop(NULL_INDEX, None)
    if method is None:
        return None
    return {"method": method, "index": int(index), "fold": int(fold), "seed": null_seed(seed, method, int(index), int(fold))}


def null_test(real: list[float], nulls: dict[int, list[float]], runs_per_null: int, method: str) -> dict[str, Any]:
    """Real mean r against the mean r of every null that has all its runs (`runs_per_null`)."""
    real_r = float(np.mean(real)) if real else math.nan
    complete = {index: float(np.mean(values)) for index, values in sorted(nulls.items()) if len(values) == runs_per_null}
    values = np.array(list(complete.values()))
    result: dict[str, Any] = {"method": method, "n": len(values), "real_r": real_r, "r": [float(v) for v in values]}
    result["mean"] = float(values.mean()) if values.size else math.nan
    result["sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
    if values.size and math.isfinite(real_r):
        result["p"] = float((1 + np.sum(values >= real_r)) / (1 + values.size))
    else:
        result["p"] = math.nan
    return result


def null_comparison(finals, nulls, method: str, runs_per_null: int, metric: str = "test_pearson") -> dict[str, dict[str, Any]]:
    """`null_test` per family from FINISHED MLflow final and null runs."""
    real: dict[str, list[float]] = defaultdict(list)
    drawn: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in finals:
        if run.info.status == "FINISHED" and metric in run.data.metrics:
            real[run.data.tags[tags.FAMILY]].append(run.data.metrics[metric])
    for run in nulls:
        run_tags = run.data.tags
        if run.info.status == "FINISHED" and metric in run.data.metrics and run_tags.get(tags.NULL_METHOD) == method:
            drawn[run_tags[tags.FAMILY]][int(run_tags[tags.NULL_INDEX])].append(run.data.metrics[metric])
    return {family: null_test(real[family], drawn.get(family, {}), runs_per_null, method) for family in real}


def run_nulls(spec, context, configs: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> None:
    """Retrain every family's configuration on the spec's nulls; add each family's null test
    to its entry of `comparison` (as `nulls`)."""
    from xattn.tracking.runs import child_runs

    nulls = spec.comparison.nulls
    for family, config in configs.items():
        _null_phase(spec.for_family(family), config, spec.comparison, context)
    children = child_runs(context.client, context.client.get_run(context.parent_run_id))
    finals = [run for run in children if run.data.tags.get(tags.ROLE) == "final"]
    null_runs = [run for run in children if run.data.tags.get(tags.ROLE) == "null"]
    tests = null_comparison(finals, null_runs, nulls.method, spec.comparison.folds * spec.comparison.seeds)
    for entry in comparison["families"]:
        if entry["family"] in tests:
            entry["nulls"] = tests[entry["family"]]


def _null_phase(spec, config: dict[str, Any], comparison, context) -> None:
    """One family on N nulls x K folds x S seeds: the final runs' grid, once per null."""
    from ray import tune

    from xattn.studies import _final

    nulls = comparison.nulls
    total = nulls.n * comparison.folds * comparison.seeds
    title = f"null {spec.model.family} ({nulls.n} {nulls.method} nulls x {comparison.folds} folds x {comparison.seeds} seeds = {total} runs)"
    extra = {NULL_METHOD: nulls.method, NULL_INDEX: tune.grid_search(list(range(nulls.n)))}
    _final(spec, config, comparison, context, role="null", extra_space=extra, runs_per_cell=nulls.n, title=title)
