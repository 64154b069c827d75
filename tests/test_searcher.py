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
