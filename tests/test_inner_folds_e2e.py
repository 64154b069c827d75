"""Inner K-fold validation for the search: every configuration trains once per inner fold of
the non-test regions, through Ray Tune's Repeater, and Optuna ranks it by the mean."""

import json

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from xattn.export import evaluate_export, export_best
from xattn.studies import run_study
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import parse_spec

pytestmark = pytest.mark.e2e

CONFIGS, INNER, EPOCHS = 2, 3, 2


@pytest.fixture(scope="module")
def study(tmp_path_factory, mirror, ray_local):
    spec = parse_spec(
        {
            "name": "inner-e2e",
            "seed": 1,
            "data": {"dataset": "hcp-s100-r08", "split": {"method": "spatial", "folds": 4, "inner_folds": INNER}},
            "model": {"family": "mlp", "fixed": {"deep_hidden_dims": [16], "batch_size": 256}},
            "search": {"space": {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "budget": {"trials": CONFIGS, "max_epochs": EPOCHS, "patience_steps": 100000},
        }
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    return spec, workspace, run_study(spec, workspace, mirror=str(mirror))


def _search_runs(client, result):
    return client.search_runs([result.experiment_id], "tags.`xattn.role` = 'search'")


def test_each_configuration_trains_once_per_inner_fold(study, tmp_path):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    runs = _search_runs(client, result)
    assert len(runs) == CONFIGS * INNER
    by_number = {}
    for run in runs:
        by_number.setdefault(run.data.tags["xattn.optuna_trial_number"], []).append(run)
    assert sorted(by_number) == [str(n) for n in range(CONFIGS)]
    for group in by_number.values():
        assert sorted(int(r.data.tags["xattn.inner_fold"]) for r in group) == list(range(INNER))
        assert len({r.data.params["learning_rate"] for r in group}) == 1  # one configuration
        assert all(r.data.tags["mlflow.runName"].endswith(f"-inner{r.data.tags['xattn.inner_fold']}") for r in group)
        splits = []
        for run in group:
            path = client.download_artifacts(run.info.run_id, "checkpoint/config.json", str(tmp_path / run.info.run_id))
            splits.append(json.loads(open(path).read())["split"])
        assert len({tuple(s["test"]) for s in splits}) == 1  # the outer test set throughout
        vals = [set(s["val"]) for s in splits]
        assert all(not (a & b) for k, a in enumerate(vals) for b in vals[k + 1 :])  # disjoint inner patches


def test_optuna_ranks_a_configuration_by_its_inner_mean(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    loaded = optuna.load_study(study_name=result.optuna_study, storage=workspace.optuna_storage)
    assert len(loaded.trials) == CONFIGS
    runs = _search_runs(client, result)
    for trial in loaded.trials:
        group = [r for r in runs if r.data.tags["xattn.optuna_trial_number"] == str(trial.number)]
        assert trial.value == pytest.approx(np.mean([r.data.metrics["best_val_loss"] for r in group]))
    best = min(loaded.trials, key=lambda t: t.value)
    assert result.best["optuna_trial_number"] == str(best.number)


def test_the_best_configurations_first_inner_fold_is_exported_and_reproduces(study, tmp_path, mirror):
    spec, workspace, result = study
    info = export_best(spec.name, tmp_path / "export", workspace)
    client = MlflowClient(workspace.tracking_uri)
    run = client.get_run(info["run_id"])
    assert run.data.tags["xattn.inner_fold"] == "0"
    evaluated = evaluate_export(tmp_path / "export", mirror=str(mirror))
    assert evaluated["metrics"]["test_pearson"] == pytest.approx(run.data.metrics["test_pearson"], abs=1e-4)
