"""Train M models of one configuration together, each on its own data, as `fit` trains one.

Comparisons, nested folds and null models train many models of the same family and
hyperparameters that differ only in their data (outer fold, null draw) and seed.
`fit_stacked` runs the M models as one: their parameters are stacked into (M, ...) tensors
(`torch.func.stack_module_state`) and each family's own `forward` runs once per step for all
of them under `torch.func.vmap` + `functional_call`, so a step pays the Python and dispatch
overhead of one model, its kernels are M times larger, and one optimiser step serves all.
What that buys depends on how much of a model's step is overhead. Measured on hcp-s100 with
16 models and one CPU thread (benchmarks/stacked_training.py): 2.7-3.8x the models per
CPU-second for the references, 1.8x for mlp, 1.05x for cross_attention, whose step is already
compute and whose stacked activations outgrow the caches unless a pass holds few models
(`models_per_pass`).

Each model keeps everything `fit` gives it, drawn and decided exactly as `fit` does:

- its data (`PairData`: same regions and genes count, any split, expression or null), its
  batch order (shuffled from its seed and the epoch) and its dropout masks (drawn from its own
  generator, seeded as `fit` seeds the global RNG; training/stacked_ops.py);
- its optimiser (AdamW with its own step count and learning-rate schedule, gradients clipped
  by its own norm; training/stacked_optim.py), its validation, best epoch and test metrics,
  plateau and early stopping: a model that stopped is no longer updated or evaluated.

Models whose training sets differ in size have different numbers and sizes of batches.
Steps run in lockstep by batch index within the epoch: at each index the models that still
have a batch are grouped by batch size, each group is one vmapped forward/backward on its
rows of the stack, and only those rows take an optimiser step. Nothing is padded, so no
pair is counted twice and BatchNorm sees exactly `fit`'s batches.

Same result as alone: on CPU in fp32, model m's predictions, metrics, history, best epoch and
weights equal those of `fit(models[m], datas[m], configs[m])` up to float rounding (batched
kernels sum in another order) for the families whose dropout acts on pairs: mlp,
cross_attention and the references (tests/test_stacked_training.py). One exception among the
weights, in `fit` too between any two summation orders: a parameter the loss has no gradient
for in exact arithmetic (attention's key bias: softmax ignores a shift shared by all keys)
receives rounding noise that Adam scales to full steps, so it drifts without changing any
prediction. The self-attention families train correctly (same batches, masks from the same
distribution) but are mask-for-mask `fit`'s only with transformer_dropout 0 (stacked_ops.py).
bf16 runs (checked by hand to agree to bf16 rounding); resuming (`start_epoch`) is `fit`'s alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from xattn.errors import DataError, SpecError
from xattn.training.config import PLATEAU_FACTOR, PLATEAU_MIN_SCALE, TrainConfig, learning_rate_at, plateau_steps
from xattn.training.pair_data import PairData
from xattn.training.stacked_ops import StackedForwardMode, dropout_generators
from xattn.training.stacked_optim import StackedAdamW, clip_grad_norms_
from xattn.training.trainer import (
    EpochReport,
    FitResult,
    TrainingDiverged,
    _autocast,
    _Best,
    _better,
    _epoch_seed,
    _eval_kwargs,
    _snapshot,
    batch_sizes,
    evaluate,
)

# The most activations one vmapped pass should hold on a CPU. On hcp-s100 (1 thread, 16 models)
# cross_attention saves ~24 MB a model at batch 64 and trained 1.14x as many models per CPU-second
# as sequential fits at 4 a pass, 0.92x at 8, 0.82x at 16; the MLP (~2.5 MB) 1.64x at 16.
PASS_BYTES = 96 * 2**20

# Settings that may differ between the stacked models: all are per-model scalars of the loop.
# Everything else (batch size, precision, device, passes) shapes the shared computation.
PER_MODEL_FIELDS = frozenset(
    {"seed", "learning_rate", "weight_decay", "lr_schedule", "cosine_lr", "warmup_steps", "grad_clip",
     "patience_steps", "min_steps", "monitor", "max_epochs"}
)  # fmt: skip


@dataclass
class _Run:
    """One model's place in the stack: its data, settings and the bookkeeping `fit` keeps."""

    model: nn.Module
    data: PairData
    config: TrainConfig
    steps_per_epoch: int
    best: _Best = field(default_factory=_Best)
    since_best: int = 0
    since_plateau: int = 0
    plateau_scale: float = 1.0
    lr: float = 0.0
    epoch: int = 0
    stop: bool = False
    done: bool = False
    error: TrainingDiverged | None = None
    history: list[dict] = field(default_factory=list)


