"""Run a study: validate, preflight the data, then Ray Tune + Optuna, recorded in MLflow.

Everything that can be wrong with the user's input is found before Ray starts or any store is
written; from then on the driver is the only writer of MLflow.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from xattn.data import data_mirror
from xattn.errors import StoreError, StudyNotFound, first_line
from xattn.tracking.callback import MlflowTrialLogger
from xattn.tracking.store import (
    Workspace,
    check_optuna_storage,
    check_tracking_store,
    check_writable,
    connect,
    masked,
)
from xattn.tracking.runs import (
    best_child,
    child_runs,
    driver_alive,
    driver_tag,
    find_parent_run,
    stopped_early_at,
    unfinished_parent_run,
)
from xattn.tuning.cluster import check_ray_address, check_trial_fits, ray_init_error
from xattn.tuning.spec import StudySpec, spec_from_yaml
from xattn.tuning.trial import preflight
from xattn.tracking import tags


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
    failures: dict[str, int] = field(default_factory=dict)  # failure reason -> failed trials
    stopped_early: int = 0  # finished search trials the scheduler (ASHA) stopped before max_epochs
    # family -> Spearman rank correlation of its search trials' validation metric with test r
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_stores(workspace: Workspace):
    """Connect to both stores, creating their tables if new, one process at a time: two
    studies starting at once on a new workspace would otherwise both create the schema."""
    import optuna
    from filelock import FileLock

    with FileLock(workspace.root / ".stores.lock"):
        client = connect(workspace)
        optuna.storages.RDBStorage(workspace.optuna_storage)
    return client


# The experiment kind MLflow 3 records per experiment: "custom_model_development" is the one
# its UI labels "Machine learning" (runs, not traces). 3.17.2's UI picks its view from a
# per-browser switch instead (dashboards/README.md); the tag is what its kind selector writes
# and what it reads with that switch turned off.


def open_experiment(client, workspace: Workspace, spec: StudySpec) -> str:
    run_tags = {tags.STUDY: spec.name, tags.EXPERIMENT_KIND: tags.MODEL_TRAINING_KIND}
    if spec.description:
        run_tags[tags.NOTE] = spec.description
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return client.create_experiment(spec.name, artifact_location=workspace.artifact_location(spec.name), tags=run_tags)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    # An experiment from before these run_tags gets them; a kind chosen in the UI is kept, while
    # the description follows the spec that runs now.
    for key, value in run_tags.items():
        if experiment.tags.get(key) != value and (key != tags.EXPERIMENT_KIND or key not in experiment.tags):
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def start_parent_run(client, experiment_id: str, spec: StudySpec) -> tuple[str, str]:
    """Create the study run; return its id and the name of its Optuna study."""
    run_tags = {
        tags.ROLE: "study",
        tags.STUDY: spec.name,
        tags.FAMILY: spec.model.family,
        tags.METRIC: f"best_{spec.search.metric}",
        tags.MODE: spec.search.mode,
        tags.RUN_NAME: f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags.DRIVER: driver_tag(),
    }
    if spec.description:
        run_tags[tags.NOTE] = spec.description
    run = client.create_run(experiment_id, tags=run_tags)
    run_id = run.info.run_id
    optuna_study = f"{spec.name}-{run_id[:8]}"
    client.set_tag(run_id, tags.OPTUNA_STUDY, optuna_study)
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




def stored_spec(client, parent) -> StudySpec:
    """The spec a study run was started with (its study.yaml artifact)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(parent.info.run_id, "study.yaml", folder)
        return spec_from_yaml(Path(path).read_text())


