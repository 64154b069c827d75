"""Null runs that trained together in one Ray trial (xattn.tuning.null_bundle), recorded each as
the MLflow null run it would have been alone: its tags, params, every epoch's metrics, its
final metrics and its checkpoint.

The driver records a bundle when its trial completes, and again after the phase for any
bundle a killed driver did not finish recording: a member recorded already is skipped, one
half-recorded is marked orphaned and recorded again. Nothing is recorded twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from xattn.tracking import tags
from xattn.tracking.callback import EPOCH_METRICS, FINAL_METRICS, WHERE, _finite, _short, null_run_name
from xattn.tracking.runs import CHECKPOINT_ARTIFACT
from xattn.training.checkpoint import CHECKPOINT_FILES

MEMBERS_FILE = "members.json"  # xattn.tuning.null_bundle writes it into a bundle's checkpoint
MEMBER_FOLDER = "null-{index}"


class StackedNullRuns(Callback):
    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        family: str,
        method: str,
        *,
        arm: str | None = None,
        fixed: dict[str, Any] | None = None,
        params_of: Callable[[dict[str, Any]], dict[str, Any]] = dict,
        provenance: dict[str, str] | None = None,
    ) -> None:
        """`fixed`, `params_of(config)` and `provenance`: as MlflowTrialLogger's."""
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.family = family
        self.arm = arm or family
        self.method = method
        self.fixed = dict(fixed or {})
        self.params_of = params_of
        self.provenance = dict(provenance or {})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        if trial.checkpoint is not None:
            self.record(trial.trial_id, trial.config, trial.checkpoint.path)

    def record(self, trial_id: str, config: dict[str, Any], checkpoint: str) -> int:
        """Record every member of the bundle whose checkpoint is `checkpoint` that is not
        recorded yet; returns how many were."""
        document = json.loads((Path(checkpoint) / MEMBERS_FILE).read_text())
        fold, seed = int(config["_fold"]), int(config["_seed"])
        recorded = self._recorded(fold, seed)
        params = [Param(k, _short(v)) for k, v in sorted({**self.fixed, **self.params_of(config)}.items())]
        params = [param for param in params if not param.key.startswith("_")]
        where = [RunTag(tag, str(document["where"][key])) for key, tag in WHERE.items() if key in document["where"]]
        new = 0
        for index, member in sorted(document["members"].items(), key=lambda item: int(item[0])):
            if int(index) in recorded:
                continue
            run_tags = {
                **self.provenance,
                tags.PARENT_RUN: self.parent_run_id,
                tags.RUN_NAME: null_run_name(self.family, self.method, index, fold, seed),
                tags.ROLE: "null", tags.FAMILY: self.family, tags.ARM: self.arm, tags.FOLD: str(fold),
                tags.SEED: str(seed), tags.RAY_TRIAL_ID: trial_id, tags.NULL_METHOD: self.method,
                tags.NULL_INDEX: str(index), tags.STACKED: str(document["stacked"]),
            }  # fmt: skip
            run_id = self.client.create_run(self.experiment_id, tags=run_tags).info.run_id
            self.client.log_batch(run_id, params=params, tags=where)
            if "failure" in member:
                self.client.set_tag(run_id, tags.FAILURE, member["failure"])
                self.client.set_terminated(run_id, "FAILED")
                continue
            now = int(time.time() * 1000)
            # as MlflowTrialLogger logs them: the kept checkpoint's metrics at every epoch too (lines, not dots)
            epochs = [
                Metric(key, float(row[key]), now, int(row["epoch"]))
                for row in member["history"]
                for key in (*EPOCH_METRICS, *FINAL_METRICS)
                if key in EPOCH_METRICS and key in row or _finite(row.get(key))
            ]
            last = int(member["epochs_run"])
            at_last = {metric.key for metric in epochs if metric.step == last}
            final = [
                Metric(k, float(member["final"][k]), now, last)
                for k in FINAL_METRICS
                if _finite(member["final"].get(k)) and k not in at_last
            ]
            for start in range(0, len(epochs), 1000):  # MLflow's cap per batch
                self.client.log_batch(run_id, metrics=epochs[start : start + 1000])
            self.client.log_batch(run_id, metrics=final, tags=[RunTag(tags.EPOCHS_RUN, str(last))])
            folder = Path(checkpoint) / MEMBER_FOLDER.format(index=index)
            for name in CHECKPOINT_FILES:
                self.client.log_artifact(run_id, str(folder / name), CHECKPOINT_ARTIFACT)
            self.client.set_terminated(run_id, "FINISHED")
            new += 1
        return new

    def _recorded(self, fold: int, seed: int) -> set[int]:
        """Null indices of this arm, fold and seed recorded already; a half-recorded one (its
        driver was killed) is marked and left out, to be recorded again."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{tags.PARENT_RUN}` = '{self.parent_run_id}' and tags.`{tags.ROLE}` = 'null' "
                f"and tags.`{tags.ARM}` = '{self.arm}' and tags.`{tags.FOLD}` = '{fold}' "
                f"and tags.`{tags.SEED}` = '{seed}' and tags.`{tags.NULL_METHOD}` = '{self.method}'"
            ),
            max_results=10000,
        )
        recorded = set()
        for run in runs:
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, tags.ORPHANED, "the driver was killed while recording this run")
                self.client.set_terminated(run.info.run_id, "KILLED")
            elif run.info.status in ("FINISHED", "FAILED"):
                recorded.add(int(run.data.tags[tags.NULL_INDEX]))
        return recorded
