"""The Ray Tune trainable: one trial = prepare data, build the model, fit, report every epoch.

Trial workers only report to Ray Tune; the driver's callback writes MLflow (one writer per
store, so SQLite never sees concurrent writers and nested runs stay nested).
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from xattn.training.checkpoint import load_checkpoint_weights, load_optimizer_state, save_checkpoint
from xattn.training.config import TrainConfig
from xattn.training.trainer import EpochReport, TrainingDiverged, fit
from xattn.tuning.spec import StudySpec
from xattn.tuning.trial import WHOLE, prepare_trial

DIVERGED_MARKER = "diverged.txt"


def run_trial(config: dict[str, Any], *, spec_json: dict[str, Any], mirror: str | None, whole: str | None) -> None:
    # Ray retries a trial that raised (budget.max_failures); a diverged one would only
    # diverge again from the same checkpoint and seed, so its retries fail at once.
    marker = Path(tune.get_context().get_trial_dir()) / DIVERGED_MARKER
    if marker.exists():
        raise TrainingDiverged(marker.read_text().rstrip("\n"))
    spec = StudySpec.model_validate(spec_json)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    trial = prepare_trial(spec, {**config, WHOLE: whole} if whole else config, mirror=mirror)
    model, extra = trial.model, trial.checkpoint_extra

    start_epoch, optimizer_state = 0, None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            start_epoch = load_checkpoint_weights(directory, model)
            optimizer_state = load_optimizer_state(directory)

    where = where_it_trains(spec, trial.train_config)

    def report(epoch: EpochReport) -> None:
        metrics = {
            **where,
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

    try:
        fit(model, trial.experiment.pairs, trial.train_config, on_epoch=report, start_epoch=start_epoch,
            optimizer_state=optimizer_state)  # fmt: skip
    except TrainingDiverged as error:
        marker.write_text(f"{error}\n")
        raise


def where_it_trains(spec: StudySpec, config: TrainConfig) -> dict[str, str]:
    """The device a trial trains on (with the GPU's name), the GPU ids Ray gave it, its precision,
    and, when it asked for GPUs and torch sees none, that it fell back to the CPU."""
    device = torch.device(config.device)
    name = "cpu"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    where = {"device": name, "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()), "precision": config.precision}
    if spec.resources.gpus > 0 and device.type == "cpu":
        where["gpu_fallback"] = (
            f"asked for {spec.resources.gpus:g} GPU, but torch sees no CUDA device on {socket.gethostname()}: "
            "trained on CPU"
        )
    return where


def trainable(spec: StudySpec, mirror: str | None, whole: str | None = None) -> Any:
    """The trainable Ray Tune schedules, with the trial's CPU/GPU share attached; `whole`: the
    deployable model's split for every trial (xattn.tuning.trial.WHOLE), which a searcher's
    configs cannot carry."""
    fn = tune.with_parameters(run_trial, spec_json=spec.model_dump(mode="json"), mirror=mirror, whole=whole)
    return tune.with_resources(fn, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
