"""A study's (parent) run in MLflow through its life: experiment, start or takeover, trials table, best trial, end.

Tracking knows no StudySpec: the orchestrator (xattn.studies) hands it the plain values a
study run records (`StudyRun`).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xattn.errors import StoreError
from xattn.tracking import tags
from xattn.tracking.runs import child_runs, driver_alive, driver_tag, read_artifact_text, stopped_early_at, trial_row

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from xattn.tracking.store import Workspace

SPEC_ARTIFACT = "study.yaml"
TRIALS_ARTIFACT = "trials.csv"


@dataclass(frozen=True)
class StudyRun:
    """What a study run records of its spec."""

    name: str
    description: str
    family: str
    metric: str  # the spec's search metric; trials are ranked by best_<metric>
    mode: str
    params: dict[str, Any]  # logged as the run's params
    spec_yaml: str  # logged as study.yaml, which a resume starts from
    provenance: dict[str, str] = field(default_factory=dict)  # tags: what produced the run (tracking.provenance)


def open_experiment(client: MlflowClient, workspace: Workspace, study: StudyRun) -> str:
    """The id of the study's experiment, created, restored or brought up to date."""
    run_tags = {tags.STUDY: study.name, tags.EXPERIMENT_KIND: tags.MODEL_TRAINING_KIND}
    if study.description:
        run_tags[tags.NOTE] = study.description
    experiment = client.get_experiment_by_name(study.name)
    if experiment is None:
        return client.create_experiment(
            study.name, artifact_location=workspace.artifact_location(study.name), tags=run_tags
        )
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    # An experiment from before these run_tags gets them; a kind chosen in the UI is kept, while
    # the description follows the spec that runs now.
    for key, value in run_tags.items():
        if experiment.tags.get(key) != value and (key != tags.EXPERIMENT_KIND or key not in experiment.tags):
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def start(client: MlflowClient, experiment_id: str, study: StudyRun) -> tuple[str, str]:
    """Create the study run; return its id and the name of its Optuna study."""
    run_tags = {
        **study.provenance,
        tags.ROLE: "study",
        tags.STUDY: study.name,
        tags.FAMILY: study.family,
        tags.METRIC: f"best_{study.metric}",
        tags.MODE: study.mode,
        tags.RUN_NAME: f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags.DRIVER: driver_tag(),
    }
    if study.description:
        run_tags[tags.NOTE] = study.description
    run = client.create_run(experiment_id, tags=run_tags)
    run_id = run.info.run_id
    optuna_study = f"{study.name}-{run_id[:8]}"
    client.set_tag(run_id, tags.OPTUNA_STUDY, optuna_study)
    for key, value in study.params.items():
        client.log_param(run_id, key, str(value))
    client.log_text(run_id, study.spec_yaml, SPEC_ARTIFACT)
    return run_id, optuna_study


def spec_text(client: MlflowClient, parent: Run) -> str:
    """The study.yaml a study run was started with."""
    return read_artifact_text(client, parent.info.run_id, SPEC_ARTIFACT)


def reopen(client: MlflowClient, parent: Run, study: StudyRun) -> tuple[str, str]:
    """Take over unfinished study run `parent` (its spec already checked to be `study`'s);
    return its id and Optuna study."""
    run_id = parent.info.run_id
    driver = parent.data.tags.get(tags.DRIVER)
    if driver_alive(driver):
        raise StoreError(f"study {study.name!r} is running now (process {driver}): wait for it or stop it first")
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tags.DRIVER, driver_tag())
    if study.description and tags.NOTE not in parent.data.tags:  # a run started before descriptions were recorded
        client.set_tag(run_id, tags.NOTE, study.description)
    client.set_tag(run_id, tags.RESUMED, str(int(parent.data.tags.get(tags.RESUMED, "0")) + 1))
    # The software of the driver that runs it now; each trial run keeps the one it ran with.
    for key, value in study.provenance.items():
        client.set_tag(run_id, key, value)
    return run_id, parent.data.tags[tags.OPTUNA_STUDY]


