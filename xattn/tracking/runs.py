"""Reading a study's runs back from MLflow: the study run, its trials, their artifacts.

Every command that looks at a finished or running study (show, report, export, resume) reads
through here, so a study run, its best trial and its checkpoint are found the same way everywhere.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xattn.errors import StudyNotFound
from xattn.tracking import tags

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

CHECKPOINT_ARTIFACT = "checkpoint"  # the folder of a trial run that holds its best weights and config


def driver_tag() -> str:
    """The value of tags.DRIVER for this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def driver_alive(driver: str | None) -> bool:
    """Whether the process that last drove a study run is still running on this host."""
    host, _, pid = (driver or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stopped_early_at(run: Run, max_epochs: int | None) -> int | None:
    """The epoch the scheduler (ASHA) stopped `run` at, if before `max_epochs`; a stop at the
    last epoch is no early stop."""
    epoch = run.data.tags.get(tags.SCHEDULER_STOPPED_AT)
    if epoch is None or (max_epochs is not None and int(epoch) >= max_epochs):
        return None
    return int(epoch)


def find_parent_run(client: MlflowClient, study: str, run_id: str | None = None) -> Run:
    """The newest study (parent) run of `study`, or its study run `run_id`."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        known = [e.name for e in client.search_experiments() if e.tags.get(tags.STUDY)]
        hint = f"; studies here: {', '.join(sorted(known))}" if known else "; run `xattn study run SPEC` first"
        raise StudyNotFound(f"no study named {study!r} in this tracking store{hint}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tags.ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1 if run_id is None else 1000,
    )
    if not runs:
        raise StudyNotFound(f"study {study!r} has no study run yet: run `xattn study run SPEC`")
    if run_id is None:
        return runs[0]
    match = next((run for run in runs if run.info.run_id == run_id), None)
    if match is None:
        newest = ", ".join(run.info.run_id for run in runs[:5])
        raise StudyNotFound(
            f"--run-id {run_id} is not a study run of {study!r}; its study runs, newest first: {newest}"
        )
    return match


def unfinished_parent_run(client: MlflowClient, experiment_id: str) -> Run | None:
    """The newest study run that never completed (killed, interrupted or crashed), if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs and runs[0].info.status != "FINISHED" and tags.COMPLETED not in runs[0].data.tags:
        return runs[0]
    return None


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{tags.PARENT_RUN}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )


def configuration_of(run: Run) -> str:
    """The search configuration run `run` belongs to: the key the search phase recorded
    (xattn.tuning.selection); runs from before it was recorded keep their old grouping, by
    Optuna trial with inner folds, else each run alone."""
    run_tags = run.data.tags
    if tags.CONFIGURATION in run_tags:
        return run_tags[tags.CONFIGURATION]
    if tags.INNER_FOLD in run_tags:
        return f"optuna-{run_tags.get(tags.OPTUNA_TRIAL_NUMBER, run.info.run_id)}"
    return run.info.run_id


def best_group(scores: dict[str, list[float]], mode: str) -> str | None:
    """The key whose values have the best mean (`mode` "min" or "max"); a tie goes to the smaller
    key, and NaN ranks last, so whoever groups the same trials picks the same group.

    It lives here, below tuning, because best_child (which picks the registered model) needs it;
    xattn.tuning.selection ranks the search summary and the progress view with it too."""
    sign = 1.0 if mode == "min" else -1.0
    # fsum: a mean that does not depend on the order the trials were read in
    ranked = [
        (math.isnan(mean := math.fsum(values) / len(values)), sign * mean, key)
        for key, values in scores.items()
        if values
    ]
    return min(ranked)[2] if ranked else None


def best_child(client: MlflowClient, parent: Run, family: str | None = None, children: list[Run] | None = None) -> Run:
    """The finished search trial (of the study's own family unless `family` is given) with the
    best selection metric, as the study's spec defined it; `children`: the parent's child runs,
    when the caller has read them already."""
    metric = parent.data.tags.get(tags.METRIC, "best_val_loss")
    mode = parent.data.tags.get(tags.MODE, "min")
    family = family or parent.data.tags.get(tags.FAMILY)
    finished = [
        run
        for run in (children if children is not None else child_runs(client, parent))
        if run.info.status == "FINISHED"
        and metric in run.data.metrics
        and run.data.tags.get(tags.ROLE, "search") == "search"
        and run.data.tags.get(tags.FAMILY, family) == family
    ]
    # A nested study searches every outer fold and then all regions: its study-level best is
    # the selection on all regions, not a winner of one fold among the others.
    whole = [run for run in finished if run.data.tags.get(tags.FOLD) == tags.WHOLE_DATA_FOLD]
    finished = whole or finished
    if not finished:
        raise StudyNotFound(f"study run {parent.info.run_id} has no finished trial with metric {metric!r}")
    # With inner folds a configuration is several runs: the best mean wins, and its first
    # inner fold stands for it.
    groups: dict[str, list[Run]] = {}
    for run in finished:
        groups.setdefault(configuration_of(run), []).append(run)
    best = best_group({key: [run.data.metrics[metric] for run in runs] for key, runs in groups.items()}, mode)
    return min(groups[best], key=lambda run: int(run.data.tags.get(tags.INNER_FOLD, 0)))


def arm_of(run: Run) -> str:
    """The comparison arm of an MLflow final run (runs from before variants existed: the family)."""
    return run.data.tags.get(tags.ARM, run.data.tags[tags.FAMILY])