def reopen_parent_run(client, parent, spec: StudySpec) -> tuple[str, str]:
    """Take over an unfinished study run of the same spec; return its id and Optuna study."""
    run_id = parent.info.run_id
    if stored_spec(client, parent) != spec:
        raise StoreError(
            f"study {spec.name!r} has an unfinished run {run_id} of a different spec: "
            f"`xattn study resume {spec.name}` continues it, --name NEW starts another study"
        )
    driver = parent.data.tags.get(tags.DRIVER)
    if driver_alive(driver):
        raise StoreError(f"study {spec.name!r} is running now (process {driver}): wait for it or stop it first")
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tags.DRIVER, driver_tag())
    if spec.description and tags.NOTE not in parent.data.tags:  # a run started before descriptions were recorded
        client.set_tag(run_id, tags.NOTE, spec.description)
    client.set_tag(run_id, tags.RESUMED, str(int(parent.data.tags.get(tags.RESUMED, "0")) + 1))
    return run_id, parent.data.tags[tags.OPTUNA_STUDY]


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
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> validation_test_agreement
    search_trials: list[dict[str, float]] = field(default_factory=list)  # every family's, for "all"


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

    If the newest run of this study never completed (killed, interrupted, crashed), it is
    resumed: every phase's Ray Tune experiment is restored, finished trials are kept and
    unfinished ones continue from their last checkpoint, logging to the same child runs.
    """
    mirror_path = data_mirror(mirror)
    mirror = str(mirror_path) if mirror_path else None
    preflight(spec, mirror)
    check_optuna_storage(workspace.optuna_storage)  # reads only
    check_tracking_store(workspace)  # a new database gets MLflow's tables here, as it would anyway
    check_ray_address(address)
    check_writable(workspace)
    # A cluster that cannot be joined, or that cannot fit a trial, stops the study before
    # anything is written.
    ray = _ray(address)
    check_trial_fits(spec.resources.cpus, spec.resources.gpus, ray.cluster_resources(), address)
    workspace.root.mkdir(parents=True, exist_ok=True)
    client = open_stores(workspace)

    experiment_id = open_experiment(client, workspace, spec)
    unfinished = unfinished_parent_run(client, experiment_id)
    if unfinished is not None:
        parent_run_id, optuna_study = reopen_parent_run(client, unfinished, spec)
        if progress is not None:
            done = sum(run.info.status in ("FINISHED", "FAILED") for run in child_runs(client, unfinished))
            progress.console.print(f"resuming study run {parent_run_id}: {done} finished trials are kept", highlight=False)
    else:
        parent_run_id, optuna_study = start_parent_run(client, experiment_id, spec)
    context = _Context(workspace, client, experiment_id, parent_run_id, optuna_study, address, mirror, progress, spec)
    try:
        results = _search(spec, context)
        comparison = _compare(spec, context, results) if spec.compares else None
    except KeyboardInterrupt:
        client.set_terminated(parent_run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    result = _summarise(spec, workspace, client, experiment_id, parent_run_id, optuna_study, comparison, mirror)
    result.agreement = context.agreement
    return result


def resume_study(name: str, workspace: Workspace, **kwargs: Any) -> StudyResult:
    """Continue the unfinished run of study `name` with the spec it was started with."""
    database = workspace.tracking_uri.removeprefix("sqlite:///").split("?")[0]
    if database != workspace.tracking_uri and not Path(database).exists():
        raise StudyNotFound(f"no tracking store at {database}: nothing to resume (is --workspace right?)")
    client = connect(workspace)
    newest = find_parent_run(client, name)  # no such study: one line naming the studies there
    parent = unfinished_parent_run(client, newest.info.experiment_id)
    if parent is None:
        raise StudyNotFound(
            f"the newest run of study {name!r} ({newest.info.run_id}) finished: nothing to resume; "
            f"`xattn study run SPEC` starts a new run"
        )
    spec = stored_spec(client, parent)
    progress = kwargs.get("progress")
    if progress is not None:
        progress.console.print(f"resuming study {name}; tracking {masked(workspace.tracking_uri)}", highlight=False)
        progress.total, progress.metric, progress.mode = spec.search_trials, spec.search.metric, spec.search.mode
        progress.title, progress.max_epochs = f"search {spec.model.family}", spec.budget.max_epochs
    return run_study(spec, workspace, **kwargs)


def _ray(address: str | None):
    """Ray, joined or started once per process; run_study calls this before it writes anything."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save the experiment state every second (not every 10 s or more): a driver killed with
    # SIGKILL then loses at most a second of bookkeeping, so a resume repeats almost nothing.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C raises KeyboardInterrupt here at once (the study run is then marked KILLED)
    # instead of Tune swallowing it and returning a partial result as if the phase were done.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    import ray

    from xattn import logs

    logs.adopt_library_loggers()
    if not ray.is_initialized():
        # Ray's core installs a C handler for SIGTERM that prints a stack and kills the driver;
        # the caller's (the CLI marks the study run KILLED and says how to resume) comes back.
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            with logs.native_stderr_to_log("ray"):
                ray.init(
                    # "local": a new instance of our own, even where a `ray start` cluster (or a
                    # stale record of one in /tmp/ray) would make ray.init() try to join it.
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=not logs.configured(),  # the CLI sends Ray's logs to the workspace's log
                )
        except ConnectionError as error:
            raise ray_init_error(address, error) from None
        finally:
            if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
    return ray


def _run_config(spec: StudySpec, context: _Context, name: str, logger):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(context.workspace.ray_storage),
        callbacks=_callbacks(context, logger),
        verbose=0,
        # Every checkpoint is kept while the phase runs: with num_to_keep, Tune deletes a trial's
        # older checkpoint before it saves the experiment state that stops pointing at it, so a
        # SIGKILL in between leaves a resume restoring a deleted checkpoint. A finished phase
        # prunes them (_prune_superseded_checkpoints).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
    )


def _callbacks(context: _Context, logger) -> list:
    return [logger] + ([context.progress] if context.progress is not None else [])


def _fit_phase(spec: StudySpec, context: _Context, role: str, trainable, make_logger, *, tune_config, param_space=None, arm=None):
    """Run one phase's Ray Tune experiment, or resume it where an earlier driver left it.

    `make_logger(searcher)` builds the MLflow callback for the phase's (possibly restored)
    searcher. Returns the ResultGrid; raises KeyboardInterrupt when Tune caught Ctrl-C.
    """
    from ray import tune

    arm = arm or spec.model.family
    name = f"{spec.name}-{context.parent_run_id[:8]}-{role}-{arm.replace(':', '-')}"
    path = context.workspace.ray_storage / name
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=False, param_space=param_space
        )
        # Tune restores its callbacks from a pickle of the old driver's; give it live ones,
        # tied to the restored searcher (no public API: ray-project/ray#41364).
        internal = tuner._local_tuner
        searcher = internal._tune_config.search_alg
        internal.get_run_config().callbacks = _callbacks(context, make_logger(searcher))
    else:
        run_config = _run_config(spec, context, name, make_logger(tune_config.search_alg))
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results):
        raise KeyboardInterrupt  # Tune caught a stop signal (SIGUSR1), saved its state and returned early
    _close_orphaned_runs(context, role, spec.model.family, arm)
    _prune_superseded_checkpoints(path)
    return results


def _prune_superseded_checkpoints(experiment: Path) -> None:
    """Keep each trial's latest checkpoint only, once its phase has finished: no trial of it
    runs again, and the latest is the one its MLflow run logged and Tune's state names."""
    for trial in (d for d in experiment.iterdir() if d.is_dir()):
        numbered = {d: d.name.removeprefix("checkpoint_") for d in trial.glob("checkpoint_*")}
        checkpoints = sorted((d for d, index in numbered.items() if index.isdigit()), key=lambda d: int(numbered[d]))
        for superseded in checkpoints[:-1]:
            shutil.rmtree(superseded, ignore_errors=True)


def _close_orphaned_runs(context: _Context, role: str, family: str, arm: str) -> None:
    """Child runs of a finished phase still RUNNING belong to trials a killed driver started
    but Tune never recorded; Tune ran those again as new trials. Mark them, keep them."""
    parent = context.client.get_run(context.parent_run_id)
    for run in child_runs(context.client, parent):
        run_tags = run.data.tags
        same_arm = run_tags.get(tags.ARM, run_tags.get(tags.FAMILY)) == arm
        if run.info.status == "RUNNING" and run_tags.get(tags.ROLE) == role and run_tags.get(tags.FAMILY) == family and same_arm:
            context.client.set_tag(run.info.run_id, tags.ORPHANED, "the driver was killed before Ray Tune recorded this trial; it ran again as another trial")
            context.client.set_terminated(run.info.run_id, "KILLED")


