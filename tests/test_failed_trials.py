"""A trial whose loss diverges is recorded as failed, with its reason, and the study goes on."""

import os
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from xattn.studies import run_study
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import parse_spec

pytestmark = pytest.mark.e2e

DIVERGING = 1.0e6


def test_diverging_trials_fail_and_the_others_finish(tmp_path, ray_local):
    spec = parse_spec(
        {
            "name": "diverge",
            "seed": 1,
            "data": {"dataset": "synthetic", "synthetic": {"regions": 32, "genes": 8}},
            "model": {"fixed": {"d_model": 8, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [8]}},
            "search": {"space": {"learning_rate": [DIVERGING, 1.0e-3]}, "scheduler": "none"},
            "budget": {"trials": 4, "max_epochs": 2, "max_failures": 2},  # a diverged trial is not retried
        }
    )
    workspace = Workspace.open(tmp_path / "ws")
    result = run_study(spec, workspace)
    client = MlflowClient(workspace.tracking_uri)
    children = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(children) == 4
    diverging = [c for c in children if float(c.data.params["learning_rate"]) == DIVERGING]
    assert 0 < len(diverging) < 4, "the seed must sample both learning rates; pick another seed"
    for child in children:
        if child in diverging:
            assert child.info.status == "FAILED"
            assert "diverged" in child.data.tags["xattn.failure"]
            assert "error" in {a.path for a in client.list_artifacts(child.info.run_id)}
        else:
            assert child.info.status == "FINISHED" and "test_pearson" in child.data.metrics
    assert result.trial_counts == {"failed": len(diverging), "finished": 4 - len(diverging)}
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    states = {
        t.number: t.state
        for t in optuna.load_study(study_name=result.optuna_study, storage=workspace.optuna_storage).trials
    }
    for child in children:
        expected = optuna.trial.TrialState.FAIL if child in diverging else optuna.trial.TrialState.COMPLETE
        assert states[int(child.data.tags["xattn.optuna_trial_number"])] == expected


def test_a_study_whose_every_trial_failed_exits_non_zero_and_says_why(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "all-diverge",
                "data": {"dataset": "synthetic", "synthetic": {"regions": 24, "genes": 6}},
                "model": {"fixed": {"d_model": 8, "nhead": 1, "num_layers": 1, "deep_hidden_dims": [8]}},
                "search": {"space": {"learning_rate": [DIVERGING]}, "scheduler": "none"},
                "budget": {"trials": 2, "max_epochs": 2},
            }
        )
    )
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "run", spec, "--workspace", tmp_path / "ws"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert process.returncode == 1, process.stdout + process.stderr
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert "every trial failed (2 x TrainingDiverged: training diverged at epoch 1" in line
