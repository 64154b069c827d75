"""TrainConfig: one trial's optimisation settings, and the learning-rate schedule they define.

The schedule is a pure function of the optimizer step (`learning_rate_at`) plus a plateau
scale that lives in the optimizer's param groups, so a resumed fit needs no scheduler object
and follows the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xattn.errors import SpecError

PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine", "plateau")
MONITORS = ("val_loss", "val_pearson")  # the validation metric that picks the best epoch
PLATEAU_FACTOR = 0.5  # the learning rate is halved on a plateau...
PLATEAU_MIN_SCALE = 1 / 64  # ...down to this fraction of learning_rate


@dataclass
class TrainConfig:
    """Optimisation settings of one trial (the model's own settings live elsewhere).

    The defaults were measured on hcp-s100 spatial folds (docs/specs.md, "Training recipe").
    """

    learning_rate: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 100
    # "plateau": halve the rate after patience_steps // 3 steps without a better validation
    # metric (down to 1/64 of it); "cosine": anneal to 0 over max_epochs; "constant".
    lr_schedule: str = "plateau"
    cosine_lr: bool = False  # the reference's switch: true means lr_schedule "cosine"
    warmup_steps: int = 100  # linear warm-up of the learning rate over the first steps
    grad_clip: float = 1.0  # largest gradient norm (clipped before each step); 0: no clipping
    weight_decay: float = 0.01
    patience_steps: int = 1500  # stop after this many steps without a better validation metric...
    min_steps: int = 0  # ...but never before this many steps
    monitor: str = "val_loss"  # what "better" means: lower val_loss or higher val_pearson
    seed: int = 0
    eval_batch_size: int = 4096
    device: str = "cpu"
    precision: str = "fp32"
    # The most pairs in one forward/backward pass; a larger batch is split into near-equal
    # passes whose gradients are summed before the step: the same gradient (up to rounding) in
    # bounded memory, except that a BatchNorm head normalises each pass on its own. 0: no limit.
    max_pairs_per_pass: int = 0

    def __post_init__(self) -> None:
        at_least = {
            "learning_rate": (0, math.isfinite(self.learning_rate) and self.learning_rate >= 0),
            "batch_size": (1, self.batch_size >= 1),
            "max_epochs": (1, self.max_epochs >= 1),
            "warmup_steps": (0, self.warmup_steps >= 0),
            "grad_clip": (0, math.isfinite(self.grad_clip) and self.grad_clip >= 0),
            "weight_decay": (0, math.isfinite(self.weight_decay) and self.weight_decay >= 0),
            "patience_steps": (1, self.patience_steps >= 1),
            "min_steps": (0, self.min_steps >= 0),
            "seed": (0, self.seed >= 0),
            "eval_batch_size": (1, self.eval_batch_size >= 1),
            "max_pairs_per_pass": (0, self.max_pairs_per_pass >= 0),
        }
        for name, (bound, ok) in at_least.items():
            if not ok:
                raise SpecError(f"training config: {name} must be >= {bound}, got {getattr(self, name)!r}")
        for name, choices in (("precision", PRECISIONS), ("lr_schedule", LR_SCHEDULES), ("monitor", MONITORS)):
            if getattr(self, name) not in choices:
                raise SpecError(
                    f"training config: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.cosine_lr:
            self.lr_schedule = "cosine"
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise SpecError(f"training config: device {self.device!r} is not a torch device ({error})") from None

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Build from a trial's flat parameter dict, ignoring keys that are not ours.

        A trial's params mix model and optimiser settings (d_model next to
        learning_rate), so unknown keys are skipped, not errors. Values are coerced to
        the field's type because samplers hand back numpy scalars or floats for ints.
        `overrides` win over `params` (e.g. device chosen by the runner).
        """
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        merged = {**params, **overrides}
        return cls(**{k: _coerce(k, kinds[k], v) for k, v in merged.items() if k in kinds})


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Coerce a sampled value to a TrainConfig field type, refusing lossy conversions."""
    try:
        if kind == "int" and not isinstance(value, (bool, np.bool_)) and float(value) == int(value):
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError, OverflowError):
        pass
    if kind in ("int", "float"):
        expected = "an integer" if kind == "int" else "a number"
        raise SpecError(f"training config: {name} must be {expected}, got {value!r}")
    if kind == "bool":
        if value not in (True, False):  # also accepts 0/1 and numpy bools
            raise SpecError(f"training config: {name} must be true or false, got {value!r}")
        return bool(value)
    return str(value)


def plateau_steps(config: TrainConfig) -> int:
    """Steps without a better validation metric before the plateau schedule halves the rate:
    a third of the patience, so a run gets two reductions before it is stopped."""
    return max(1, config.patience_steps // 3)


def plateau_scale_of(optimizer: torch.optim.Optimizer) -> float:
    """The plateau schedule's current scale of the learning rate (1 until the first plateau)."""
    return optimizer.param_groups[0].get("plateau_scale", 1.0)


def reduce_plateau_scale(optimizer: torch.optim.Optimizer) -> None:
    """Multiply the plateau scale by PLATEAU_FACTOR, not below PLATEAU_MIN_SCALE."""
    # Kept in the param groups, so the optimizer's state_dict (the checkpoint) carries it.
    scale = max(PLATEAU_MIN_SCALE, plateau_scale_of(optimizer) * PLATEAU_FACTOR)
    for group in optimizer.param_groups:
        group["plateau_scale"] = scale


def learning_rate_at(config: TrainConfig, step: int, steps_per_epoch: int, plateau_scale: float = 1.0) -> float:
    """Learning rate of 1-based optimizer `step`: linear warm-up over `warmup_steps`, then the
    schedule. A pure function of the step (and of the plateau scale the optimizer state
    carries), so resuming needs no scheduler object and cannot drift from the uninterrupted run.

    "cosine" is the closed form of torch's CosineAnnealingLR stepped once per optimizer step
    with T_max = max_epochs * steps_per_epoch and eta_min = 0.
    """
    warmup = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        total = config.max_epochs * steps_per_epoch
        return warmup * config.learning_rate * (1 + math.cos(math.pi * (step - 1) / total)) / 2
    if config.lr_schedule == "plateau":
        return warmup * config.learning_rate * plateau_scale
    return warmup * config.learning_rate