def _fail_orphaned_optuna_trials(storage: str, study_name: str) -> None:
    """Optuna trials asked for by a killed driver's searcher but never told a result."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _search(spec: StudySpec, context: _Context, optuna_study: str | None = None):
    """Tune `spec.model.family` over `spec.search.space`: Optuna TPE suggests, ASHA stops early."""
    _ray(context.address)
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import Repeater

    from xattn.tuning.searcher import optuna_space
    from xattn.tuning.searcher import ResumableOptunaSearch
    from xattn.tuning.trainable import trainable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A resumed trial re-reports the epochs after its checkpoint; Optuna keeps the first value.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step", category=UserWarning)
    study_name = optuna_study or context.optuna_study
    inner = spec.data.split.inner_folds
    searcher = ResumableOptunaSearch(
        space=optuna_space(spec.searched),
        metric=f"best_{spec.search.metric}",
        mode=spec.search.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(context.workspace.optuna_storage),
        # What an optuna-dashboard reader needs to find the same trials in MLflow.
        user_attrs={
            "xattn_study": context.spec.name,
            "xattn_family": spec.model.family,
            "mlflow_experiment_id": context.experiment_id,
            "mlflow_parent_run_id": context.parent_run_id,
            "mlflow_tracking_uri": masked(context.workspace.tracking_uri),
        },
    )
    if inner:
        # Each suggestion runs once per inner fold; Optuna is told the mean of their results.
        searcher = Repeater(searcher, repeat=inner, set_index=True)
    if spec.search.scheduler == "asha" and not inner:
        scheduler = ASHAScheduler(
            # The best epoch so far, as Optuna and the summary rank trials: a noisy last epoch
            # at a rung must not stop a trial that already did well.
            metric=f"best_{spec.search.metric}",
            mode=spec.search.mode,
            max_t=spec.budget.max_epochs,
            grace_period=min(spec.search.grace_period, spec.budget.max_epochs),
            reduction_factor=spec.search.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()

    def make_logger(searcher) -> MlflowTrialLogger:
        def optuna_number(trial_id: str) -> int | None:
            optuna_search = searcher
            if isinstance(searcher, Repeater):  # a repeat belongs to its group's first trial
                group = searcher._trial_id_to_group.get(trial_id)
                trial_id = group.primary_trial_id if group is not None else trial_id
                optuna_search = searcher.searcher
            trial = optuna_search._ot_trials.get(trial_id)  # Ray keeps no public map from trial to Optuna trial
            return trial.number if trial is not None else None

        return MlflowTrialLogger(
            context.client, context.experiment_id, context.parent_run_id, optuna_number, spec.model.family,
            role="search", fold=spec.data.split.fold, seed=spec.seed, fixed=spec.trial_params({}),
        )  # fmt: skip

    if context.progress is not None and context.spec.compares:
        context.progress.start_phase(f"search {spec.model.family}", spec.search_trials, spec.search.metric, spec.search.mode)
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=spec.search_trials,
        max_concurrent_trials=spec.budget.max_concurrent,
        reuse_actors=True,  # a new trial in a warm worker: no process start, no torch import
    )
    results = _fit_phase(spec, context, "search", trainable(spec, context.mirror), make_logger, tune_config=tune_config)
    _fail_orphaned_optuna_trials(context.workspace.optuna_storage, study_name)
    _log_agreement(spec, context, results)
    return results


def _log_agreement(spec: StudySpec, context: _Context, results) -> None:
    """Log to the study run how well the search's validation metric ranked its trials by test r."""
    trials = [_mean_metrics(runs) for _, runs in _configurations(results)]
    own = spec.model.family == context.spec.model.family
    _record_agreement(context, "search." if own else f"search.{spec.model.family}.", spec.model.family, trials)
    if context.spec.compare_with:
        # Across every family's trials too: the study as a whole selects on this signal.
        context.search_trials.extend(trials)
        _record_agreement(context, "search.all.", ALL_FAMILIES, context.search_trials)


ALL_FAMILIES = "all"  # the key of the agreement over every family's search trials


def _record_agreement(context: _Context, prefix: str, key: str, trials: list[dict[str, float]]) -> None:
    from xattn.tuning.comparison import validation_test_agreement

    agreement = validation_test_agreement(trials, context.spec.search.metric, context.spec.search.mode)
    for name in ("spearman", "p_value", "n_trials"):
        value = float(agreement[name])
        if math.isfinite(value):
            context.client.log_metric(context.parent_run_id, f"{prefix}val_test_{name}", value)
    context.agreement[key] = agreement


