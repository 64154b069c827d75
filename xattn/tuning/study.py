"""Run a study: validate, preflight the data, then Ray Tune + Optuna, recorded in MLflow.

Everything that can be wrong with the user's input is found before Ray starts or any store is
written; from then on the driver is the only writer of MLflow.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import yaml

from xattn.data import data_mirror
from xattn.errors import StoreError
from xattn.tracking.callback import MlflowTrialLogger
from xattn.tracking.store import ROLE_TAG, STUDY_TAG, Workspace, best_child, child_runs, ensure_writable
from xattn.tuning.spec import StudySpec
from xattn.tuning.trial import preflight


@dataclass
class StudyResult:
    name: str
    experiment_id: str
    parent_run_id: str
    optuna_study: str
    tracking_uri: str
    trial_counts: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def connect(workspace: Workspace):
    client = workspace.client()
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure here means the store is unusable
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise StoreError(
            f"cannot use the tracking store {workspace.tracking_uri} ({reason}): check --tracking-uri"
        ) from None
    return client


def open_experiment(client, workspace: Workspace, spec: StudySpec) -> str:
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return client.create_experiment(
            spec.name, artifact_location=workspace.artifact_location(spec.name), tags={STUDY_TAG: spec.name}
        )
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def start_parent_run(client, experiment_id: str, spec: StudySpec) -> tuple[str, str]:
    """Create the study run; return its id and the name of its Optuna study."""
    tags = {
        ROLE_TAG: "study",
        STUDY_TAG: spec.name,
        "xattn.family": spec.model.family,
        "xattn.metric": f"best_{spec.search.metric}",
        "xattn.mode": spec.search.mode,
        "mlflow.runName": f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    optuna_study = f"{spec.name}-{run_id[:8]}"
    client.set_tag(run_id, "xattn.optuna_study", optuna_study)
    params = {
        "family": spec.model.family,
        "dataset": spec.data.dataset or "files",
        "trials": spec.budget.trials,
        "max_epochs": spec.budget.max_epochs,
        "seed": spec.seed,
        "metric": spec.search.metric,
        "mode": spec.search.mode,
        **{f"fixed.{k}": v for k, v in spec.model.fixed.items()},
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "study.yaml")
    return run_id, optuna_study


@dataclass
class _Context:
    """What every phase of one study invocation shares."""

    workspace: Workspace
    client: Any
    experiment_id: str
    parent_run_id: str
    optuna_study: str
    address: str | None
    mirror: str | None
    progress: Any
    spec: StudySpec


def run_study(
    spec: StudySpec,
    workspace: Workspace,
    *,
    address: str | None = None,
    mirror: str | None = None,
    progress=None,
) -> StudyResult:
    """Run `spec` to completion and return where everything was recorded.

    With `compare_with`, every compared family is then tuned with the same budget (unless
    `comparison.tune` is false), and the best configuration of every family is retrained on
    each of K outer region folds for S seeds; the paired comparison goes to the parent run.
    """
    mirror_path = data_mirror(mirror)
    mirror = str(mirror_path) if mirror_path else None
    preflight(spec, mirror)
    ensure_writable(workspace.root)
    client = connect(workspace)

    experiment_id = open_experiment(client, workspace, spec)
    parent_run_id, optuna_study = start_parent_run(client, experiment_id, spec)
    context = _Context(workspace, client, experiment_id, parent_run_id, optuna_study, address, mirror, progress, spec)
    try:
        results = _search(spec, context)
        comparison = _compare(spec, context, results) if spec.compare_with else None
    except KeyboardInterrupt:
        client.set_terminated(parent_run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    return _summarise(spec, workspace, client, experiment_id, parent_run_id, optuna_study, comparison)


def _ray(context: _Context):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # One checkpoint kept per trial forces a state snapshot per checkpoint; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    if not ray.is_initialized():
        ray.init(
            address=context.address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    return ray


def _run_config(spec: StudySpec, context: _Context, phase: str, logger):
    from ray import tune

    callbacks = [logger] + ([context.progress] if context.progress is not None else [])
    return tune.RunConfig(
        name=f"{spec.name}-{context.parent_run_id[:8]}-{phase}",
        storage_path=str(context.workspace.ray_storage),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def _search(spec: StudySpec, context: _Context, optuna_study: str | None = None):
    """Tune `spec.model.family` over `spec.search.space`: Optuna TPE suggests, ASHA stops early."""
    _ray(context)
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from xattn.tuning.search_space import optuna_space
    from xattn.tuning.trainable import trainable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(
        space=optuna_space(spec.searched),
        metric=f"best_{spec.search.metric}",
        mode=spec.search.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=optuna_study or context.optuna_study,
        storage=optuna.storages.RDBStorage(context.workspace.optuna_storage),
    )
    if spec.search.scheduler == "asha":
        scheduler = ASHAScheduler(
            metric=spec.search.metric,
            mode=spec.search.mode,
            max_t=spec.budget.max_epochs,
            grace_period=min(spec.search.grace_period, spec.budget.max_epochs),
            reduction_factor=spec.search.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()

    def optuna_number(trial_id: str) -> int | None:
        trial = searcher._ot_trials.get(trial_id)  # Ray keeps no public map from trial to Optuna trial
        return trial.number if trial is not None else None

    logger = MlflowTrialLogger(
        context.client, context.experiment_id, context.parent_run_id, optuna_number, spec.model.family,
        role="search", fold=spec.data.split.fold, seed=spec.seed,
    )  # fmt: skip
    if context.progress is not None and context.spec.compare_with:
        context.progress.start_phase(f"search {spec.model.family}", spec.budget.trials, spec.search.metric, spec.search.mode)
    tuner = tune.Tuner(
        trainable(spec, context.mirror),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.budget.trials,
            max_concurrent_trials=spec.budget.max_concurrent,
        ),
        run_config=_run_config(spec, context, f"search-{spec.model.family}", logger),
    )
    return tuner.fit()


def _best_config(spec: StudySpec, results) -> dict[str, Any]:
    metric = f"best_{spec.search.metric}"
    finished = [r for r in results if r.error is None and r.metrics and metric in r.metrics]
    if not finished:
        return {}
    pick = min if spec.search.mode == "min" else max
    return dict(pick(finished, key=lambda r: r.metrics[metric]).config)


def _final(spec: StudySpec, config: dict[str, Any], comparison, context: _Context) -> None:
    """Retrain one configuration on every outer fold for every seed (identical across families)."""
    _ray(context)
    from ray import tune

    from xattn.tuning.trainable import trainable

    final = spec.model_copy(deep=True)
    final.data.split = final.data.split.model_copy(update={"folds": comparison.folds, "fold": 0})
    seeds = [spec.seed + offset for offset in range(comparison.seeds)]
    logger = MlflowTrialLogger(
        context.client, context.experiment_id, context.parent_run_id, lambda _: None, spec.model.family,
        role="final", fold=None, seed=None,
    )  # fmt: skip
    if context.progress is not None:
        total = comparison.folds * comparison.seeds
        context.progress.start_phase(f"final {spec.model.family} ({comparison.folds} folds x {comparison.seeds} seeds)", total, "test_pearson", "max")
    tuner = tune.Tuner(
        trainable(final, context.mirror),
        param_space={**config, "_fold": tune.grid_search(list(range(comparison.folds))), "_seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.budget.max_concurrent),
        run_config=_run_config(spec, context, f"final-{spec.model.family}", logger),
    )
    tuner.fit()


def _compare(spec: StudySpec, context: _Context, main_results) -> dict[str, Any]:
    from xattn.tuning.comparison import compare_runs, log_comparison

    configs = {spec.model.family: _best_config(spec, main_results)}
    for family in spec.compare_with:
        family_spec = spec.for_family(family)
        if spec.comparison.tune:
            results = _search(family_spec, context, optuna_study=f"{context.optuna_study}-{family}")
            configs[family] = _best_config(family_spec, results)
        else:
            configs[family] = {}
    for family, config in configs.items():
        _final(spec.for_family(family), config, spec.comparison, context)
    parent = context.client.get_run(context.parent_run_id)
    finals = [run for run in child_runs(context.client, parent) if run.data.tags.get(ROLE_TAG) == "final"]
    comparison = compare_runs(finals, reference=spec.model.family)
    log_comparison(context.client, context.parent_run_id, comparison)
    return comparison


def _summarise(spec, workspace, client, experiment_id, parent_run_id, optuna_study, comparison) -> StudyResult:
    parent = client.get_run(parent_run_id)
    children = child_runs(client, parent)
    counts: dict[str, int] = {}
    for run in children:
        if run.data.tags.get("xattn.family") == spec.model.family and run.data.tags.get(ROLE_TAG) == "search":
            counts[run.info.status.lower()] = counts.get(run.info.status.lower(), 0) + 1
    rows = [
        {
            "run_id": run.info.run_id,
            "family": run.data.tags.get("xattn.family"),
            "role": run.data.tags.get(ROLE_TAG),
            "fold": run.data.tags.get("xattn.fold"),
            "seed": run.data.tags.get("xattn.seed"),
            "trial": run.data.tags.get("mlflow.runName"),
            "ray_trial_id": run.data.tags.get("xattn.ray_trial_id"),
            "optuna_trial_number": run.data.tags.get("xattn.optuna_trial_number"),
            "status": run.info.status,
            **{f"param.{k}": v for k, v in run.data.params.items()},
            **run.data.metrics,
        }
        for run in children
    ]
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    client.log_text(parent_run_id, buffer.getvalue(), "trials.csv")

    best = None
    try:
        run = best_child(client, parent, family=spec.model.family)
    except Exception:  # noqa: BLE001 - no finished trial: reported through the counts
        run = None
    if run is not None:
        best = {
            "trial_id": run.data.tags.get("xattn.ray_trial_id"),
            "optuna_trial_number": run.data.tags.get("xattn.optuna_trial_number"),
            "run_id": run.info.run_id,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
        for key, value in run.data.params.items():
            client.log_param(parent_run_id, f"best.{key}", value)
        for key, value in run.data.metrics.items():
            client.log_metric(parent_run_id, f"best.{key}", value)
        client.set_tag(parent_run_id, "xattn.best_run_id", run.info.run_id)
    client.set_terminated(parent_run_id, "FINISHED" if best is not None else "FAILED")
    return StudyResult(
        name=spec.name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        optuna_study=optuna_study,
        tracking_uri=workspace.tracking_uri,
        trial_counts=counts,
        best=best,
        comparison=comparison,
    )
