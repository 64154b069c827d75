"""A real study: Ray Tune runs trials suggested by Optuna, the driver records them in MLflow.

Read back with the MLflow client and the Optuna storage, then export the best trial and
check that evaluating the export reproduces its logged test metric.
"""

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from xattn.export import evaluate_export, export_best, verify_export
from xattn.errors import DataError
from xattn.tracking.store import Workspace
from xattn.tuning.spec import parse_spec
from xattn.tuning.study import run_study

pytestmark = pytest.mark.e2e

TRIALS = 4
EPOCHS = 3


@pytest.fixture(scope="module")
def study(tmp_path_factory, mirror, ray_local):
    spec = parse_spec(
        {
            "name": "r08-e2e",
            "seed": 3,
            "data": {"dataset": "hcp-s100-r08", "split": {"method": "spatial", "folds": 4}},
            "model": {"fixed": {"num_layers": 1, "deep_hidden_dims": [16], "batch_size": 256}},
            "search": {
                "space": {
                    "d_model": [8, 16],
                    "nhead": [2],
                    "expression_bins": [3, 5],
                    "cls_init": ["random", "spatial"],
                    "pooling_mode": ["mean", "attention"],
                    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                },
                "grace_period": 2,
            },
            "budget": {"trials": TRIALS, "max_epochs": EPOCHS, "patience_steps": 100000},
        }
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    result = run_study(spec, workspace, mirror=str(mirror))
    return spec, workspace, result


def test_every_trial_is_a_nested_child_run(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.experiment_id == result.experiment_id
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["xattn.role"] == "study"
    children = client.search_runs([experiment.experiment_id], "tags.`xattn.role` = 'search'")
    assert len(children) == TRIALS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.parent_run_id}
    assert len({c.data.tags["xattn.ray_trial_id"] for c in children}) == TRIALS
    assert sorted(int(c.data.tags["xattn.optuna_trial_number"]) for c in children) == list(range(TRIALS))
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"d_model", "learning_rate", "pooling_mode", "cls_init", "expression_bins"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert 1 <= len(history) <= EPOCHS
        assert -1 <= child.data.metrics["test_pearson"] <= 1
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/weights.safetensors", "checkpoint/config.json"}


def test_parent_holds_spec_best_and_table(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"study.yaml", "trials.csv"}
    assert parent.data.tags["xattn.best_run_id"] == result.best["run_id"]
    assert parent.data.metrics["best.best_val_loss"] == pytest.approx(result.best["metrics"]["best_val_loss"])
    best_losses = [c["metrics"]["best_val_loss"] for c in _children(client, result)]
    assert result.best["metrics"]["best_val_loss"] == pytest.approx(min(best_losses))
    assert result.trial_counts == {"finished": TRIALS}
    # how well validation ranked the trials by test r: computed from the trials, logged, returned
    assert parent.data.metrics["search.val_test_n_trials"] == TRIALS
    agreement = result.agreement[spec.model.family]
    assert agreement["n_trials"] == TRIALS and -1 <= agreement["spearman"] <= 1
    assert parent.data.metrics["search.val_test_spearman"] == pytest.approx(agreement["spearman"])
    from scipy import stats

    children = _children(client, result)
    rho = stats.spearmanr([-c["metrics"]["best_val_loss"] for c in children], [c["metrics"]["test_pearson"] for c in children])[0]
    assert agreement["spearman"] == pytest.approx(rho)


def test_optuna_storage_holds_the_study(study):
    spec, workspace, result = study
    loaded = optuna.load_study(study_name=result.optuna_study, storage=workspace.optuna_storage)
    assert len(loaded.trials) == TRIALS
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in loaded.trials)
    assert {t.params["d_model"] for t in loaded.trials} <= {8, 16}


def test_export_then_evaluate_reproduces_test_metrics(study, tmp_path, mirror):
    spec, workspace, result = study
    out = tmp_path / "export"
    info = export_best(spec.name, out, workspace)
    assert info["run_id"] == result.best["run_id"]
    manifest = verify_export(out)
    assert set(manifest["files"]) == {"weights.safetensors", "config.json", "metrics.json"}
    evaluated = evaluate_export(out, mirror=str(mirror))
    for key in ("test_pearson", "test_mse", "test_r2", "test_spearman"):
        assert evaluated["metrics"][key] == pytest.approx(result.best["metrics"][key], abs=1e-4)

    # An export whose files no longer match the manifest is refused.
    config = json.loads((out / "config.json").read_text())
    config["seed"] = config["seed"] + 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="does not match its sha256"):
        evaluate_export(out, mirror=str(mirror))


def _children(client, result):
    runs = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return [{"metrics": r.data.metrics} for r in runs]
