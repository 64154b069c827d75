"""A study against the lab deployment: an MLflow server on PostgreSQL (with and without basic
auth), Optuna storage on PostgreSQL and a Ray cluster, all real processes on loopback."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from mlflow.tracking import MlflowClient
from services import mlflow_server, postgres_database, ray_cluster
from test_concurrent_studies import spec as write_spec

pytestmark = pytest.mark.e2e
PASSWORD = "correct-horse-battery"


def xattn(*args, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "xattn.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )  # fmt: skip


def assert_study_recorded(client: MlflowClient, name: str, optuna_url: str, trials: int = 3) -> None:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("xattn.role") == "study"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == trials == len(runs) - 1
    for child in children:
        assert child.info.status == "FINISHED" and "test_pearson" in child.data.metrics
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 3
    best = client.get_run(parent.data.tags["xattn.best_run_id"])
    path = client.download_artifacts(best.info.run_id, "checkpoint/config.json")
    assert json.loads(open(path).read())["family"] == "cross_attention"
    study = optuna.load_study(study_name=parent.data.tags["xattn.optuna_study"], storage=optuna_url)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * trials


def test_a_study_on_an_mlflow_server_postgres_and_a_ray_cluster(tmp_path):
    with postgres_database() as mlflow_db, postgres_database() as optuna_db:
        with mlflow_server(mlflow_db, tmp_path) as url, ray_cluster(tmp_path) as (address, ray_env):
            process = xattn("study", "run", write_spec(tmp_path, "served"), "--workspace", tmp_path / "ws",
                            "--tracking-uri", url, "--optuna-storage", optuna_db, "--address", address,
                            cwd=tmp_path, env=ray_env)  # fmt: skip
            assert process.returncode == 0, process.stdout + process.stderr
            assert_study_recorded(MlflowClient(url), "served", optuna_db)
            assert not (tmp_path / "ws" / "mlflow.db").exists() and not (tmp_path / "ws" / "optuna.db").exists()
            doctor = xattn("doctor", "--workspace", tmp_path / "ws", "--tracking-uri", url,
                           "--optuna-storage", optuna_db, "--address", address, "--json",
                           cwd=tmp_path, env=ray_env)  # fmt: skip
            assert doctor.returncode == 0, doctor.stdout + doctor.stderr
            checks = {check["name"]: check for check in json.loads(doctor.stdout.strip().splitlines()[-1])["checks"]}
            assert "2 node(s)" in checks["Ray"]["detail"] and "server MLflow" in checks["tracking store"]["detail"]


def test_two_studies_at_once_against_one_server_with_basic_auth(tmp_path):
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    with postgres_database() as mlflow_db, postgres_database() as optuna_db:
        with mlflow_server(mlflow_db, tmp_path, admin_password=PASSWORD) as url:
            wrong = xattn("doctor", "--workspace", tmp_path / "ws", "--tracking-uri", url,
                          "--optuna-storage", optuna_db,
                          cwd=tmp_path, env={**login, "MLFLOW_TRACKING_PASSWORD": "wrong"})  # fmt: skip
            assert wrong.returncode == 1
            (line,) = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
            assert "authentication failed (401)" in line and "wrong" not in wrong.stdout + wrong.stderr

            def run(name):
                return xattn("study", "run", write_spec(tmp_path, name), "--workspace", tmp_path / f"ws-{name}",
                             "--tracking-uri", url, "--optuna-storage", optuna_db, cwd=tmp_path, env=login)  # fmt: skip

            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(run, ["alpha", "beta"]))
            for process in results:
                assert process.returncode == 0, process.stdout + process.stderr
            os.environ.update(login)
            try:
                client = MlflowClient(url)
                for name in ("alpha", "beta"):
                    assert_study_recorded(client, name, optuna_db)
            finally:
                for key in login:
                    os.environ.pop(key)
