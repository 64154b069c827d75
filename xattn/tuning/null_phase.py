"""The null phase of a comparison: is a family's test r more than space?

With `comparison.nulls: {method, n}`, every compared family's configuration of each outer fold
is retrained on `n` null datasets (`xattn.data.nulls`), with the final runs' splits, seeds and
budget. Null i is one map of the expression, the same in every outer fold and for every family
and seed, as the real statistic is one map scored over the folds. Null runs are MLflow child
runs tagged `xattn.role = null`, `xattn.null_method` and `xattn.null_index`; the phase resumes
like the others. A family whose stacked training is exact trains its nulls in bundles, one Ray
trial per NULLS_PER_TRIAL of them (xattn.tuning.null_bundle), each recorded as its own run.
"""

from __future__ import annotations

from typing import Any

from xattn.tracking import tags
from xattn.tracking.runs import child_runs
from xattn.tuning.phases import Context, _trials_at_once, finals, fit_phase, outer_fold
from xattn.tuning.spec import StudySpec


def nulls(
    spec: StudySpec, context: Context, configs: dict[str, dict[int, dict[str, Any]]], comparison: dict[str, Any]
) -> None:
    """Retrain every family's configurations on the spec's nulls and add each arm's null test
    (comparison.null_test) to its entry of `comparison`."""
    from ray import tune

    from xattn.tuning.comparison import null_comparison
    from xattn.tuning.null_bundle import NULLS_PER_TRIAL, bundles
    from xattn.tuning.trial import NULL_INDEX, NULL_METHOD, null_drawn

    drawn = spec.comparison.nulls
    folds, seeds = spec.comparison.folds, spec.comparison.seeds
    for family, config in configs.items():
        family_spec = spec.for_family(family)
        n = drawn.n_for(family)
        total = n * folds * seeds
        title = f"null {family} ({n} {drawn.method} nulls x {folds} folds x {seeds} seeds = {total} runs"
        if bundles(family, family_spec):
            title += f", trained {min(n, NULLS_PER_TRIAL)} to a trial)"
            null_bundles(family_spec, config, context, drawn.method, n, title)
            continue
        extra = {NULL_METHOD: drawn.method, NULL_INDEX: tune.grid_search(list(range(n)))}
        finals(family_spec, config, spec.comparison, context, role="null", extra_space=extra, runs_per_cell=n,
               title=title + ")", null_of=null_drawn)  # fmt: skip
    children = child_runs(context.client, context.client.get_run(context.parent_run_id))
    finished = [run for run in children if run.data.tags.get(tags.ROLE) == "final"]
    null_runs = [run for run in children if run.data.tags.get(tags.ROLE) == "null"]
    tests = null_comparison(finished, null_runs, drawn.method, folds * seeds)
    for entry in comparison["families"]:
        if entry["family"] in tests:
            entry["nulls"] = tests[entry["family"]]


def null_bundles(
    spec: StudySpec, configs: dict[int, dict[str, Any]], context: Context, method: str, n: int, title: str
) -> None:
    """`spec`'s family's n nulls of every outer fold and seed, trained in stacked bundles and
    recorded one MLflow run per null (xattn.tracking.stacked_runs)."""
    from ray import tune

    from xattn.tracking.stacked_runs import StackedNullRuns
    from xattn.tuning.null_bundle import bundle_cells, bundle_trainable
    from xattn.tuning.trial import CELL, NULL_METHOD, SELECTED, own_configuration

    comparison = context.spec.comparison
    seeds = [spec.seed + offset for offset in range(comparison.seeds)]
    cells = bundle_cells(comparison.folds, seeds, n)
    recorder = StackedNullRuns(
        context.client, context.experiment_id, context.parent_run_id, spec.model.family, method,
        fixed=spec.trial_params({}), params_of=own_configuration, provenance=context.provenance,
    )  # fmt: skip
    if context.progress is not None:
        context.progress.start_phase(title, len(cells), "test_pearson", "max")
    grid = {
        CELL: tune.grid_search(cells),
        "_fold": tune.sample_from(lambda trial: trial.config[CELL][0]),
        "_seed": tune.sample_from(lambda trial: trial.config[CELL][1]),
    }
    results = fit_phase(
        spec, context, "null", bundle_trainable(outer_fold(spec, 0, comparison.folds), context.mirror, n),
        lambda _searcher: recorder,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=_trials_at_once(spec), reuse_actors=True),
        param_space={SELECTED: {str(k): dict(v) for k, v in configs.items()}, NULL_METHOD: method, **grid},
    )  # fmt: skip
    for result in results:  # bundles a killed driver finished training but did not record
        if result.checkpoint is not None and result.error is None:
            recorder.record(str(result.metrics["trial_id"]), result.config, result.checkpoint.path)
