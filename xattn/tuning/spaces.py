"""Each model family's default search space and fixed settings, used when a study compares
families (`compare_with`) and the spec does not give a baseline its own.

Sized for CPUs; a spec overrides them per family under `comparison.baselines.<family>`.
"""

from __future__ import annotations

from typing import Any

LEARNING_RATE = {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3}

_CHUNK_SPACE = {
    "d_model": [32, 64],
    "nhead": [2, 4],
    "num_layers": [1, 2],
    "token_encoder_dim": [8, 16, 32],
    "dropout_rate": [0.0, 0.1],
    "learning_rate": LEARNING_RATE,
}

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "cross_attention": {
        "d_model": [16, 32],
        "nhead": [1, 2],
        "num_layers": [1, 2],
        "expression_bins": [3, 5, 8],
        "cls_init": ["random", "spatial"],
        "pooling_mode": ["mean", "attention", "cls"],
        "learning_rate": LEARNING_RATE,
    },
    "shared_self_attention": _CHUNK_SPACE,
    "shared_self_attention_pooling": _CHUNK_SPACE,
    "shared_self_attention_gene2vec": {
        "d_model": [16, 32],
        "nhead": [1, 2],
        "num_layers": [1, 2],
        "expression_bins": [3, 5, 8],
        "learning_rate": LEARNING_RATE,
    },
    # Measured on hcp-s100: lr 1e-2 converges within 5-26 epochs for the two-parameter fits;
    # the low-rank bilinear model needs about 1e-3.
    "distance_decay": {"learning_rate": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
    "cge": {"learning_rate": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
    "bilinear_lowrank": {
        "rank": [4, 8, 16, 32],
        "weight_decay": [0.0, 0.01, 0.1],
        "learning_rate": {"type": "loguniform", "low": 3.0e-4, "high": 3.0e-3},
    },
}

_NETWORK_FIXED = {"deep_hidden_dims": [128, 64], "transformer_dropout": 0.0}
DEFAULT_FIXED: dict[str, dict[str, Any]] = {
    "cross_attention": _NETWORK_FIXED,
    "shared_self_attention": _NETWORK_FIXED,
    "shared_self_attention_pooling": _NETWORK_FIXED,
    "shared_self_attention_gene2vec": _NETWORK_FIXED,
    "distance_decay": {"batch_size": 256},
    "cge": {"batch_size": 256},
    "bilinear_lowrank": {"batch_size": 256},
}

BASELINES = [
    "shared_self_attention",
    "shared_self_attention_pooling",
    "shared_self_attention_gene2vec",
    "distance_decay",
    "cge",
    "bilinear_lowrank",
]
