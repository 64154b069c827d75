"""The phases of a study, each one Ray Tune experiment per family or arm: search, finals, the comparison, nulls.

Every phase resumes where a killed driver left it: its Tune experiment is restored, finished
trials are kept, unfinished ones continue from their last checkpoint and log to the same
MLflow child runs (MlflowTrialLogger, the driver's only writer of trial runs).
"""

from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xattn.passwords import mask
from xattn.tracking import parent_run, tags
from xattn.tracking.callback import MlflowTrialLogger
from xattn.tracking.runs import arm_of, child_runs, copy_run, stopped_early_at
from xattn.tracking.store import Workspace
from xattn.tuning import selection
from xattn.tuning.cluster import init_ray, trials_at_once
from xattn.tuning.spec import StudySpec


@dataclass
class Context:
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
    agreement: selection.Agreement
    provenance: dict[str, str] = field(default_factory=dict)  # the tags of what produced the runs


def search(spec: StudySpec, context: Context, optuna_study: str | None = None, *, whole: str | None = None):
    """Tune `spec.model.family` over `spec.search.space` on fold `spec.data.split.fold` (or, with
    `whole` "selection", on every region but a validation patch): Optuna TPE suggests, ASHA
    stops early. Returns the ResultGrid."""
    init_ray(context.address)
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import Repeater

    from xattn.tuning.searcher import ResumableOptunaSearch, optuna_space
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
        epoch_metric=spec.search.metric,
        max_epochs=spec.budget.max_epochs,
        # What an optuna-dashboard reader needs to find the same trials in MLflow.
        user_attrs={
            "xattn_study": context.spec.name,
            "xattn_family": spec.model.family,
            "mlflow_experiment_id": context.experiment_id,
            "mlflow_parent_run_id": context.parent_run_id,
            "mlflow_tracking_uri": mask(context.workspace.tracking_uri),  # for a client to open: as given
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
            role="search", fold=tags.WHOLE_DATA_FOLD if whole else spec.data.split.fold, seed=spec.seed,
            fixed=spec.trial_params({}), configuration=selection.configuration_key, provenance=context.provenance,
        )  # fmt: skip

    part = "all regions" if whole else f"fold {spec.data.split.fold + 1}/{spec.data.split.folds}"
    if context.progress is not None and context.spec.compares:
        context.progress.start_phase(
            f"search {spec.model.family} ({part})", spec.search_trials, spec.search.metric, spec.search.mode
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=spec.search_trials,
        max_concurrent_trials=_trials_at_once(spec),
        reuse_actors=True,  # a new trial in a warm worker: no process start, no torch import
    )
    name = "all" if whole else f"fold{spec.data.split.fold}"
    results = fit_phase(
        spec, context, "search", trainable(spec, context.mirror, whole), make_logger, tune_config=tune_config, part=name
    )
    _fail_orphaned_optuna_trials(context.workspace.optuna_storage, study_name)
    _log_agreement(spec, context, results)
    return results


def _trials_at_once(spec: StudySpec) -> int:
    import ray

    resources = spec.resources
    return trials_at_once(resources.cpus, resources.gpus, ray.cluster_resources(), spec.budget.max_concurrent)


def _log_agreement(spec: StudySpec, context: Context, results) -> None:
    """Log to the study run how well the search's validation metric ranked its trials by test r."""
    own = spec.model.family == context.spec.model.family
    prefix = "search." if own else f"search.{spec.model.family}."
    logged = context.agreement.add(spec.model.family, results, prefix=prefix, pooled=bool(context.spec.compare_with))
    for prefix, agreement in logged.items():
        for name in ("spearman", "spearman_within_folds", "p_value", "n_trials"):
            value = float(agreement.get(name, math.nan))
            if math.isfinite(value):
                context.client.log_metric(context.parent_run_id, f"{prefix}val_test_{name}", value)