class _OptimizerView:
    """What `EpochReport.optimizer` offers for one stacked model: `state_dict()` in the form of
    `torch.optim.AdamW`'s (so `fit` can resume from a checkpoint written in `on_epoch`), built
    when asked, from the state at the time of the callback."""

    def __init__(self, optimizer: StackedAdamW, m: int, run: _Run) -> None:
        self._optimizer, self._m, self._run = optimizer, m, run

    @property
    def param_groups(self) -> list[dict]:
        return [{"lr": self._run.lr, "plateau_scale": self._run.plateau_scale}]

    def state_dict(self) -> dict:
        return self._optimizer.model_state(self._m, self._run.lr, self._run.plateau_scale, self._run.model)


def fit_stacked(
    models: Sequence[nn.Module],
    datas: Sequence[PairData],
    configs: TrainConfig | Sequence[TrainConfig],
    *,
    on_epoch: Callable[[int, EpochReport], None] | None = None,
    on_epoch_end: Callable[[int, dict[int, EpochReport]], None] | None = None,
    models_per_pass: int | None = None,
) -> list[FitResult | TrainingDiverged]:
    """Train models[m] on datas[m] with configs[m] (one config: the same for all), all at once.

    The models must be of one class with parameters and buffers of the same shapes (one family
    and configuration); the datas must have the same number of regions and genes; the configs
    may differ only in PER_MODEL_FIELDS. Returns, per model, `fit`'s FitResult or, for a model
    whose loss became NaN or infinite, the TrainingDiverged it would have raised (it stops at
    that point and the others train on). As after `fit`, each model holds its best weights.
    `on_epoch(m, report)` is called after model m's epoch with the report `fit` would give;
    models[m] then holds that epoch's weights. `on_epoch_end(epoch, {m: report})` is called once
    per epoch after that, with the reports of the models that trained in it (one place to
    report all of them, e.g. one `tune.report` per epoch for a trial that trains several folds).

    `models_per_pass` caps how many models one vmapped forward/backward holds. A pass holds the
    activations of all its models at once; once they outgrow the CPU's caches, a larger pass
    costs more per model than it saves in overhead. None: on CPU, as many as keep a pass's
    saved activations within PASS_BYTES (measured on the first step), on GPU all. The
    optimiser step is always one for all models; the split changes no result.
    """
    configs = [configs] * len(models) if isinstance(configs, TrainConfig) else list(configs)
    _check(models, datas, configs)
    device = torch.device(configs[0].device)
    runs = []
    for model, data, config in zip(models, datas, configs):
        model.to(device).train()
        data = data.to(device)
        for name in ("train_pairs", "val_pairs", "test_pairs"):
            if len(getattr(data, name)) == 0:
                raise DataError(f"pair data: {name} is empty; every split needs at least one pair")
        runs.append(_Run(model, data, config, len(batch_sizes(len(data.train_pairs), config.batch_size))))
    stack = _Stack(runs)
    if models_per_pass is not None:
        if models_per_pass < 1:
            raise SpecError(f"fit_stacked: models_per_pass must be >= 1, got {models_per_pass}")
        stack.chunk = models_per_pass
    elif device.type != "cpu":
        stack.chunk = len(runs)
    optimizer = StackedAdamW(list(stack.params.values()), [run.config.weight_decay for run in runs])

    for epoch in range(1, max(config.max_epochs for config in configs) + 1):
        training = [m for m, run in enumerate(runs) if not run.done]
        if not training:
            break
        losses = _train_epoch(stack, optimizer, runs, training, epoch)
        reports = {}
        for m in training:
            run = runs[m]
            if run.error is None:
                stack.pull(m)
                report = _end_epoch(run, epoch, losses[m], _OptimizerView(optimizer, m, run))
                if report is not None:
                    reports[m] = report
                    if on_epoch is not None:
                        on_epoch(m, report)
            run.done = run.done or run.error is not None or run.stop or epoch >= run.config.max_epochs
        if on_epoch_end is not None and reports:
            on_epoch_end(epoch, reports)

    results: list[FitResult | TrainingDiverged] = []
    for m, run in enumerate(runs):
        if run.error is not None:  # left with the weights it diverged from, as `fit` leaves a model
            stack.pull(m)
            results.append(run.error)
            continue
        if run.best.state is not None:
            run.model.load_state_dict(run.best.state)
        results.append(
            FitResult(
                best_epoch=run.best.epoch,
                best_val_loss=run.best.val_loss,
                best_val_pearson=run.best.val_pearson,
                epochs_run=run.epoch,
                steps_run=run.epoch * run.steps_per_epoch,
                history=run.history,
                test=dict(run.best.test),
                stopped_early=run.stop,
            )
        )
    return results


