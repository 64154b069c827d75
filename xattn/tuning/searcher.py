"""Ray Tune's OptunaSearch, made safe to resume after a driver was killed.

Optuna records a trial's end at once, in its storage; Ray Tune saves its own state a moment
later. A driver killed in between leaves a trial that Optuna calls COMPLETE but Tune will run
again on resume, and OptunaSearch would then fail the whole study on the first report
("Trial#N has already finished and can not be updated"). Here Optuna's record wins: the
rerun trial trains, is logged in its MLflow run, and Optuna keeps the result it already has.
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._finished_in_storage(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._finished_in_storage(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _finished_in_storage(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return False
        return self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()