def finals(
    spec: StudySpec,
    configs: dict[int, dict[str, Any]],
    comparison,
    context: Context,
    arm: str | None = None,
    *,
    role: str = "final",
    extra_space: dict[str, Any] | None = None,
    runs_per_cell: int = 1,
    title: str | None = None,
    null_of=None,
    winners: dict[int, str] | None = None,
) -> None:
    """Retrain each outer fold's selected configuration (`configs[fold]`) on that fold for every
    seed (folds and seeds identical across arms). A fold's search winner (`winners[fold]`, its
    Ray trial id) that trained to its own end is that fold's final for the first seed: same
    split, seed, configuration and budget. It is recorded as a final run, not trained again.

    The null phase (`nulls`) runs the same grid with `role` "null" and the null draws in
    `extra_space` (`runs_per_cell` of them per fold and seed)."""
    init_ray(context.address)
    from ray import tune

    from xattn.tuning.trainable import trainable
    from xattn.tuning.trial import CELL, SELECTED, own_configuration

    arm = arm or spec.model.family
    final = outer_fold(spec, 0, comparison.folds)  # each trial names its own fold (`_fold`)
    seeds = [spec.seed + offset for offset in range(comparison.seeds)]

    def make_logger(_searcher) -> MlflowTrialLogger:
        return MlflowTrialLogger(
            context.client, context.experiment_id, context.parent_run_id, lambda _: None, spec.model.family,
            role=role, fold=None, seed=None, fixed=spec.trial_params({}), arm=arm, null_of=null_of,
            params_of=own_configuration, provenance=context.provenance,
        )  # fmt: skip

    reused = _record_winners_as_finals(spec, context, winners or {}, arm, seeds[0])
    cells = [[fold, seed] for fold in range(comparison.folds) for seed in seeds if (fold, seed) not in reused]
    if context.progress is not None and reused:
        context.progress.note(
            f"final {arm}: {len(reused)} of {comparison.folds} folds' search winners trained their final already "
            f"(same split, seed and budget); {len(cells)} final runs to train"
        )
    if not cells:
        return
    if context.progress is not None:
        total = len(cells) * runs_per_cell
        title = title or f"final {arm} ({comparison.folds} folds x {comparison.seeds} seeds)"
        context.progress.start_phase(title, total, "test_pearson", "max")
    grid = {
        CELL: tune.grid_search(cells),
        "_fold": tune.sample_from(lambda trial: trial.config[CELL][0]),
        "_seed": tune.sample_from(lambda trial: trial.config[CELL][1]),
    }
    fit_phase(
        spec, context, role, trainable(final, context.mirror), make_logger, arm=arm,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=_trials_at_once(spec), reuse_actors=True),
        param_space={SELECTED: {str(k): dict(v) for k, v in configs.items()}, **grid, **(extra_space or {})},
    )  # fmt: skip


def _record_winners_as_finals(
    spec: StudySpec, context: Context, winners: dict[int, str], arm: str, seed: int
) -> set[tuple[int, int]]:
    """Record each fold's search winner as its final run of `seed` where it trained exactly what
    that final would: the search's seed, to its own end (not stopped by the scheduler), with its
    checkpoint. Returns the (fold, seed) cells recorded, including those a killed driver recorded."""
    if not winners or seed != spec.seed:
        return set()
    client = context.client
    children = child_runs(client, client.get_run(context.parent_run_id))
    searched = {
        (run.data.tags.get(tags.FOLD), run.data.tags.get(tags.RAY_TRIAL_ID)): run
        for run in children
        if run.data.tags.get(tags.ROLE) == "search" and run.data.tags.get(tags.FAMILY) == spec.model.family
    }
    recorded = set()
    for run in children:
        if run.data.tags.get(tags.ROLE) == "final" and arm_of(run) == arm and tags.TRAINED_AS in run.data.tags:
            if run.info.status == "FINISHED":
                recorded.add(int(run.data.tags[tags.FOLD]))
            else:  # a killed driver's half-made copy: kept, marked, made again
                client.set_tag(run.info.run_id, tags.ORPHANED, "the driver was killed while recording this run")
                client.set_terminated(run.info.run_id, "KILLED")
    reused = set()
    for fold, trial_id in sorted(winners.items()):
        run = searched.get((str(fold), trial_id))
        if run is None or run.info.status != "FINISHED" or tags.CHECKPOINT_MISSING in run.data.tags:
            continue
        if stopped_early_at(run, spec.budget.max_epochs) is not None:
            continue
        if fold not in recorded:
            copy_run(client, run, {
                tags.PARENT_RUN: context.parent_run_id, tags.RUN_NAME: f"{arm}-final-fold{fold}-seed{seed}",
                tags.ROLE: "final", tags.FAMILY: spec.model.family, tags.ARM: arm, tags.FOLD: str(fold),
                tags.SEED: str(seed), tags.TRAINED_AS: run.info.run_id,
            })  # fmt: skip
        reused.add((fold, seed))
    return reused


