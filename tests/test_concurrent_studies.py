"""Two studies started at once on one workspace both finish, each in its own experiment."""

import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def spec(tmp_path, name: str):
    raw = {
        "name": name,
        "data": {"dataset": "synthetic", "synthetic": {"regions": 24, "genes": 6}},
        "model": {"fixed": {"d_model": 8, "nhead": 1, "num_layers": 1, "deep_hidden_dims": [8]}},
        "search": {"space": {"learning_rate": [1.0e-3, 3.0e-3, 1.0e-2]}, "scheduler": "none"},
        "budget": {"trials": 3, "max_epochs": 3},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_studies_at_once_on_one_workspace(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "xattn.cli", "study", "run", spec(tmp_path, name), "--workspace", workspace],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for name in ("left", "right")
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "locked" not in output

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    for name in ("left", "right"):
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [run for run in runs if run.data.tags.get("xattn.role") == "study"]
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert len(children) == 3 == len(runs) - 1
        assert all(run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "val_loss")) == 3
                   for run in children)  # fmt: skip
        optuna_study = optuna.load_study(
            study_name=parent.data.tags["xattn.optuna_study"], storage=f"sqlite:///{workspace / 'optuna.db'}"
        )
        assert [t.state.name for t in optuna_study.trials] == ["COMPLETE"] * 3
