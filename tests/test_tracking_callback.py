"""The MLflow callback records every trial's end, even when its checkpoint did not survive."""

from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from xattn.tracking.callback import FINAL_METRICS, MlflowTrialLogger
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


def test_every_metric_of_a_trial_is_logged_per_epoch_so_mlflow_draws_lines(tmp_path):
    """MLflow charts a metric with one step as a dot: the kept checkpoint's validation and test
    metrics are logged at every epoch (what it had then), once each, not again at the end."""
    client, logger, trial = logger_and_trial(tmp_path, CHECKPOINT_FILES)
    kept = {1: 0.1, 2: 0.3, 3: 0.3}  # val r of the checkpoint kept after each epoch (epoch 3 did not improve)
    for epoch in (1, 2, 3):
        result = {
            "epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1 / epoch, "val_pearson": 0.1 * epoch,
            "best_val_loss": 1 / min(epoch, 2), "best_val_pearson": kept[epoch], "best_epoch": min(epoch, 2),
            "test_mse": 0.5, "test_pearson": kept[epoch] - 0.05, "test_spearman": 0.2, "test_r2": 0.1,
        }  # fmt: skip
        logger.on_trial_result(0, [], trial, result)
    trial.last_result = result
    logger.on_trial_complete(0, [], trial)
    run_id = logger.run_ids["t1"]
    for key in ("train_loss", "val_loss", "val_pearson", *FINAL_METRICS):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    history = sorted(client.get_metric_history(run_id, "best_val_pearson"), key=lambda m: m.step)
    assert [m.value for m in history] == [0.1, 0.3, 0.3]
    assert client.get_run(run_id).data.metrics["test_pearson"] == 0.25  # the latest: the kept checkpoint's
