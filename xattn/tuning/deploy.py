"""The model a nested study deploys: its selection procedure run once more on every region, then refit.

A nested comparison estimates how well the procedure does on regions it never saw: on each
outer fold, a search on the fold's non-test regions, selection by validation only. The model a
user registers and exports is that procedure applied to all regions: a search whose validation
patch is carved from every region (no test regions), then its selected configuration retrained
on every region for its best validation epoch (a refit has no validation pairs to stop on). The
refit has no held-out regions of its own, so its run carries the nested estimate of the study's
family (`nested_test_pearson` and its 95% interval over the outer folds), labelled as such.
"""

from __future__ import annotations

import math
from typing import Any

from xattn.tracking import tags
from xattn.tracking.callback import MlflowTrialLogger
from xattn.tuning import phases, selection, statistics
from xattn.tuning.spec import StudySpec

NESTED = "nested_test_pearson"  # the refit run's metrics: the nested estimate and its interval


def deploy(spec: StudySpec, context: phases.Context, comparison: dict[str, Any] | None) -> None:
    """Select the study family's configuration on all regions, refit it on all regions and log
    the nested estimate of `comparison` on the refit run."""
    from ray import tune

    from xattn.tuning.trainable import trainable
    from xattn.tuning.trial import EPOCHS

    results = phases.search(spec, context, whole="selection")
    best = selection.best_of(results, spec.search.metric, spec.search.mode)
    if best is None:
        return  # no trial finished: the summary reports it
    epochs = max(1, round(selection.mean(trial.get("best_epoch", spec.budget.max_epochs) for trial in best.trials)))

    def make_logger(_searcher) -> MlflowTrialLogger:
        return MlflowTrialLogger(
            context.client, context.experiment_id, context.parent_run_id, lambda _: None, spec.model.family,
            role="refit", fold=tags.WHOLE_DATA_FOLD, seed=spec.seed, fixed=spec.trial_params({}),
            provenance=context.provenance,
        )  # fmt: skip

    if context.progress is not None:
        context.progress.start_phase(
            f"refit {spec.model.family} on all regions ({epochs} epochs)", 1, spec.search.metric, spec.search.mode
        )
    phases.fit_phase(
        spec, context, "refit", trainable(spec, context.mirror, "refit"), make_logger,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1),
        param_space={**best.values, EPOCHS: epochs, "_seed": spec.seed},
    )  # fmt: skip
    if comparison is not None:
        log_nested_estimate(context, spec.model.family, comparison)


def nested_estimate(comparison: dict[str, Any], family: str) -> dict[str, float]:
    """`family`'s mean test r over the outer folds (seeds averaged, Fisher z) with its corrected
    95% interval (xattn.tuning.statistics.corrected_t, taken on z and mapped back to r)."""
    entry = next((e for e in comparison["families"] if e["family"] == family), None)
    folds = (entry or {}).get("fold_test_pearson") or {}
    z = statistics.fisher_z(list(folds.values()))
    interval = statistics.corrected_t(z)
    return {
        NESTED: math.tanh(interval["mean_difference"]) if z.size else math.nan,
        f"{NESTED}_ci95_low": math.tanh(interval["ci95_low"]),
        f"{NESTED}_ci95_high": math.tanh(interval["ci95_high"]),
        "nested_folds": float(z.size),
    }


def log_nested_estimate(context: phases.Context, family: str, comparison: dict[str, Any]) -> None:
    from xattn.tracking.runs import child_runs

    estimate = {key: value for key, value in nested_estimate(comparison, family).items() if math.isfinite(value)}
    for run in child_runs(context.client, context.client.get_run(context.parent_run_id)):
        if run.data.tags.get(tags.ROLE) == "refit" and run.info.status == "FINISHED":
            for key, value in estimate.items():
                context.client.log_metric(run.info.run_id, key, value)
