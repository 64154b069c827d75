"""One configuration key and one rule pick a study's best configuration everywhere: the search
summary (what the finals retrain), the progress view and the registered model (best_child).

The trials are ones where the groupings these places used before disagreed: with inner folds,
two Optuna trials that suggest the same values (grouped by values in one place, by Optuna
trial in another), and a tie met in a different order by the summary and by MLflow.
"""

from __future__ import annotations

import io
import time

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Result
from ray.tune.experiment import Trial
from rich.console import Console

from xattn.studies import open_stores, run_study, study_run
from xattn.tracking import parent_run, tags
from xattn.tracking.callback import MlflowTrialLogger
from xattn.tracking.runs import best_child
from xattn.tracking.store import Workspace
from xattn.tuning import selection
from xattn.tuning.progress import TrialProgress
from xattn.tuning.spec_file import parse_spec

INNER = selection.INNER_FOLD


def trial(trial_id: str, best_val_loss: float, **config) -> Trial:
    made = Trial("trainable", config=config, trial_id=trial_id, stub=True)
    made.update_last_result({"epoch": 3, "best_val_loss": best_val_loss, "test_pearson": 0.5 - best_val_loss / 10})
    return made


# (trials in the order Tune lists them, the order they started, the Optuna trial of each, the config picked)
CASES = {
    # Optuna trials 0 and 2 suggest the same values. By values: lr 0.01 scores (1.0 + 0.2) / 2 = 0.6
    # over its four runs, lr 0.02 0.5; by Optuna trial, trial 2 alone scores 0.2.
    "inner folds, one configuration suggested twice": (
        [
            trial("a0", 1.0, learning_rate=0.01, **{INNER: 0}),
            trial("a1", 1.0, learning_rate=0.01, **{INNER: 1}),
            trial("b0", 0.5, learning_rate=0.02, **{INNER: 0}),
            trial("b1", 0.5, learning_rate=0.02, **{INNER: 1}),
            trial("c0", 0.2, learning_rate=0.01, **{INNER: 0}),
            trial("c1", 0.2, learning_rate=0.01, **{INNER: 1}),
        ],
        ["a0", "a1", "b0", "b1", "c0", "c1"],
        {"a0": 0, "a1": 0, "b0": 1, "b1": 1, "c0": 2, "c1": 2},
        {"learning_rate": 0.02},
    ),
    # Two configurations tie; Tune lists them in one order, MLflow has them started in the other.
    "a tie": (
        [
            trial("t2", 0.3, learning_rate=0.02),
            trial("t1", 0.3, learning_rate=0.01),
            trial("t3", 0.9, learning_rate=0.05),
        ],
        ["t1", "t2", "t3"],
        {"t1": 0, "t2": 1, "t3": 2},
        {"learning_rate": 0.01},  # the smaller key: trial t1
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_summary_progress_and_registration_pick_the_same_configuration(case, tmp_path):
    trials, started, optuna_numbers, expected = CASES[case]
    by_id = {t.trial_id: t for t in trials}

    # the search summary: what the finals retrain
    results = [Result(metrics={**t.last_result, "trial_id": t.trial_id, "config": t.config},
                      checkpoint=None, error=None, path=str(tmp_path))
               for t in trials]  # fmt: skip
    summary = selection.best_configuration(results, "val_loss", "min")

    # the progress view, told of the trials as they finish
    progress = TrialProgress(Console(file=io.StringIO()), len(trials), "val_loss", "min")
    for trial_id in started:
        progress.on_trial_start(0, trials, by_id[trial_id])
    for t in trials:
        progress.on_trial_complete(0, trials, t)
        t.set_status(Trial.TERMINATED)
    shown = [t for t in trials if selection.configuration_key(t.config, t.trial_id) == progress.best_configuration]

    # the registered model: best_child over the runs the search's MLflow callback records
    spec = parse_spec(
        {"name": "selection", "model": {"family": "mlp"}, "search": {"space": {"learning_rate": [0.01, 0.02, 0.05]}}}
    )
    workspace = Workspace.open(tmp_path / "ws")
    client = open_stores(workspace)
    experiment_id = parent_run.open_experiment(client, workspace, study_run(spec))
    parent_run_id, _ = parent_run.start(client, experiment_id, study_run(spec))
    logger = MlflowTrialLogger(client, experiment_id, parent_run_id, optuna_numbers.get, "mlp", fold=0, seed=0,
                               configuration=selection.configuration_key)  # fmt: skip
    for trial_id in started:
        logger.on_trial_start(0, trials, by_id[trial_id])
        time.sleep(0.01)  # MLflow orders runs by start time, in milliseconds
    for t in trials:
        logger.on_trial_complete(0, trials, t)
    registered = best_child(client, client.get_run(parent_run_id))

    assert summary == expected
    assert {k: v for k, v in shown[0].config.items() if k != INNER} == expected
    assert progress.best == pytest.approx(min(selection.mean(
        [u.last_result["best_val_loss"] for u in trials if selection.configuration_key(u.config, u.trial_id) == key])
        for key in {selection.configuration_key(u.config, u.trial_id) for u in trials}))  # fmt: skip
    assert {k: registered.data.params[k] for k in expected} == {k: str(v) for k, v in expected.items()}
    assert registered.data.tags[tags.CONFIGURATION] == progress.best_configuration
    assert registered.data.tags.get(tags.INNER_FOLD, "0") == "0"  # a configuration's first inner fold stands for it


def test_runs_recorded_before_configurations_keep_their_grouping(tmp_path):
    """A study run from before tags.CONFIGURATION: inner-fold runs by Optuna trial, others alone."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("old", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id, tags={tags.METRIC: "best_val_loss", tags.MODE: "min", tags.FAMILY: "mlp"})
    for number, fold, loss in ((0, 0, 0.1), (0, 1, 0.9), (1, 0, 0.4), (1, 1, 0.4)):
        run = client.create_run(experiment_id, tags={
            tags.PARENT_RUN: parent.info.run_id, tags.ROLE: "search", tags.FAMILY: "mlp",
            tags.OPTUNA_TRIAL_NUMBER: str(number), tags.INNER_FOLD: str(fold),
        })  # fmt: skip
        client.log_metric(run.info.run_id, "best_val_loss", loss)
        client.set_terminated(run.info.run_id)
    best = best_child(client, client.get_run(parent.info.run_id))
    assert best.data.tags[tags.OPTUNA_TRIAL_NUMBER] == "1" and best.data.tags[tags.INNER_FOLD] == "0"


class SearchProgress(TrialProgress):
    """The progress view, remembering what it showed at the end of each phase."""

    ended: list[tuple[str, str | None, float | None]]

    def on_experiment_end(self, trials, **info):
        super().on_experiment_end(trials, **info)
        self.__dict__.setdefault("ended", []).append((self.title, self.best_configuration, self.best))


@pytest.mark.e2e
def test_a_study_with_inner_folds_retrains_registers_and_shows_one_configuration(tmp_path, mirror, ray_local):
    """Three suggestions of two values: two of them are the same configuration."""
    spec = parse_spec(
        {
            "name": "selection-e2e",
            "seed": 4,
            "data": {"dataset": "hcp-s100-r08", "split": {"method": "spatial", "folds": 4, "inner_folds": 2}},
            "model": {"family": "mlp", "fixed": {"deep_hidden_dims": [16], "batch_size": 256}},
            "search": {"space": {"learning_rate": [0.003, 0.01]}},
            "budget": {"trials": 3, "max_epochs": 2, "patience_steps": 100000},
            "compare_with": ["distance_decay"],
            "comparison": {"folds": 2, "seeds": 1, "tune": False},
        }
    )
    workspace = Workspace.open(tmp_path / "ws")
    progress = SearchProgress(Console(file=io.StringIO()), spec.search_trials, spec.search.metric, spec.search.mode)
    result = run_study(spec, workspace, mirror=str(mirror), progress=progress)

    client = MlflowClient(workspace.tracking_uri)
    runs = client.search_runs([result.experiment_id], f"tags.`{tags.PARENT_RUN}` = '{result.parent_run_id}'")
    search = [run for run in runs if run.data.tags[tags.ROLE] == "search"]
    # nested: 2 outer folds and all regions, 3 suggestions each, every one on 2 inner folds
    assert len(search) == 3 * 3 * 2
    finals = [run for run in runs if run.data.tags[tags.ROLE] == "final" and run.data.tags[tags.FAMILY] == "mlp"]
    assert len(finals) == 2
    for final in finals:  # each fold retrains its own search's configuration, one key for all its inner folds
        fold = final.data.tags[tags.FOLD]
        own = [run for run in search if run.data.tags[tags.FOLD] == fold]
        assert len({run.data.params["learning_rate"] for run in own}) <= 2  # a value suggested twice
        chosen = best_child(client, client.get_run(result.parent_run_id), children=own)
        assert final.data.params["learning_rate"] == chosen.data.params["learning_rate"]
    everywhere = [run for run in search if run.data.tags[tags.FOLD] == tags.WHOLE_DATA_FOLD]
    best = client.get_run(result.best["run_id"])
    chosen = best_child(client, client.get_run(result.parent_run_id), children=everywhere)
    assert best.data.tags[tags.CONFIGURATION] == chosen.data.tags[tags.CONFIGURATION]
    registered = client.get_run(client.get_model_version_by_alias(spec.name, "best").run_id)
    assert registered.data.tags[tags.ROLE] == "refit"  # the configuration selected on all regions, refit
    assert registered.data.params["learning_rate"] == best.data.params["learning_rate"]
    shown = {title: configuration for title, configuration, _ in progress.ended}
    assert shown["search mlp (all regions)"] == best.data.tags[tags.CONFIGURATION]
