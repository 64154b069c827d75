"""Training layer: fit a model on region pairs, score it, checkpoint it.

from xattn.training import PairData, TrainConfig, fit, save_checkpoint

result = fit(model, data, TrainConfig.from_params(trial_params), on_epoch=report)
"""

from xattn.training.checkpoint import (
    CHECKPOINT_FILES,
    load_checkpoint,
    load_checkpoint_weights,
    load_optimizer_state,
    read_checkpoint_config,
    save_checkpoint,
)
from xattn.training.config import TrainConfig, learning_rate_at
from xattn.training.metrics import regression_metrics
from xattn.training.pair_data import PairData
from xattn.training.trainer import (
    EpochReport,
    FitResult,
    TrainingDiverged,
    evaluate,
    fit,
    predict,
    train_epoch,
)

__all__ = [
    "CHECKPOINT_FILES",
    "EpochReport",
    "FitResult",
    "PairData",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "learning_rate_at",
    "load_checkpoint",
    "load_checkpoint_weights",
    "load_optimizer_state",
    "read_checkpoint_config",
    "predict",
    "regression_metrics",
    "save_checkpoint",
    "train_epoch",
]
