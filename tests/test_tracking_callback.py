"""The MLflow callback records every trial's end, even when its checkpoint did not survive."""

from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from xattn.tracking.callback import MlflowTrialLogger
from xattn.training.checkpoint import CHECKPOINT_FILES


def logger_and_trial(tmp_path, checkpoint_files):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("callback", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id
    logger = MlflowTrialLogger(client, experiment_id, parent, lambda trial_id: 0, "cross_attention", fold=0, seed=0)
    checkpoint = tmp_path / "checkpoint_000003"
    checkpoint.mkdir()
    for name in checkpoint_files:
        (checkpoint / name).write_text("{}")
    trial = SimpleNamespace(
        trial_id="t1", config={"learning_rate": 0.01}, error_file=None,
        last_result={"epoch": 3, "best_val_loss": 0.5, "test_pearson": 0.2},
        checkpoint=SimpleNamespace(path=str(checkpoint)),
    )  # fmt: skip
    return client, logger, trial


def test_a_trial_with_its_checkpoint_logs_the_files_that_rebuild_the_model(tmp_path):
    client, logger, trial = logger_and_trial(tmp_path, CHECKPOINT_FILES)
    logger.on_trial_complete(0, [], trial)
    run = client.get_run(logger.run_ids["t1"])
    assert run.info.status == "FINISHED" and "xattn.checkpoint_missing" not in run.data.tags
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")) == sorted(
        f"checkpoint/{name}" for name in CHECKPOINT_FILES
    )


def test_a_failed_trial_whose_checkpoint_is_gone_is_still_recorded_and_says_so(tmp_path):
    client, logger, trial = logger_and_trial(tmp_path, CHECKPOINT_FILES[1:])  # config.json missing
    logger.on_trial_error(0, [], trial)  # raised FileNotFoundError in the driver before
    run = client.get_run(logger.run_ids["t1"])
    assert run.info.status == "FAILED"
    assert run.data.tags["xattn.checkpoint_missing"] == trial.checkpoint.path
    assert run.data.metrics["test_pearson"] == 0.2
    assert client.list_artifacts(run.info.run_id, "checkpoint") == []
