"""Run a study: validate, preflight the data, then Ray Tune + Optuna, recorded in MLflow.

Everything that can be wrong with the user's input is found before Ray starts or any store is
written; from then on the driver is the only writer of MLflow. This module is the order of
things (checks, stores, study run, phases, summary); the phases are xattn.tuning.phases, the
study run's records xattn.tracking.parent_run.
"""

from __future__ import annotations

import os
import shlex
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xattn.data import data_mirror
from xattn.data.fingerprint import data_fingerprint
from xattn.errors import StoreError, StudyNotFound, first_line
from xattn.passwords import mask
from xattn.provenance import xattn_commit
from xattn.tracking import parent_run, tags
from xattn.tracking.provenance import provenance_tags
from xattn.tracking.runs import (
    CheckpointCache,
    best_child,
    child_runs,
    deployed_run,
    find_parent_run,
    held_out_run,
    unfinished_parent_run,
)
from xattn.tracking.runs_view import share_runs_view
from xattn.tracking.store import (
    Workspace,
    check_optuna_storage,
    check_tracking_store,
    check_writable,
    connect,
    shown,
    store_flags,
)
from xattn.tuning import null_phase, phases, selection
from xattn.tuning.cluster import check_gpu, check_ray_address, check_trial_fits, init_ray
from xattn.tuning.deploy import deploy
from xattn.tuning.spec import StudySpec, spec_from_yaml
from xattn.tuning.trial import preflight

FIGURES_ENV = "XATTN_FIGURES"  # "0": no figures at the end of a study (the test suite's default)


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
    # the key of the MLflow runs-table view of this study run's trials (xattn.tracking.runs_view)
    runs_view: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as `--json` prints it: the tracking URI's password masked."""
        return {**asdict(self), "tracking_uri": mask(self.tracking_uri)}


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
    mirror, cluster = _check(spec, workspace, address, mirror)
    client = open_stores(workspace)
    context = _open_study_run(spec, workspace, client, address, mirror, progress)
    client.set_tag(context.parent_run_id, tags.CLUSTER_RESOURCES, cluster["resources"])
    if cluster["gpu_fallback"]:
        client.set_tag(context.parent_run_id, tags.GPU_FALLBACK, cluster["gpu_fallback"])
        if progress is not None:
            progress.note(cluster["gpu_fallback"])
    try:
        if spec.compares:  # nested: every outer fold selects its own configuration, then all regions
            from xattn.tuning.comparison import log_comparison

            comparison, configs = phases.compare(spec, context)
            if spec.comparison.nulls is not None:
                null_phase.nulls(spec, context, configs, comparison)
            log_comparison(client, context.parent_run_id, comparison)
            deploy(spec, context, comparison)
        else:
            phases.search(spec, context)
            comparison = None
    except KeyboardInterrupt:
        parent_run.end(client, context.parent_run_id, "KILLED")
        raise
    except BaseException:
        parent_run.end(client, context.parent_run_id, "FAILED")
        raise
    return _summarise(spec, context, comparison)


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
    spec = spec_from_yaml(parent_run.spec_text(client, parent))
    progress = kwargs.get("progress")
    if progress is not None:
        progress.console.print(f"resuming study {name}, recorded in {shown(workspace.tracking_uri)}", highlight=False)
        progress.total, progress.metric, progress.mode = spec.search_trials, spec.search.metric, spec.search.mode
        progress.title, progress.max_epochs = f"search {spec.model.family}", spec.budget.max_epochs
    return run_study(spec, workspace, **kwargs)


