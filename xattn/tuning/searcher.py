"""The searcher: a spec's space as Optuna distributions, and Ray Tune's OptunaSearch made safe to
resume after a driver was killed.

Optuna records a trial's end at once, in its storage; Ray Tune saves its own state a moment
later. A driver killed in between leaves a trial that Optuna calls COMPLETE but Tune will run
again on resume, and OptunaSearch would then fail the whole study on the first report
("Trial#N has already finished and can not be updated"). Here Optuna's record wins: the
rerun trial trains, is logged in its MLflow run, and Optuna keeps the result it already has.

The Optuna study it creates names its objective after the metric (Optuna's default,
"Objective 0", tells a dashboard reader nothing) and carries `user_attrs`: where the same
trials are recorded in MLflow.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search.optuna import OptunaSearch

from xattn.tuning.spec import ParamSpec


class ResumableOptunaSearch(OptunaSearch):
    """Optuna's record of each trial matches MLflow's: the intermediate value at step k is
    `epoch_metric` of epoch k (Ray's OptunaSearch reports the objective, a best-so-far value,
    at each report), and a trial the scheduler stopped before `max_epochs` is PRUNED, with its
    best value as the user attribute "best_value" (Optuna gives a pruned trial its last
    intermediate value)."""

    def __init__(
        self,
        *args: Any,
        user_attrs: dict[str, Any] | None = None,
        epoch_metric: str | None = None,
        max_epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._user_attrs = dict(user_attrs or {})  # before super(): it creates the study
        self._epoch_metric = epoch_metric
        self._max_epochs = max_epochs
        self._stopped: set[str] = set()  # trials the scheduler stopped early
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode) -> None:
        super()._setup_study(mode)
        if self._metric is not None:
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2; a label either way
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self._metric] if isinstance(self._metric, str) else list(self._metric))
        for key, value in self._user_attrs.items():
            self._ot_study.set_user_attr(key, value)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._finished_in_storage(trial_id):
            return
        if self._epoch_metric is None:
            super().on_trial_result(trial_id, result)
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        # `done` on a result of a running trial: the scheduler stops it here (tuning.progress).
        if result.get("done") and self._max_epochs is not None and epoch < self._max_epochs:
            self._stopped.add(trial_id)
        value = result.get(self._epoch_metric)
        if trial_id not in self._completed_trials and isinstance(value, (int, float)) and math.isfinite(value):
            self._ot_trials[trial_id].report(float(value), epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._finished_in_storage(trial_id):
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._stopped and not error and trial_id not in self._completed_trials:
            trial = self._ot_trials[trial_id]
            best = (result or {}).get(self._metric)
            if isinstance(best, (int, float)) and math.isfinite(best):
                trial.set_user_attr("best_value", float(best))
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _finished_in_storage(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return False
        return self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()


def to_distribution(param: ParamSpec) -> BaseDistribution:
    if param.type == "choice":
        return CategoricalDistribution(param.values)
    if param.type in ("int", "logint"):
        step = int(param.step or 1) if param.type == "int" else 1
        return IntDistribution(int(param.low), int(param.high), log=param.type == "logint", step=step)
    return FloatDistribution(param.low, param.high, log=param.type == "loguniform", step=param.step)


def optuna_space(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    return {name: to_distribution(param) for name, param in space.items()}
