"""The only MLflow writer of a study: a Ray Tune callback running in the driver.

One child run per trial, nested under the study's parent run by the `mlflow.parentRunId`
tag, linked to its Ray Tune trial id and Optuna trial number.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.search.repeater import TRIAL_INDEX

from xattn.tracking import tags
from xattn.training.checkpoint import CHECKPOINT_FILES

EPOCH_METRICS = ("train_loss", "val_loss", "val_pearson")
# The trial's kept checkpoint: its validation and test metrics. Logged at every epoch as well as
# at the end (what the checkpoint kept so far had), so that MLflow charts them as lines: logged
# once, each was a single dot, and a run's metrics tab opened on seven of them.
FINAL_METRICS = (
    "best_val_loss",
    "best_val_pearson",
    "best_epoch",
    "test_mse",
    "test_pearson",
    "test_spearman",
    "test_r2",
)

# What a trial reports about where it trained (xattn.tuning.trainable), and the tag each becomes.
WHERE = {"device": tags.DEVICE, "gpu_ids": tags.GPU_IDS, "precision": tags.PRECISION, "gpu_fallback": tags.GPU_FALLBACK}


class MlflowTrialLogger(Callback):
    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        optuna_number: Callable[[str], int | None],
        family: str,
        *,
        role: str = "search",
        fold: int | None = None,
        seed: int | None = None,
        fixed: dict[str, Any] | None = None,
        arm: str | None = None,
        configuration: Callable[[dict[str, Any], str], str] | None = None,
        null_of: Callable[[dict[str, Any]], tuple[str, int] | None] | None = None,
        params_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        provenance: dict[str, str] | None = None,
    ) -> None:
        """`fixed`: the hyperparameters every trial shares (the spec's model.fixed), logged with
        each trial's own, so a run's params are its whole configuration.

        The phase that runs the trials says what their configs mean (tracking knows no phase):
        `configuration(config, trial_id)` is the search configuration a trial belongs to,
        recorded as tags.CONFIGURATION (xattn.tuning.selection); `null_of(config)` the
        (method, index) of the null a null run trains on; `params_of(config)` the hyperparameters
        a trial's config stands for (a final run's config holds every fold's selection).
        `provenance`: the tags that say what produced the study's runs (xattn.tracking.provenance)."""
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.optuna_number = optuna_number
        self.family = family
        self.role = role
        self.fold = fold
        self.seed = seed
        self.fixed = dict(fixed or {})
        self.arm = arm or family  # the comparison arm of final runs: the family or "family:variant"
        self.configuration = configuration
        self.null_of = null_of
        self.params_of = params_of or dict
        self.provenance = dict(provenance or {})
        self.run_ids: dict[str, str] = {}
        self.workers: dict[str, str] = {}
        self.logged_epochs: dict[str, int] = {}  # trial id -> the epoch whose result was logged last

    def run_id(self, trial) -> str:
        """The child run of `trial`, created on first sight and reused after a restore."""
        if trial.trial_id in self.run_ids:
            return self.run_ids[trial.trial_id]
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{tags.PARENT_RUN}` = '{self.parent_run_id}' and tags.`{tags.RAY_TRIAL_ID}` = '{trial.trial_id}'"
            ),
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            number = self.optuna_number(trial.trial_id)
            fold = trial.config.get("_fold", self.fold)
            seed = trial.config.get("_seed", self.seed)
            inner = trial.config.get(TRIAL_INDEX)
            # The name says what the run is, so the runs table reads without extra columns.
            null = self.null_of(trial.config) if self.null_of is not None else None
            if self.role in ("final", "refit"):
                name = f"{self.arm}-{self.role}-fold{fold}-seed{seed}"
            elif null is not None:
                name = null_run_name(self.family, null[0], null[1], fold, seed)
            else:
                name = f"{self.family}-trial-{number if number is not None else trial.trial_id}-fold{fold}-seed{seed}"
                name += f"-inner{inner}" if inner is not None else ""
            run_tags = {
                **self.provenance,
                tags.PARENT_RUN: self.parent_run_id,
                tags.RUN_NAME: name,
                tags.ROLE: self.role,
                tags.FAMILY: self.family,
                tags.ARM: self.arm,
                tags.FOLD: str(fold),
                tags.SEED: str(seed),
                tags.RAY_TRIAL_ID: trial.trial_id,
            }
            if number is not None:
                run_tags[tags.OPTUNA_TRIAL_NUMBER] = str(number)
            if inner is not None:
                run_tags[tags.INNER_FOLD] = str(inner)
            if null is not None:
                run_tags[tags.NULL_METHOD], run_tags[tags.NULL_INDEX] = str(null[0]), str(null[1])
            if self.configuration is not None:
                run_tags[tags.CONFIGURATION] = self.configuration(trial.config, trial.trial_id)
            run = self.client.create_run(self.experiment_id, tags=run_tags)
            run_id = run.info.run_id
            config = {**self.fixed, **self.params_of(trial.config)}
            params = [Param(k, _short(v)) for k, v in sorted(config.items()) if not k.startswith("_")]
            self.client.log_batch(run_id, params=params)
        self.run_ids[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        run_id = self.run_id(trial)
        worker = f"{result.get('hostname')}:{result.get('pid')}"
        if self.workers.get(trial.trial_id) != worker:  # first result, or a retry in a new process
            self.workers[trial.trial_id] = worker
            where = {tags.WORKER: worker, **{tag: result[key] for key, tag in WHERE.items() if key in result}}
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in where.items()])
        now = int(time.time() * 1000)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if k in result]
        metrics += [Metric(k, float(result[k]), now, step) for k in FINAL_METRICS if _finite(result.get(k))]
        self.logged_epochs[trial.trial_id] = step
        # `done` on a result the trial is still running means the scheduler stops it here
        # (see TrialProgress.on_trial_result); at max_epochs that is no early stop.
        run_tags = [RunTag(tags.SCHEDULER_STOPPED_AT, str(step))] if result.get("done") else []
        self.client.log_batch(run_id, metrics=metrics, tags=run_tags)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._finish(trial, "FAILED")

    def _finish(self, trial, status: str) -> None:
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        now = int(time.time() * 1000)
        step = int(result.get("epoch", 0))
        # A refit has no validation or test pairs: its NaN metrics are left out, not logged as values.
        # Logged with the last epoch already, unless this driver never saw that result (a restore).
        logged = self.logged_epochs.get(trial.trial_id) == step
        metrics = (
            [] if logged else [Metric(k, float(result[k]), now, step) for k in FINAL_METRICS if _finite(result.get(k))]
        )
        run_tags = [RunTag(tags.EPOCHS_RUN, str(step))]
        if status == "FAILED" and trial.error_file:
            run_tags.append(RunTag(tags.FAILURE, _last_line(trial.error_file)))
            self.client.log_artifact(run_id, trial.error_file, "error")
        checkpoint = trial.checkpoint
        files = [Path(checkpoint.path) / name for name in CHECKPOINT_FILES] if checkpoint is not None else []
        if files and not all(path.is_file() for path in files):
            # Recording the run matters more than a checkpoint that did not survive (deleted, or
            # half-written by a killed worker); the run says so instead of the driver dying.
            run_tags.append(RunTag(tags.CHECKPOINT_MISSING, checkpoint.path))
            files = []
        self.client.log_batch(run_id, metrics=metrics, tags=run_tags)
        # Weights and config rebuild the model; optimizer state stays with Ray for resumes.
        for path in files:
            self.client.log_artifact(run_id, str(path), "checkpoint")
        self.client.set_terminated(run_id, status)


def null_run_name(family: str, method: str, index: int | str, fold: int | str, seed: int | str) -> str:
    """What a null run is called, whoever records it (one run per trial here, or a stack's member)."""
    return f"{family}-null-{method}{index}-fold{fold}-seed{seed}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _short(value: Any) -> str:
    """MLflow caps parameter values; long lists are rare but must not crash a trial's record."""
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _last_line(path: str) -> str:
    """The exception's message: the last non-empty line of Ray's error file."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "trial raised: see the error artifact"
    last = lines[-1] if lines else "trial raised"
    # xattn.training.trainer.TrainingDiverged: -> TrainingDiverged:
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", last)[:500]