def _check(
    spec: StudySpec, workspace: Workspace, address: str | None, mirror: str | None
) -> tuple[str | None, dict[str, str | None]]:
    """Everything a study needs, checked before any store is written; returns the data mirror,
    and the cluster's resources with the line that says GPU trials will train on CPU (or None)."""
    mirror_path = data_mirror(mirror)
    mirror = str(mirror_path) if mirror_path else None
    preflight(spec, mirror)
    check_optuna_storage(workspace.optuna_storage)  # reads only
    check_tracking_store(workspace)  # a new database gets MLflow's tables here, as it would anyway
    check_ray_address(address)
    check_writable(workspace)
    # A cluster that cannot be joined, or that cannot fit a trial, stops the study before
    # anything is written.
    ray = init_ray(address)
    resources = ray.cluster_resources()
    check_trial_fits(spec.resources.cpus, spec.resources.gpus, resources, address)
    fallback = check_gpu(spec.resources.cpus, spec.resources.gpus, spec.resources.require_gpu)
    shown_resources = ", ".join(f"{key} {resources[key]:g}" for key in ("CPU", "GPU", "memory") if key in resources)
    return mirror, {"resources": shown_resources, "gpu_fallback": fallback}


def open_stores(workspace: Workspace):
    """Connect to both stores, creating their tables if new, one process at a time: two
    studies starting at once on a new workspace would otherwise both create the schema."""
    import optuna
    from filelock import FileLock

    workspace.root.mkdir(parents=True, exist_ok=True)
    with FileLock(workspace.root / ".stores.lock"):
        client = connect(workspace)
        optuna.storages.RDBStorage(workspace.optuna_storage)
    return client


def study_run(spec: StudySpec) -> parent_run.StudyRun:
    """What the study run records of `spec`, and what produced it: xattn's commit (one `git`
    call per study) and package versions, the spec's hash and the hash of its data (whose files
    must exist: `_check` has read them)."""
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
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    return parent_run.StudyRun(
        name=spec.name,
        description=spec.description,
        family=spec.model.family,
        metric=spec.search.metric,
        mode=spec.search.mode,
        params=params,
        spec_yaml=spec_yaml,
        provenance=provenance_tags(xattn_commit(), spec_yaml, data_fingerprint(spec.data)),
    )


def _open_study_run(spec: StudySpec, workspace: Workspace, client, address, mirror, progress) -> phases.Context:
    """Start the study run, or take over its newest run if that never completed."""
    study = study_run(spec)
    experiment_id = parent_run.open_experiment(client, workspace, study)
    unfinished = unfinished_parent_run(client, experiment_id)
    if unfinished is not None:
        run_id = unfinished.info.run_id
        if spec_from_yaml(parent_run.spec_text(client, unfinished)) != spec:
            raise StoreError(
                f"study {spec.name!r} has an unfinished run {run_id} of a different spec: "
                f"`xattn study resume {shlex.quote(spec.name)}{store_flags(workspace, optuna=True)}` continues it, "
                "--name NEW starts another study"
            )
        parent_run_id, optuna_study = parent_run.reopen(client, unfinished, study)
        if progress is not None:
            done = sum(run.info.status in ("FINISHED", "FAILED") for run in child_runs(client, unfinished))
            progress.console.print(
                f"resuming study run {parent_run_id}: {done} finished trials are kept", highlight=False
            )
    else:
        parent_run_id, optuna_study = parent_run.start(client, experiment_id, study)
    agreement = selection.Agreement(spec.search.metric, spec.search.mode)
    return phases.Context(
        workspace,
        client,
        experiment_id,
        parent_run_id,
        optuna_study,
        address,
        mirror,
        progress,
        spec,
        agreement,
        provenance=study.provenance,
    )