def _check(models: Sequence[nn.Module], datas: Sequence[PairData], configs: list[TrainConfig]) -> None:
    """Refuse what cannot share one stacked computation, naming what differs."""
    if not models or len(models) != len(datas) or len(models) != len(configs):
        raise SpecError(f"fit_stacked: {len(models)} models, {len(datas)} datas, {len(configs)} configs")
    first = models[0]
    shapes = {k: v.shape for k, v in [*first.named_parameters(), *first.named_buffers()]}
    for m, model in enumerate(models):
        other = {k: v.shape for k, v in [*model.named_parameters(), *model.named_buffers()]}
        if type(model) is not type(first) or other != shapes:
            raise SpecError(f"fit_stacked: model {m} differs from model 0 in class or parameter shapes")
        if getattr(model, "config", None) != getattr(first, "config", None):
            raise SpecError(f"fit_stacked: model {m} has another configuration than model 0")
        for name in ("expression", "coords", "connectivity"):
            if getattr(datas[m], name).shape != getattr(datas[0], name).shape:
                raise SpecError(f"fit_stacked: data {m} has {name} of another shape than data 0")
        differ = sorted(
            k for k, v in vars(configs[m]).items() if k not in PER_MODEL_FIELDS and vars(configs[0])[k] != v
        )
        if differ:
            raise SpecError(f"fit_stacked: config {m} differs from config 0 in {', '.join(differ)}")


