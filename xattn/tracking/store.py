"""Where a study's records live: the workspace, the MLflow tracking store and the Optuna storage.

Stores are chosen by URI (flag, environment, or the workspace's embedded SQLite files), never
by code, so the same study runs against a lab's PostgreSQL-backed server unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from xattn.errors import StoreError, StudyNotFound

DEFAULT_WORKSPACE = Path(".xattn")
ROLE_TAG = "xattn.role"
STUDY_TAG = "xattn.study"
INNER_FOLD_TAG = "xattn.inner_fold"  # a search run's inner fold, when the spec asks for inner folds
SQLITE_WAIT = "?timeout=60"


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str
    optuna_storage: str

    @classmethod
    def open(
        cls,
        root: str | Path | None = None,
        tracking_uri: str | None = None,
        optuna_storage: str | None = None,
        create: bool = True,
    ) -> "Workspace":
        root = Path(root or os.environ.get("XATTN_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        if create:
            ensure_writable(root)
        # Two studies on one workspace are two writers of each SQLite file: wait for the
        # other's write (up to a minute) instead of failing with "database is locked" after 5 s.
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}{SQLITE_WAIT}"
        optuna_storage = (
            optuna_storage or os.environ.get("XATTN_OPTUNA_STORAGE") or f"sqlite:///{root / 'optuna.db'}{SQLITE_WAIT}"
        )
        return cls(root, tracking_uri, optuna_storage)

    @property
    def artifact_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def artifact_location(self, study: str) -> str | None:
        """Artifacts beside the embedded store; a tracking server chooses its own location."""
        if self.tracking_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.artifact_root / study).as_uri()


def ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise StoreError(f"workspace {root} cannot be written ({error.strerror}): pass --workspace DIR") from None


def find_parent_run(client: MlflowClient, study: str, run_id: str | None = None) -> Run:
    """The newest study (parent) run of `study`, or the one with `run_id`."""
    if run_id:
        return client.get_run(run_id)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        known = [e.name for e in client.search_experiments() if e.tags.get(STUDY_TAG)]
        hint = f"; studies here: {', '.join(sorted(known))}" if known else "; run `xattn study run SPEC` first"
        raise StudyNotFound(f"no study named {study!r} in this tracking store{hint}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise StudyNotFound(f"study {study!r} has no study run yet: run `xattn study run SPEC`")
    return runs[0]


COMPLETED_TAG = "xattn.completed"


def unfinished_parent_run(client: MlflowClient, experiment_id: str) -> Run | None:
    """The newest study run that never completed (killed, interrupted or crashed), if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs and runs[0].info.status != "FINISHED" and COMPLETED_TAG not in runs[0].data.tags:
        return runs[0]
    return None


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )


def best_child(client: MlflowClient, parent: Run, family: str | None = None) -> Run:
    """The finished search trial (of the study's own family unless `family` is given) with the
    best selection metric, as the study's spec defined it."""
    metric = parent.data.tags.get("xattn.metric", "best_val_loss")
    mode = parent.data.tags.get("xattn.mode", "min")
    family = family or parent.data.tags.get("xattn.family")
    finished = [
        run
        for run in child_runs(client, parent)
        if run.info.status == "FINISHED"
        and metric in run.data.metrics
        and run.data.tags.get(ROLE_TAG, "search") == "search"
        and run.data.tags.get("xattn.family", family) == family
    ]
    if not finished:
        raise StudyNotFound(f"study run {parent.info.run_id} has no finished trial with metric {metric!r}")
    pick = min if mode == "min" else max
    # With inner folds a configuration is several runs: the best mean wins, and its first
    # inner fold stands for it.
    groups: dict[str, list[Run]] = {}
    for run in finished:
        key = run.data.tags.get("xattn.optuna_trial_number", run.info.run_id) if INNER_FOLD_TAG in run.data.tags else run.info.run_id
        groups.setdefault(key, []).append(run)
    best = pick(groups.values(), key=lambda runs: sum(r.data.metrics[metric] for r in runs) / len(runs))
    return min(best, key=lambda run: int(run.data.tags.get(INNER_FOLD_TAG, 0)))