def outer_fold(spec: StudySpec, fold: int, folds: int) -> StudySpec:
    """`spec` searching on outer fold `fold` of `folds`: its training and validation regions are
    that fold's non-test regions, so its test regions choose nothing."""
    folded = spec.model_copy(deep=True)
    folded.data.split = folded.data.split.model_copy(update={"folds": folds, "fold": fold})
    return folded


def select_per_fold(
    spec: StudySpec, context: Context, optuna_study: str
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Nested selection: a search of `spec` (one family of the study) on each of the study's
    outer folds, each with its own Optuna study; every fold's configuration is its own search's
    best (by validation only). Returns the configurations by fold, and by fold the Ray trial id
    of a winner that is one trial on the fold's own split (no inner folds)."""
    selected, winners = {}, {}
    folds = context.spec.comparison.folds
    for fold in range(folds):
        results = search(outer_fold(spec, fold, folds), context, optuna_study=f"{optuna_study}-fold{fold}")
        best = selection.best_of(results, spec.search.metric, spec.search.mode)
        selected[fold] = dict(best.values) if best is not None else {}
        if best is not None and not spec.data.split.inner_folds and len(best.trials) == 1:
            winners[fold] = str(best.trials[0]["trial_id"])
    return selected, winners


def compare(spec: StudySpec, context: Context) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
    """Select every family's configuration per outer fold (nested; the study's family always,
    the others when `comparison.tune`), then retrain every arm (each family's selections, and
    each variant: the study's family's selections with the variant's overrides) on the same
    folds and seeds. Returns the comparison (not yet logged: the null phase adds to it) and
    every family's configuration by fold."""
    from xattn.tuning.comparison import compare_runs, variant_arm

    folds = range(spec.comparison.folds)
    configs, winners = {}, {}
    configs[spec.model.family], winners[spec.model.family] = select_per_fold(spec, context, context.optuna_study)
    for family in spec.compare_with:
        family_spec = spec.for_family(family)
        if spec.comparison.tune:
            configs[family], winners[family] = select_per_fold(family_spec, context, f"{context.optuna_study}-{family}")
        else:
            configs[family] = {fold: {} for fold in folds}
    for family, selected in configs.items():
        finals(spec.for_family(family), selected, spec.comparison, context, winners=winners.get(family))
    for variant, overrides in spec.comparison.variants.items():
        # The spec's fixed overrides now hold the variant's values.
        selected = {
            f: {k: v for k, v in config.items() if k not in overrides}
            for f, config in configs[spec.model.family].items()
        }
        finals(
            spec.for_variant(variant), selected, spec.comparison, context, arm=variant_arm(spec.model.family, variant)
        )
    runs = child_runs(context.client, context.client.get_run(context.parent_run_id))
    comparison = compare_runs(
        [run for run in runs if run.data.tags.get(tags.ROLE) == "final"], reference=spec.comparison_reference
    )
    for entry in comparison["families"]:
        agreement = context.agreement.get(entry["family"], {})
        entry["search_val_test_spearman"] = agreement.get("spearman", math.nan)
        entry["search_val_test_spearman_within_folds"] = agreement.get("spearman_within_folds", math.nan)
        entry["search_trials"] = agreement.get("n_trials", 0)
    comparison["search_agreement"] = context.agreement.get(selection.ALL_FAMILIES)
    return comparison, configs


def _run_config(spec: StudySpec, context: Context, name: str, logger):
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


def _callbacks(context: Context, logger) -> list:
    return [logger] + ([context.progress] if context.progress is not None else [])


def fit_phase(
    spec: StudySpec, context: Context, role: str, trainable, make_logger, *, tune_config, param_space=None, arm=None,
    part: str | None = None,
):  # fmt: skip
    """Run one phase's Ray Tune experiment, or resume it where an earlier driver left it.

    `make_logger(searcher)` builds the MLflow callback for the phase's (possibly restored)
    searcher. Returns the ResultGrid; raises KeyboardInterrupt when Tune caught Ctrl-C.
    """
    from ray import tune

    arm = arm or spec.model.family
    name = f"{spec.name}-{context.parent_run_id[:8]}-{role}-{arm.replace(':', '-')}" + (f"-{part}" if part else "")
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
    parent_run.close_orphaned_runs(context.client, context.parent_run_id, role, spec.model.family, arm)
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


def _fail_orphaned_optuna_trials(storage: str, study_name: str) -> None:
    """Optuna trials asked for by a killed driver's searcher but never told a result."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
