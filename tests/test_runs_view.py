"""The MLflow link a study prints: its runs-table view is stored where MLflow's UI reads a shared
view; a store that refuses it costs the view, not the study. (test_cli's quickstart follows the
printed link of a real study into the store.)"""

import json
import logging

from mlflow.tracking import MlflowClient

from xattn.tracking.runs_view import SHARED_VIEW_TAG, runs_view_url, share_runs_view


def test_the_link_opens_the_runs_table_and_the_view_when_there_is_one():
    base = "http://127.0.0.1:5000/"
    assert runs_view_url(base, "3", "xattn-abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=xattn-abc"
    )
    assert runs_view_url(base, "3", None) == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"


def test_a_view_the_store_refuses_is_logged_and_leaves_the_plain_link(tmp_path, caplog):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("view", artifact_location=str(tmp_path / "artifacts"))
    key = share_runs_view(client, experiment_id, "r1", params=["d_model"], metric="val_loss", mode="min")
    view = json.loads(client.get_experiment(experiment_id).tags[SHARED_VIEW_TAG + key])
    assert view["orderByKey"] == "metrics.`best_val_loss`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:2] == ["tags.`xattn.family`", "metrics.`best_val_loss`"]

    too_many = [f"a_parameter_with_a_long_name_{k}" for k in range(1000)]  # past MLflow's 20,000 characters
    with caplog.at_level(logging.WARNING, logger="xattn.tracking.runs_view"):
        assert share_runs_view(client, experiment_id, "r2", params=too_many, metric="val_loss", mode="min") is None
    assert any("runs table view not stored" in record.getMessage() for record in caplog.records)