class _SavedBytes:
    """Counts the distinct storages autograd saves for the backward: a pass's activations."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return tensor


class _Stack:
    """The models' parameters and buffers as (M, ...) tensors, the data as (M, R, ...), and the
    vmapped loss of a group of rows."""

    def __init__(self, runs: list[_Run]) -> None:
        self.runs = runs
        self.params, self.buffers = stack_module_state([run.model for run in runs])
        # Linear weights are kept in (in, out) memory layout, the layout of their gradient in the
        # batched linear (stacked_ops._linear_rows): no transposing copy per step.
        for name, module in runs[0].model.named_modules():
            weight = self.params.get(f"{name}.weight" if name else "weight")
            if isinstance(module, nn.Linear) and weight is not None:
                relaid = weight.detach().transpose(1, 2).contiguous().transpose(1, 2)
                self.params[f"{name}.weight" if name else "weight"] = relaid.requires_grad_(weight.requires_grad)
        # The forward runs on a copy whose tensors functional_call replaces with the stack's.
        self.template = copy.deepcopy(runs[0].model)
        self.data = {
            name: torch.stack([getattr(run.data, name) for run in runs])
            for name in ("expression", "coords", "connectivity")
        }
        config = runs[0].config
        self.precision, self.max_pairs_per_pass = config.precision, config.max_pairs_per_pass
        self.loss = vmap(self._loss)
        self.chunk: int | None = None  # models per pass; None: set from the first pass's activations

    def _loss(self, params, buffers, expression, coords, connectivity, pairs: Tensor) -> Tensor:
        """One model's batch loss, as trainer.batch_loss computes it (vmapped over models)."""
        target = connectivity[pairs[:, 0], pairs[:, 1]]
        with _autocast(expression.device, self.precision):
            prediction = functional_call(
                self.template, (params, buffers), (expression, coords, pairs[:, 0], pairs[:, 1])
            )
        if prediction.shape != target.shape:
            raise ValueError(f"model returned shape {tuple(prediction.shape)} for {len(pairs)} pairs")
        return F.mse_loss(prediction.float(), target.float())

    def backward(self, rows: list[int], batches: Tensor, generators: list[torch.Generator]) -> Tensor:
        """Forward and backward of `batches` (k, B, 2), batch i for model rows[i]; gradients
        accumulate in the stacked parameters' rows. Returns the k batch losses."""
        if self.chunk is None:
            saved = _SavedBytes()
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
                losses = self._backward(rows, batches, generators)
            self.chunk = max(1, int(PASS_BYTES * len(rows) // max(saved.total, 1)))
            return losses
        size = math.ceil(len(rows) / math.ceil(len(rows) / self.chunk))  # passes of near-equal size
        losses = []
        for start in range(0, len(rows), size):
            part = slice(start, start + size)
            losses.append(self._backward(rows[part], batches[part], generators[part]))
        return torch.cat(losses)

    def _backward(self, rows: list[int], batches: Tensor, generators: list[torch.Generator]) -> Tensor:
        if rows == list(range(len(self.runs))):

            def take(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
                return tensors

            index = None
        elif rows == list(range(rows[0], rows[-1] + 1)):  # consecutive rows: views, updated in place

            def take(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
                return {k: v[rows[0] : rows[-1] + 1] for k, v in tensors.items()}

            index = None
        else:
            index = torch.tensor(rows, device=batches.device)

            def take(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
                return {k: v.index_select(0, index) for k, v in tensors.items()}

        data = take(self.data)
        n = batches.shape[1]
        total = torch.zeros(len(rows), device=batches.device)
        for part in batches.tensor_split(math.ceil(n / (self.max_pairs_per_pass or n)), dim=1):
            params, buffers = take(self.params), take(self.buffers)  # per pass: each backward frees its graph
            with StackedForwardMode(), dropout_generators(generators):
                loss = self.loss(params, buffers, data["expression"], data["coords"], data["connectivity"], part)
                loss = loss * (part.shape[1] / n)
                loss.sum().backward()
            if index is not None:  # BatchNorm's running statistics were updated on a copy
                for name, value in buffers.items():
                    self.buffers[name].index_copy_(0, index, value)
            total = total + loss.detach()
        return total

    @torch.no_grad()
    def pull(self, m: int) -> None:
        """Copy row m of the stack into models[m], so it can be evaluated and reported as `fit`'s."""
        model = self.runs[m].model
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            source = self.params.get(name)
            tensor.copy_((source if source is not None else self.buffers[name])[m])


def _train_epoch(stack: _Stack, optimizer: StackedAdamW, runs: list[_Run], training: list[int], epoch: int) -> dict:
    """One epoch of every model in `training` (as trainer.train_epoch); their mean losses."""
    batches, generators, totals = {}, {}, {}
    for m in training:
        run = runs[m]
        seed = _epoch_seed(run.config.seed, epoch)
        generators[m] = torch.Generator(run.data.device).manual_seed(seed)  # dropout, as torch.manual_seed(seed)
        order = torch.randperm(len(run.data.train_pairs), generator=torch.Generator().manual_seed(seed))
        sizes = batch_sizes(len(run.data.train_pairs), run.config.batch_size)
        batches[m] = run.data.train_pairs[order.to(run.data.device)].split(sizes)
        totals[m] = 0.0
    for k in range(max(len(batches[m]) for m in training)):
        stepping = [m for m in training if k < len(batches[m]) and runs[m].error is None]
        for param in stack.params.values():
            param.grad = None
        groups: dict[int, list[int]] = {}
        for m in stepping:  # one vmapped pass per batch size: nothing padded, BatchNorm sees fit's batches
            groups.setdefault(len(batches[m][k]), []).append(m)
        for rows in groups.values():
            losses = stack.backward(rows, torch.stack([batches[m][k] for m in rows]), [generators[m] for m in rows])
            for m, value in zip(rows, losses.tolist()):
                run = runs[m]
                if not math.isfinite(value):
                    lr = learning_rate_at(run.config, optimizer.steps[m] + 1, run.steps_per_epoch, run.plateau_scale)
                    message = f"training diverged at epoch {epoch}: batch loss is {value} (learning_rate {lr:g})"
                    run.error, run.done = TrainingDiverged(message), True
                totals[m] += value * len(batches[m][k])
        stepping = [m for m in stepping if runs[m].error is None]
        clip_grad_norms_(
            list(stack.params.values()), [runs[m].config.grad_clip if m in stepping else 0.0 for m in range(len(runs))]
        )
        lrs = []
        for m in stepping:
            run = runs[m]
            run.lr = learning_rate_at(run.config, optimizer.steps[m] + 1, run.steps_per_epoch, run.plateau_scale)
            lrs.append(run.lr)
        optimizer.step(stepping, lrs)
    return {m: totals[m] / len(runs[m].data.train_pairs) for m in training}


def _end_epoch(run: _Run, epoch: int, train_loss: float, optimizer: _OptimizerView) -> EpochReport | None:
    """Validation, best epoch, plateau and early stopping of one model: `fit`'s epoch end.
    Its report, or None when the validation loss is not finite (run.error says so)."""
    config, data = run.config, run.data
    run.epoch = epoch
    step = epoch * run.steps_per_epoch
    lr = learning_rate_at(config, step, run.steps_per_epoch, run.plateau_scale)
    val = evaluate(run.model, data, data.val_pairs, prefix="val_", **_eval_kwargs(config))
    run.model.train()
    if not math.isfinite(val["val_mse"]):
        run.error = TrainingDiverged(f"training diverged at epoch {epoch}: validation loss is {val['val_mse']}")
        return None
    improved = run.best.state is None or _better(config.monitor, val, run.best)
    if improved:
        run.best = _snapshot(run.model, data, config, epoch, val)
        run.since_best = run.since_plateau = 0
    else:
        run.since_best += run.steps_per_epoch
        run.since_plateau += run.steps_per_epoch
    if config.lr_schedule == "plateau" and run.since_plateau >= plateau_steps(config) and step > config.warmup_steps:
        run.plateau_scale = max(PLATEAU_MIN_SCALE, run.plateau_scale * PLATEAU_FACTOR)
        run.since_plateau = 0
    run.stop = run.since_best >= config.patience_steps and step >= config.min_steps
    best = run.best
    report = EpochReport(
        epoch=epoch, step=step, train_loss=train_loss, val_loss=val["val_mse"], val_pearson=val["val_pearson"],
        best_val_loss=best.val_loss, best_val_pearson=best.val_pearson, best_epoch=best.epoch, improved=improved,
        test=dict(best.test), stop=run.stop, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
    )  # fmt: skip
    run.history.append(report.metrics())
    return report