def close_orphaned_runs(client: MlflowClient, parent_run_id: str, role: str, family: str, arm: str) -> None:
    """Child runs of a finished phase still RUNNING belong to trials a killed driver started
    but Tune never recorded; Tune ran those again as new trials. Mark them, keep them."""
    for run in child_runs(client, client.get_run(parent_run_id)):
        run_tags = run.data.tags
        same_arm = run_tags.get(tags.ARM, run_tags.get(tags.FAMILY)) == arm
        if (
            run.info.status == "RUNNING"
            and run_tags.get(tags.ROLE) == role
            and run_tags.get(tags.FAMILY) == family
            and same_arm
        ):
            client.set_tag(
                run.info.run_id,
                tags.ORPHANED,
                "the driver was killed before Ray Tune recorded this trial; it ran again as another trial",
            )
            client.set_terminated(run.info.run_id, "KILLED")


def search_outcome(children: list[Run], family: str, max_epochs: int) -> tuple[dict[str, int], dict[str, int], int]:
    """Of `family`'s search runs: runs per status, failed runs per reason, and how many
    finished ones the scheduler stopped early."""
    counts: dict[str, int] = {}
    failures: dict[str, int] = {}
    stopped_early = 0
    for run in children:
        run_tags = run.data.tags
        if (
            run_tags.get(tags.FAMILY) == family
            and run_tags.get(tags.ROLE) == "search"
            and tags.ORPHANED not in run_tags
        ):
            counts[run.info.status.lower()] = counts.get(run.info.status.lower(), 0) + 1
            if run.info.status == "FINISHED" and stopped_early_at(run, max_epochs) is not None:
                stopped_early += 1
            if run.info.status == "FAILED":
                reason = run_tags.get(tags.FAILURE, "no reason recorded")
                failures[reason] = failures.get(reason, 0) + 1
    return counts, failures, stopped_early


def log_trials_table(client: MlflowClient, parent_run_id: str, children: list[Run]) -> None:
    """trials.csv: one row per child run, its identity, params (param.NAME) and metrics."""
    import pandas as pd

    rows = []
    for run in children:
        row = trial_row(run)
        rows.append(
            {
                "run_id": row["run_id"],
                "family": row["family"],
                "role": run.data.tags.get(tags.ROLE),  # as recorded: trial_row reads a missing role as "search"
                "fold": row["fold"],
                "seed": row["seed"],
                "trial": row["run_name"],
                "ray_trial_id": row["ray_trial_id"],
                "optuna_trial_number": row["optuna_trial_number"],
                "status": row["status"],
                **{f"param.{k}": v for k, v in row["params"].items()},
                **row["metrics"],
            }
        )
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    client.log_text(parent_run_id, buffer.getvalue(), TRIALS_ARTIFACT)


def log_best(client: MlflowClient, parent_run_id: str, run: Run) -> None:
    """The best trial's params and metrics on the study run, as best.NAME, and its run id."""
    for key, value in run.data.params.items():
        client.log_param(parent_run_id, f"best.{key}", value)
    for key, value in run.data.metrics.items():
        client.log_metric(parent_run_id, f"best.{key}", value)
    client.set_tag(parent_run_id, tags.BEST_RUN_ID, run.info.run_id)


def record_registration(
    client: MlflowClient, parent_run_id: str, *, version: str | None = None, error: str | None = None
) -> None:
    """The model version the best trial was registered as, or why it was not."""
    if version is not None:
        client.set_tag(parent_run_id, tags.MODEL_VERSION, version)
    if error is not None:
        client.set_tag(parent_run_id, tags.REGISTRY_ERROR, error)


def end(client: MlflowClient, parent_run_id: str, status: str) -> None:
    """A study run stopped before its summary: "KILLED" (interrupted) or "FAILED"; a resume takes it over."""
    client.set_terminated(parent_run_id, status)


def complete(client: MlflowClient, parent_run_id: str, *, found_best: bool) -> None:
    """The study run is done (no resume continues it): FINISHED with a best trial, else FAILED."""
    client.set_tag(parent_run_id, tags.COMPLETED, "true")
    client.set_terminated(parent_run_id, "FINISHED" if found_best else "FAILED")