def held_out_run(client: MlflowClient, parent: Run, children: list[Run] | None = None) -> Run:
    """The run whose test predictions stand for the study's best model: its best search trial,
    or, when that saw every region (a nested study's selection on all regions has no test
    regions), the study family's final run of outer fold 0 (its first seed)."""
    children = children if children is not None else child_runs(client, parent)
    best = best_child(client, parent, children=children)
    if best.data.tags.get(tags.FOLD) != tags.WHOLE_DATA_FOLD:
        return best
    family = parent.data.tags.get(tags.FAMILY)
    finals = [
        run
        for run in children
        if run.data.tags.get(tags.ROLE) == "final"
        and run.info.status == "FINISHED"
        and arm_of(run) == family
        and run.data.tags.get(tags.FOLD, "").isdigit()
    ]
    if not finals:
        return best
    return min(finals, key=lambda run: (int(run.data.tags[tags.FOLD]), int(run.data.tags.get(tags.SEED) or 0)))


def deployed_run(client: MlflowClient, parent: Run, children: list[Run] | None = None) -> Run:
    """The run a study deploys (registers and exports): its refit on all regions when it has
    one (a nested study), else its best search trial (`best_child`)."""
    children = children if children is not None else child_runs(client, parent)
    refits = [run for run in children if run.data.tags.get(tags.ROLE) == "refit" and run.info.status == "FINISHED"]
    if refits:
        return max(refits, key=lambda run: run.info.start_time)
    return best_child(client, parent, children=children)


def copy_run(client: MlflowClient, source: Run, run_tags: dict[str, str]) -> str:
    """A finished run in `source`'s experiment with `run_tags` and everything `source` logged:
    params, every step of every metric, the epochs-run and provenance tags and its checkpoint. A final run whose
    search already trained it (same split, seed and budget) is recorded this way, not retrained."""
    from mlflow.entities import Param, RunTag

    run_id = client.create_run(source.info.experiment_id, tags=run_tags).info.run_id
    metrics = [m for key in sorted(source.data.metrics) for m in client.get_metric_history(source.info.run_id, key)]
    params = [Param(k, v) for k, v in sorted(source.data.params.items())]
    kept = [
        RunTag(key, value)
        for key, value in sorted(source.data.tags.items())
        if key in (tags.EPOCHS_RUN, *tags.PROVENANCE) or key.startswith(tags.VERSION_PREFIX)
    ]
    client.log_batch(run_id, params=params, tags=kept)
    for start in range(0, len(metrics), 1000):  # MLflow's cap per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    with tempfile.TemporaryDirectory(prefix="xattn-copy-") as folder:
        local = client.download_artifacts(source.info.run_id, CHECKPOINT_ARTIFACT, folder)
        client.log_artifacts(run_id, local, CHECKPOINT_ARTIFACT)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def read_artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    """The text of artifact `path` of run `run_id`."""
    with tempfile.TemporaryDirectory(prefix="xattn-artifact-") as folder:
        return Path(client.download_artifacts(run_id, path, folder)).read_text()


def read_artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """Artifact `path` of run `run_id`, parsed as JSON."""
    return json.loads(read_artifact_text(client, run_id, path))


def download_checkpoint(client: MlflowClient, run_id: str, folder: str | Path) -> Path:
    """The checkpoint folder of trial run `run_id`, downloaded into `folder`."""
    # A progress bar per file is noise in a study's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder)))


class CheckpointCache:
    """Each trial run's checkpoint downloaded at most once while open (a temporary folder), so the
    end of a study reads the best checkpoint once for its manifest, figures and attention maps."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._folder: tempfile.TemporaryDirectory | None = None
        self._paths: dict[str, Path] = {}

    def __enter__(self) -> CheckpointCache:
        self._folder = tempfile.TemporaryDirectory(prefix="xattn-checkpoints-")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._folder is not None:
            self._folder.cleanup()
        self._folder, self._paths = None, {}

    def path(self, run_id: str) -> Path:
        """The local checkpoint folder of `run_id` (read-only: callers copy what they change)."""
        if self._folder is None:
            raise RuntimeError("CheckpointCache used outside its with-block")
        if run_id not in self._paths:
            self._paths[run_id] = download_checkpoint(self.client, run_id, Path(self._folder.name) / run_id)
        return self._paths[run_id]

    @property
    def downloads(self) -> int:
        return len(self._paths)


def trial_row(run: Run, max_epochs: int | None = None) -> dict[str, Any]:
    """One child run as the plain record every table of trials starts from (trials.csv,
    `xattn study show`, the report): its identity, state, parameters and metrics."""
    run_tags = run.data.tags
    epochs = run_tags.get(tags.EPOCHS_RUN)
    return {
        "run_id": run.info.run_id,
        "parent_run_id": run_tags.get(tags.PARENT_RUN),
        "run_name": run_tags.get(tags.RUN_NAME),
        "role": run_tags.get(tags.ROLE, "search"),
        "family": run_tags.get(tags.FAMILY),
        "arm": run_tags.get(tags.ARM) or run_tags.get(tags.FAMILY),
        "fold": run_tags.get(tags.FOLD),
        "seed": run_tags.get(tags.SEED),
        "inner_fold": run_tags.get(tags.INNER_FOLD),
        "ray_trial_id": run_tags.get(tags.RAY_TRIAL_ID),
        "optuna_trial_number": run_tags.get(tags.OPTUNA_TRIAL_NUMBER),
        "configuration": run_tags.get(tags.CONFIGURATION),
        "status": run.info.status,
        "epochs": int(epochs) if epochs is not None else None,
        "stopped_early_at": stopped_early_at(run, max_epochs),
        "failure": run_tags.get(tags.FAILURE),
        "orphaned": tags.ORPHANED in run_tags,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }
