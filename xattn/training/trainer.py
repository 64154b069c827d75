"""Train one model on region pairs: the loop a tuning trial runs.

Design choices (see design/NOTES.md):

- Data lives on the device. `PairData` holds expression, coords and the connectivity
  matrix as tensors; a batch is a slice of (i, j) index pairs and its targets are
  gathered from the matrix. No DataLoader, no row per pair.
- Deterministic from the seed. Each epoch's shuffle and dropout draw from seeds derived
  from (config.seed, epoch), so two fits from the same initial weights give identical
  histories, and a fit resumed at epoch k continues exactly as the uninterrupted one.
- Counted in optimizer steps. A region-held-out split of ~60 training regions has ~3,500
  pairs: a handful of steps per epoch at large batches. Warm-up, patience, the plateau
  schedule and the minimum training length are therefore counted in optimizer steps, so a
  run is not stopped after 70 steps because its epochs are short.
- The caller owns reporting. `fit` calls `on_epoch(report)` after every epoch; a Ray Tune
  trainable reports the metrics there and writes a checkpoint when `report.improved`.

`TrainConfig` and its learning-rate schedule live in training/config.py, `PairData` in
training/pair_data.py; this module is the loop: `fit` over epochs, `train_epoch` over the
batches of one (the benchmarks time it on its own), `predict` and `evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xattn.errors import DataError
from xattn.training.config import (
    TrainConfig,
    learning_rate_at,
    plateau_scale_of,
    plateau_steps,
    reduce_plateau_scale,
)
from xattn.training.metrics import regression_metrics
from xattn.training.pair_data import PairData


class TrainingDiverged(RuntimeError):
    """A batch loss (or the validation loss) became NaN or infinite.

    Raised at once, before the optimizer step, so no further compute is spent on a
    trial whose weights are garbage; a tuner should record the trial as failed.
    """


@dataclass
class EpochReport:
    """What `fit` tells `on_epoch` after each epoch.

    When `on_epoch` runs, the model holds this epoch's weights — the best ones exactly
    when `improved` is true, which is when a checkpoint should be written. `test` holds
    the test metrics of the best weights so far (it changes only on improved epochs).
    `optimizer` is the live optimizer and `optimizer_state` its state_dict, for resumable
    checkpoints: the state references live tensors, so save or deep-copy it inside the
    callback.
    """

    epoch: int  # 1-based
    step: int  # optimizer steps taken so far
    train_loss: float
    val_loss: float  # validation MSE
    val_pearson: float
    best_val_loss: float
    best_val_pearson: float  # validation Pearson of the best epoch
    best_epoch: int
    improved: bool
    test: dict[str, float]  # test_mse, test_pearson, test_spearman, test_r2 of the best weights
    stop: bool  # early stopping triggers after this epoch
    lr: float  # learning rate of the epoch's last step
    optimizer: torch.optim.Optimizer = field(repr=False, compare=False)

    def metrics(self) -> dict[str, float | int | bool]:
        """Flat dict of plain numbers (test metrics inlined), ready for `tune.report`."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("test", "optimizer")]
        values = {name: getattr(self, name) for name in names}
        return {**values, **self.test}

    @property
    def optimizer_state(self) -> dict:
        """`optimizer.state_dict()` now: live tensors, so torch.save it before returning."""
        return self.optimizer.state_dict()


