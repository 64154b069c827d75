"""The searcher after a resume: a trial Optuna already finished may be run again by Tune."""

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from xattn.tuning.searcher import ResumableOptunaSearch


def finished_then_restored(cls):
    """A searcher whose trial finished in Optuna, then restored from a state saved before that."""
    searcher = cls(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="loss", mode="min",
                   sampler=optuna.samplers.RandomSampler(seed=0),
                   storage=optuna.storages.InMemoryStorage())  # fmt: skip
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"loss": 0.5, "training_iteration": 3})
    searcher._completed_trials.discard("t1")  # Tune's saved state predates the completion
    return searcher


def test_plain_optuna_search_fails_the_study_on_a_rerun_trial():
    searcher = finished_then_restored(OptunaSearch)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        searcher.on_trial_result("t1", {"loss": 0.4, "training_iteration": 1})


def test_a_rerun_trial_keeps_the_result_optuna_recorded():
    searcher = finished_then_restored(ResumableOptunaSearch)
    searcher.on_trial_result("t1", {"loss": 0.4, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"loss": 0.1, "training_iteration": 3})
    (trial,) = searcher._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", {"loss": 0.2, "training_iteration": 3})
    assert [t.value for t in searcher._ot_study.trials] == [0.5, 0.2]


def test_optuna_holds_each_epochs_metric_and_calls_a_scheduler_stop_pruned():
    """Optuna's intermediate value at step k is the metric of epoch k, as MLflow's history has
    it (not the best so far); a trial ASHA stopped before max_epochs is PRUNED, its best value
    kept as a user attribute; one that ran to its own end is COMPLETE with its best value."""
    searcher = ResumableOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="best_val_pearson", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), storage=optuna.storages.InMemoryStorage(),
        epoch_metric="val_pearson", max_epochs=4,
    )  # fmt: skip
    curve = [0.3, 0.5, 0.4]
    for trial_id in ("stopped", "ended"):
        searcher.suggest(trial_id)
        for epoch, value in enumerate(curve, start=1):
            last = trial_id == "stopped" and epoch == len(curve)
            result = {"epoch": epoch, "val_pearson": value, "best_val_pearson": max(curve[:epoch]), "done": last}
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, {"epoch": 3, "val_pearson": 0.4, "best_val_pearson": 0.5, "done": True})
    stopped, ended = searcher._ot_study.trials
    assert stopped.intermediate_values == ended.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.4}
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.user_attrs["best_value"] == 0.5
    assert ended.state == optuna.trial.TrialState.COMPLETE and ended.value == 0.5