def _configurations(results) -> list[tuple[dict[str, Any], list[dict[str, float]]]]:
    """The finished trials of a search grouped by configuration: one group per trial, or per
    suggestion with all its inner folds when the spec asks for inner folds."""
    from xattn.tuning.trial import INNER_FOLD

    groups: dict[str, tuple[dict[str, Any], list[dict[str, float]]]] = {}
    for result in results:
        if result.error is None and result.metrics:
            config = {k: v for k, v in result.config.items() if k != INNER_FOLD}
            key = repr(sorted(config.items())) if INNER_FOLD in result.config else result.metrics.get("trial_id", id(result))
            groups.setdefault(str(key), (config, []))[1].append(dict(result.metrics))
    return list(groups.values())


def _mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(k for k, v in run.items() if isinstance(v, (int, float))) for run in runs))
    return {k: sum(float(run[k]) for run in runs) / len(runs) for k in keys}


def _best_config(spec: StudySpec, results) -> dict[str, Any]:
    metric = f"best_{spec.search.metric}"
    scored = [(config, _mean_metrics(runs)) for config, runs in _configurations(results)]
    scored = [(config, metrics) for config, metrics in scored if metric in metrics]
    if not scored:
        return {}
    pick = min if spec.search.mode == "min" else max
    return dict(pick(scored, key=lambda item: item[1][metric])[0])


def _final(
    spec: StudySpec, config: dict[str, Any], comparison, context: _Context, arm: str | None = None, *,
    role: str = "final", extra_space: dict[str, Any] | None = None, runs_per_cell: int = 1, title: str | None = None,
) -> None:
    """Retrain one configuration on every outer fold for every seed (identical across arms).

    The null phase (xattn.tuning.nulls) runs the same grid with `role` "null" and the null
    draws in `extra_space` (`runs_per_cell` of them per fold and seed)."""
    _ray(context.address)
    from ray import tune

    from xattn.tuning.trainable import trainable

    arm = arm or spec.model.family
    final = spec.model_copy(deep=True)
    final.data.split = final.data.split.model_copy(update={"folds": comparison.folds, "fold": 0})
    seeds = [spec.seed + offset for offset in range(comparison.seeds)]
    def make_logger(_searcher) -> MlflowTrialLogger:
        return MlflowTrialLogger(
            context.client, context.experiment_id, context.parent_run_id, lambda _: None, spec.model.family,
            role=role, fold=None, seed=None, fixed=spec.trial_params({}), arm=arm,
        )  # fmt: skip

    if context.progress is not None:
        total = comparison.folds * comparison.seeds * runs_per_cell
        title = title or f"final {arm} ({comparison.folds} folds x {comparison.seeds} seeds)"
        context.progress.start_phase(title, total, "test_pearson", "max")
    grid = {"_fold": tune.grid_search(list(range(comparison.folds))), "_seed": tune.grid_search(seeds)}
    _fit_phase(
        spec, context, role, trainable(final, context.mirror), make_logger, arm=arm,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.budget.max_concurrent, reuse_actors=True),
        param_space={**config, **grid, **(extra_space or {})},
    )  # fmt: skip


def _compare(spec: StudySpec, context: _Context, main_results) -> dict[str, Any]:
    """Tune the compared families, then retrain every arm (each family's best configuration,
    and each variant: the study's best with the variant's overrides) on the same folds and seeds."""
    from xattn.tuning.comparison import compare_runs, log_comparison, variant_arm
    from xattn.tuning.nulls import run_nulls

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
    best = configs[spec.model.family]
    for variant, overrides in spec.comparison.variants.items():
        config = {k: v for k, v in best.items() if k not in overrides}  # the spec's fixed overrides now hold them
        _final(spec.for_variant(variant), config, spec.comparison, context, arm=variant_arm(spec.model.family, variant))
    parent = context.client.get_run(context.parent_run_id)
    finals = [run for run in child_runs(context.client, parent) if run.data.tags.get(tags.ROLE) == "final"]
    comparison = compare_runs(finals, reference=spec.comparison_reference)
    for entry in comparison["families"]:
        agreement = context.agreement.get(entry["family"], {})
        entry["search_val_test_spearman"] = agreement.get("spearman", math.nan)
        entry["search_trials"] = agreement.get("n_trials", 0)
    comparison["search_agreement"] = context.agreement.get(ALL_FAMILIES)
    if spec.comparison.nulls is not None:
        run_nulls(spec, context, configs, comparison)
    log_comparison(context.client, context.parent_run_id, comparison)
    return comparison