@dataclass
class FitResult:
    """Outcome of `fit`; the model passed in now holds the best weights."""

    best_epoch: int
    best_val_loss: float
    best_val_pearson: float
    epochs_run: int  # last epoch completed, counting epochs before `start_epoch`
    steps_run: int  # optimizer steps after the last epoch, counting those before `start_epoch`
    history: list[dict]  # EpochReport.metrics() of each epoch run by this call
    test: dict[str, float]  # test metrics of the best weights
    stopped_early: bool

    def metrics(self) -> dict[str, float | int | bool]:
        """Flat summary (no history) for final logging."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_val_pearson": self.best_val_pearson,
            "epochs_run": self.epochs_run,
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            **self.test,
        }


@dataclass
class _Best:
    """The best weights seen so far, kept on the device, and their metrics."""

    val_loss: float = math.inf
    val_pearson: float = 0.0
    epoch: int = 0
    state: dict[str, Tensor] | None = None
    test: dict[str, float] = field(default_factory=dict)


def fit(
    model: nn.Module,
    data: PairData,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
) -> FitResult:
    """Train `model` with AdamW on MSE, keep the weights of the best validation epoch.

    "Best" is the lowest val_loss or the highest val_pearson (`config.monitor`). Training
    stops after `patience_steps` optimizer steps without a better one (never before
    `min_steps`), or after `max_epochs`. Moves model and data to `config.device`. With no
    validation pairs (a refit on every region) it trains `max_epochs` and keeps the last
    weights; with no test pairs it reports no test metrics.

    To resume after `start_epoch` completed epochs, pass the checkpointed weights (already
    loaded into `model`) and `optimizer_state`; the incoming weights are then evaluated first
    and count as the best so far (at epoch `start_epoch`), and the patience and plateau
    counters start afresh, which is exact for a checkpoint written on an improved epoch. The
    plateau schedule's current scale travels in the optimizer state.
    Raises TrainingDiverged as soon as a loss is NaN or infinite.
    """
    device = torch.device(config.device)
    if config.precision == "bf16" and device.type == "cpu" and not _cpu_has_fast_bf16():
        warnings.warn(
            "precision bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated and "
            "much slower than fp32 here; use precision fp32",
            RuntimeWarning,
            stacklevel=2,
        )
    model.to(device)
    data = data.to(device)
    if len(data.train_pairs) == 0:
        raise DataError("pair data: train_pairs is empty; every split needs at least one training pair")
    # A refit on every region has no validation pairs: it trains `max_epochs` and keeps the last weights.
    refit = len(data.val_pairs) == 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    steps_per_epoch = len(batch_sizes(len(data.train_pairs), config.batch_size))

    best = _Best()
    if start_epoch > 0 and not refit:
        val = evaluate(model, data, data.val_pairs, prefix="val_", **_eval_kwargs(config))
        if math.isfinite(val["val_mse"]):
            best = _snapshot(model, data, config, start_epoch, val)
    history: list[dict] = []
    since_best = since_plateau = 0  # optimizer steps
    epoch = start_epoch
    stop = False
    for epoch in range(start_epoch + 1, config.max_epochs + 1):
        train_loss = train_epoch(model, data, optimizer, config, epoch)
        step = epoch * steps_per_epoch
        lr = learning_rate_at(config, step, steps_per_epoch, plateau_scale_of(optimizer))
        if refit:
            val = {"val_mse": math.nan, "val_pearson": math.nan}
        else:
            val = evaluate(model, data, data.val_pairs, prefix="val_", **_eval_kwargs(config))
        if not refit and not math.isfinite(val["val_mse"]):
            raise TrainingDiverged(f"training diverged at epoch {epoch}: validation loss is {val['val_mse']}")
        improved = refit or best.state is None or _better(config.monitor, val, best)
        if improved:
            best = _snapshot(model, data, config, epoch, val)
            since_best = since_plateau = 0
        else:
            since_best += steps_per_epoch
            since_plateau += steps_per_epoch
        if config.lr_schedule == "plateau" and since_plateau >= plateau_steps(config) and step > config.warmup_steps:
            reduce_plateau_scale(optimizer)
            since_plateau = 0
        stop = not refit and since_best >= config.patience_steps and step >= config.min_steps
        report = EpochReport(
            epoch=epoch, step=step, train_loss=train_loss, val_loss=val["val_mse"], val_pearson=val["val_pearson"],
            best_val_loss=best.val_loss, best_val_pearson=best.val_pearson, best_epoch=best.epoch,
            improved=improved, test=dict(best.test),
            stop=stop, lr=lr, optimizer=optimizer,
        )  # fmt: skip
        history.append(report.metrics())
        if on_epoch is not None:
            on_epoch(report)
        if stop:
            break

    if best.state is not None:
        model.load_state_dict(best.state)
    return FitResult(
        best_epoch=best.epoch, best_val_loss=best.val_loss, best_val_pearson=best.val_pearson, epochs_run=epoch,
        steps_run=epoch * steps_per_epoch, history=history, test=dict(best.test), stopped_early=stop,
    )  # fmt: skip


def _better(monitor: str, val: dict[str, float], best: _Best) -> bool:
    if monitor == "val_pearson":
        return val["val_pearson"] > best.val_pearson
    return val["val_mse"] < best.val_loss


def _cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (measured on an AVX2-only EPYC:
    bf16 matmul 0.8 GFLOP/s against 48 for fp32 on one thread)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: if it goes away, assume yes
        return True


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for one epoch, so epochs are independent yet reproducible."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for forward passes (weights stay fp32); a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _eval_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {"batch_size": config.eval_batch_size, "precision": config.precision}


def train_epoch(
    model: nn.Module, data: PairData, optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int
) -> float:
    """One pass over the shuffled training pairs; returns the pair-weighted mean loss.

    The shuffle is drawn on the CPU so the order does not depend on the device; the
    global RNG is reseeded for dropout (a fit owns its process's RNG, as a trial does).
    """
    model.train()
    seed = _epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    order = torch.randperm(len(data.train_pairs), generator=torch.Generator().manual_seed(seed))
    total = 0.0
    sizes = batch_sizes(len(data.train_pairs), config.batch_size)
    step = (epoch - 1) * len(sizes)
    for batch in data.train_pairs[order.to(data.device)].split(sizes):
        step += 1
        lr = learning_rate_at(config, step, len(sizes), plateau_scale_of(optimizer))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=data.device)
        n_passes = math.ceil(len(batch) / (config.max_pairs_per_pass or len(batch)))
        for part in batch.tensor_split(n_passes):  # near-equal passes: none of a single pair
            part_loss = batch_loss(model, data, part, config.precision) * (len(part) / len(batch))
            part_loss.backward()
            loss = loss + part_loss.detach()
        value = loss.item()  # one sync per batch, after backward is queued
        if not math.isfinite(value):
            raise TrainingDiverged(f"training diverged at epoch {epoch}: batch loss is {value} (learning_rate {lr:g})")
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += value * len(batch)
    return total / len(data.train_pairs)


def batch_sizes(n_pairs: int, batch_size: int) -> list[int]:
    """Batches of `batch_size` pairs; a last batch of a single pair joins the one before it,
    because BatchNorm (in some models' heads) cannot normalise a batch of one."""
    sizes = [batch_size] * (n_pairs // batch_size) + ([n_pairs % batch_size] if n_pairs % batch_size else [])
    if len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def batch_loss(model: nn.Module, data: PairData, batch: Tensor, precision: str) -> Tensor:
    """MSE of one batch; the forward may run in bf16, the loss is always fp32."""
    target = data.targets(batch)
    with _autocast(data.device, precision):
        prediction = model(data.expression, data.coords, batch[:, 0], batch[:, 1])
    if prediction.shape != target.shape:
        n = len(batch)
        raise ValueError(f"model returned shape {tuple(prediction.shape)} for {n} pairs, expected ({n},)")
    return F.mse_loss(prediction.float(), target.float())


def _snapshot(model: nn.Module, data: PairData, config: TrainConfig, epoch: int, val: dict[str, float]) -> _Best:
    """Copy the current (new best) weights and evaluate them on the test pairs."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    test = (
        evaluate(model, data, data.test_pairs, prefix="test_", **_eval_kwargs(config)) if len(data.test_pairs) else {}
    )
    return _Best(val_loss=val["val_mse"], val_pearson=val["val_pearson"], epoch=epoch, state=state, test=test)


def predict(
    model: nn.Module, data: PairData, pairs: Tensor, batch_size: int = 4096, *, precision: str = "fp32"
) -> np.ndarray:
    """Predictions for `pairs` as a float32 array, in eval mode without gradients.

    Pass the precision the model was trained with: a bf16-trained model is evaluated
    under bf16 autocast so reported metrics match what training selected on. The
    model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    pairs = pairs.to(data.device)
    outputs = []
    try:
        with torch.no_grad(), _autocast(data.device, precision):
            for batch in pairs.split(batch_size):
                outputs.append(model(data.expression, data.coords, batch[:, 0], batch[:, 1]).float())
    finally:
        model.train(was_training)
    if not outputs:
        return np.empty(0, dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()


def evaluate(
    model: nn.Module,
    data: PairData,
    pairs: Tensor,
    prefix: str = "test_",
    *,
    batch_size: int = 4096,
    precision: str = "fp32",
) -> dict[str, float]:
    """`regression_metrics` of the model on `pairs`, keys prefixed (test_mse, ...)."""
    prediction = predict(model, data, pairs, batch_size, precision=precision)
    target = data.targets(pairs.to(data.device)).float().cpu().numpy()
    return {prefix + k: v for k, v in regression_metrics(prediction, target).items()}
