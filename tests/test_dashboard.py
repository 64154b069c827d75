"""`xattn dashboard` serves optuna-dashboard on a workspace's Optuna storage, as a user starts it:
a subprocess, its REST API asked for the Optuna studies a real (tiny) study with one compared
family wrote, then stopped."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_cli import REPO, xattn

from xattn.studies import run_study
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import load_spec


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local):
    spec = load_spec(
        REPO / "studies" / "quickstart.yaml",
        {
            "name": "dashboard-e2e",
            "budget.trials": 2,
            "budget.max_epochs": 1,
            "compare_with": ["cge"],
            "comparison": {"folds": 2, "seeds": 1},
        },
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    return workspace, run_study(spec, workspace)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.mark.e2e
def test_the_dashboard_lists_the_study_then_stops(finished, tmp_path):
    workspace, result = finished
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", "dashboard", "--workspace", str(workspace.root), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the dashboard did not start listening within 120 s"
            time.sleep(0.5)
        status, listed = get_json(f"http://127.0.0.1:{port}/api/studies")
        assert status == 200
        studies = {s["study_name"]: s for s in listed["study_summaries"]}
        # nested: each family's search of each outer fold, and the study's search of all regions,
        # each pointing at the same MLflow run
        folded = {f"{result.optuna_study}{family}-fold{k}" for family in ("", "-cge") for k in range(2)}
        assert set(studies) == {result.optuna_study} | folded
        for name, family in ((result.optuna_study, "cross_attention"), (f"{result.optuna_study}-cge-fold1", "cge")):
            study = studies[name]
            assert study["directions"] == ["maximize"]
            attrs = {attr["key"]: attr["value"] for attr in study["user_attrs"]}
            assert attrs["xattn_family"] == family
            assert attrs["mlflow_parent_run_id"] == result.parent_run_id
            assert attrs["mlflow_experiment_id"] == result.experiment_id
            status, detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
            assert status == 200 and len(detail["trials"]) == 2
            assert detail["objective_names"] == ["best_val_pearson"]
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    # one line on the terminal; the line per request in the workspace log
    (line,) = out.splitlines()
    assert line.startswith(f"Optuna dashboard on http://127.0.0.1:{port} (Ctrl-C stops it)"), out + err
    assert err == "" and "GET /api/studies" not in out
    assert "GET /api/studies" in (workspace.root / "xattn.log").read_text()
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(port)


def test_a_missing_storage_is_one_line_and_exit_2(tmp_path):
    process = xattn("dashboard", "--workspace", tmp_path / "empty", "--port", free_port(), cwd=tmp_path, timeout=120)
    assert process.returncode == 2, process.stderr
    (line,) = [line for line in process.stderr.splitlines() if line.strip()]
    assert "no Optuna storage at" in line and "optuna.db" in line
    assert not (tmp_path / "empty").exists()


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="s")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = xattn("dashboard", "--optuna-storage", storage, "--port", port, cwd=tmp_path, timeout=120)
    assert process.returncode == 2, process.stderr
    (line,) = [line for line in process.stderr.splitlines() if line.strip()]
    assert f"port {port} on 127.0.0.1 is in use" in line


def test_the_mlflow_ui_on_a_port_in_use_stops_before_announcing_or_starting_anything(tmp_path):
    from xattn.dashboard import serve_mlflow_ui
    from xattn.errors import StoreError

    announced = []
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StoreError, match=f"port {port} on 127.0.0.1 is in use \\(another MLflow UI\\?\\)"):
            serve_mlflow_ui(f"sqlite:///{tmp_path / 'mlflow.db'}", "127.0.0.1", port, announce=announced.append)
    assert announced == [] and list(tmp_path.iterdir()) == []
