"""The Ray Tune trainable: one trial = prepare data, build the model, fit, report every epoch.

Trial workers only report to Ray Tune; the driver's callback writes MLflow (one writer per
store, so SQLite never sees concurrent writers and nested runs stay nested).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from xattn.experiment import build_trial_model, prepare_experiment
from xattn.training.checkpoint import load_checkpoint_weights, load_optimizer_state, save_checkpoint
from xattn.training.trainer import EpochReport, TrainConfig, fit
from xattn.tuning.spec import StudySpec


def run_trial(config: dict[str, Any], *, spec_json: dict[str, Any], mirror: str | None) -> None:
    spec = StudySpec.model_validate(spec_json)
    config = dict(config)
    # Final (comparison) runs name their outer fold and seed; the split itself is always drawn
    # with the study's seed, so every family and seed sees the same regions in fold k.
    if "_fold" in config:
        spec.data.split = spec.data.split.model_copy(update={"fold": config.pop("_fold")})
    seed = config.pop("_seed", spec.seed)
    params = spec.trial_params(config)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    device = "cuda" if spec.resources.gpus > 0 and torch.cuda.is_available() else "cpu"

    experiment = prepare_experiment(spec.data, params, seed, split_seed=spec.seed, mirror=mirror, device=device)
    model = build_trial_model(experiment, spec.model.family, params, seed).to(device)
    train_config = TrainConfig.from_params(
        params, max_epochs=spec.budget.max_epochs, patience=spec.budget.patience, seed=seed, device=device
    )
    extra = experiment.checkpoint_extra(spec.data, params, seed)

    start_epoch, optimizer_state = 0, None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            start_epoch = load_checkpoint_weights(directory, model)
            optimizer_state = load_optimizer_state(directory)

    def report(epoch: EpochReport) -> None:
        metrics = {
            "epoch": epoch.epoch,
            "train_loss": epoch.train_loss,
            "val_loss": epoch.val_loss,
            "val_pearson": epoch.val_pearson,
            "best_val_loss": epoch.best_val_loss,
            "best_val_pearson": epoch.best_val_pearson,
            "best_epoch": epoch.best_epoch,
            **epoch.test,
        }
        if not epoch.improved:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(
                directory,
                model,
                extra={**extra, "epoch": epoch.epoch, "metrics": metrics},
                optimizer_state=epoch.optimizer_state,
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    fit(model, experiment.pairs, train_config, on_epoch=report, start_epoch=start_epoch, optimizer_state=optimizer_state)


def trainable(spec: StudySpec, mirror: str | None) -> Any:
    """The trainable Ray Tune schedules, with the trial's CPU/GPU share attached."""
    fn = tune.with_parameters(run_trial, spec_json=spec.model_dump(mode="json"), mirror=mirror)
    return tune.with_resources(fn, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