def _register(client, spec: StudySpec, parent, run) -> dict[str, Any]:
    """Register the best trial as the study's model, alias `best`; a store without a model
    registry loses only that (the study's results are all in its runs)."""
    from mlflow.exceptions import MlflowException

    from xattn.export import export_manifest
    from xattn.tracking.model_registry import BEST_ALIAS, register_best

    try:
        manifest = export_manifest(client, spec.name, parent, run)
        version = register_best(client, spec.name, parent, run, manifest, description=spec.description)
    except (MlflowException, OSError) as error:
        reason = first_line(error)
        client.set_tag(parent.info.run_id, tags.REGISTRY_ERROR, reason)
        warnings.warn(f"the best trial was not registered as model {spec.name!r}: {reason}", stacklevel=2)
        return {"model_version": None, "model_uri": None}
    # The registry answers int or str depending on its backend; scripts get one type.
    number = str(version.version)
    client.set_tag(parent.info.run_id, tags.MODEL_VERSION, number)
    return {"model_version": number, "model_uri": f"models:/{spec.name}@{BEST_ALIAS}"}


def _log_attention(client, run_id: str, mirror: str | None) -> None:
    """The best trial's attention maps, logged to its run; like the figures, never fails a study."""
    from xattn.reporting.attention import log_run_attention

    try:
        log_run_attention(client, run_id, mirror=mirror)
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"attention maps not logged to run {run_id}: {first_line(error)}", stacklevel=2)


FIGURES_ENV = "XATTN_FIGURES"  # "0": no figures at the end of a study (the test suite's default)


def _summarise(spec, workspace, client, experiment_id, parent_run_id, optuna_study, comparison, mirror=None) -> StudyResult:
    parent = client.get_run(parent_run_id)
    children = child_runs(client, parent)
    counts: dict[str, int] = {}
    failures: dict[str, int] = {}
    stopped_early = 0
    for run in children:
        run_tags = run.data.tags
        if run_tags.get(tags.FAMILY) == spec.model.family and run_tags.get(tags.ROLE) == "search" and tags.ORPHANED not in run_tags:
            counts[run.info.status.lower()] = counts.get(run.info.status.lower(), 0) + 1
            if run.info.status == "FINISHED" and stopped_early_at(run, spec.budget.max_epochs) is not None:
                stopped_early += 1
            if run.info.status == "FAILED":
                reason = run_tags.get(tags.FAILURE, "no reason recorded")
                failures[reason] = failures.get(reason, 0) + 1
    rows = [
        {
            "run_id": run.info.run_id,
            "family": run.data.tags.get(tags.FAMILY),
            "role": run.data.tags.get(tags.ROLE),
            "fold": run.data.tags.get(tags.FOLD),
            "seed": run.data.tags.get(tags.SEED),
            "trial": run.data.tags.get(tags.RUN_NAME),
            "ray_trial_id": run.data.tags.get(tags.RAY_TRIAL_ID),
            "optuna_trial_number": run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
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
            "trial_id": run.data.tags.get(tags.RAY_TRIAL_ID),
            "optuna_trial_number": run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
            "run_id": run.info.run_id,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
        for key, value in run.data.params.items():
            client.log_param(parent_run_id, f"best.{key}", value)
        for key, value in run.data.metrics.items():
            client.log_metric(parent_run_id, f"best.{key}", value)
        client.set_tag(parent_run_id, tags.BEST_RUN_ID, run.info.run_id)
        best.update(_register(client, spec, parent, run))
    if os.environ.get(FIGURES_ENV, "1") != "0":
        from xattn.reporting import log_study_figures

        log_study_figures(client, parent_run_id, workspace.optuna_storage, mirror=mirror)
        if run is not None and run.data.tags.get(tags.FAMILY) == "cross_attention":
            _log_attention(client, run.info.run_id, mirror)
    client.set_tag(parent_run_id, tags.COMPLETED, "true")
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
        failures=failures,
        stopped_early=stopped_early,
    )