def _summarise(spec: StudySpec, context: phases.Context, comparison: dict[str, Any] | None) -> StudyResult:
    """The study run's trials table, best trial, registered model and figures; then it is complete."""
    client, parent_run_id = context.client, context.parent_run_id
    parent = client.get_run(parent_run_id)
    children = child_runs(client, parent)
    counts, failures, stopped_early = parent_run.search_outcome(children, spec.model.family, spec.budget.max_epochs)
    parent_run.log_trials_table(client, parent_run_id, children)
    runs_view = share_runs_view(
        client, context.experiment_id, parent_run_id, params=tuned_params(spec), metric=spec.search.metric,
        mode=spec.search.mode,
    )  # fmt: skip
    try:
        run = best_child(client, parent, family=spec.model.family, children=children)
    except Exception:  # noqa: BLE001 - no finished trial: reported through the counts
        run = None
    best = None
    # The best checkpoint is downloaded once, for the manifest, the figures and the attention maps.
    with CheckpointCache(client) as checkpoints:
        if run is not None:
            best = {
                "trial_id": run.data.tags.get(tags.RAY_TRIAL_ID),
                "optuna_trial_number": run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
                "run_id": run.info.run_id,
                "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
            }
            parent_run.log_best(client, parent_run_id, run)
            best.update(_register(client, spec, parent, deployed_run(client, parent, children), checkpoints))
        if os.environ.get(FIGURES_ENV, "1") != "0":
            from xattn.reporting import log_study_figures

            log_study_figures(
                client, parent_run_id, context.workspace.optuna_storage, mirror=context.mirror, checkpoints=checkpoints
            )
            if run is not None and run.data.tags.get(tags.FAMILY) == "cross_attention":
                shown = held_out_run(client, parent, children)  # attention needs test pairs
                _log_attention(client, shown.info.run_id, context.mirror, checkpoints)
    parent_run.complete(client, parent_run_id, found_best=best is not None)
    result = StudyResult(
        name=spec.name,
        experiment_id=context.experiment_id,
        parent_run_id=parent_run_id,
        optuna_study=context.optuna_study,
        tracking_uri=context.workspace.tracking_uri,
        trial_counts=counts,
        best=best,
        comparison=comparison,
        failures=failures,
        stopped_early=stopped_early,
        runs_view=runs_view,
    )
    result.agreement = context.agreement.by_family
    return result


def tuned_params(spec: StudySpec) -> list[str]:
    """Every hyperparameter the study searches: its family's space, then each compared family's
    (when the comparison tunes them)."""
    compared = spec.compare_with if spec.comparison.tune else []
    spaces = [spec.search.space, *(spec.for_family(family).search.space for family in compared)]
    return list(dict.fromkeys(name for space in spaces for name in space))


def _register(client, spec: StudySpec, parent, run, checkpoints: CheckpointCache) -> dict[str, Any]:
    """Register the deployed run (a nested study's refit on all regions, else the best trial) as
    the study's model, alias `best`; a store without a model registry loses only that (the
    study's results are all in its runs)."""
    from mlflow.exceptions import MlflowException

    from xattn.export import export_manifest
    from xattn.tracking.model_registry import BEST_ALIAS, register_best

    try:
        manifest = export_manifest(client, spec.name, parent, run, checkpoints)
        version = register_best(client, spec.name, parent, run, manifest, description=spec.description)
    except (MlflowException, OSError) as error:
        reason = first_line(error)
        parent_run.record_registration(client, parent.info.run_id, error=reason)
        warnings.warn(f"the best trial was not registered as model {spec.name!r}: {reason}", stacklevel=2)
        return {"model_version": None, "model_uri": None}
    # The registry answers int or str depending on its backend; scripts get one type.
    number = str(version.version)
    parent_run.record_registration(client, parent.info.run_id, version=number)
    return {"model_version": number, "model_uri": f"models:/{spec.name}@{BEST_ALIAS}"}


def _log_attention(client, run_id: str, mirror: str | None, checkpoints: CheckpointCache | None = None) -> None:
    """The best trial's attention maps, logged to its run; like the figures, never fails a study."""
    from xattn.reporting.attention import log_run_attention

    try:
        log_run_attention(client, run_id, mirror=mirror, checkpoints=checkpoints)
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"attention maps not logged to run {run_id}: {first_line(error)}", stacklevel=2)
