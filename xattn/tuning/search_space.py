"""Each model family's default search space and fixed settings, used when a study compares
families (`compare_with`) and the spec does not give a family its own.

Sized for CPUs and chosen by measurement on hcp-s100 spatial folds with the 100 most
variable genes (docs/results.md); a spec overrides them per family under
`comparison.baselines.<family>`.
"""

from __future__ import annotations

from typing import Any

LEARNING_RATE = {"type": "loguniform", "low": 2.0e-4, "high": 2.0e-3}

# Upstream's SMT (GeneEx2Conn's best configuration, see xattn/models/self_attention.py):
# chunks of 60 genes, ALiBi instead of positions, each token projected to 10 dims before
# flattening, BatchNorm in the head, output clamped to [-1, 1], lr 1e-4, weight decay 1e-4,
# dropout 0.2.
UPSTREAM_SMT = {
    "token_encoder_dim": 60,
    "use_alibi": True,
    "positional_embedding": False,
    "token_output_dim": 10,
    "head_batchnorm": True,
    "output_clamp": True,
    "d_model": 128,
    "nhead": 2,
    "num_layers": 2,
    "deep_hidden_dims": [256, 128],
    "transformer_dropout": 0.1,
    "dropout_rate": 0.2,
    "weight_decay": 1.0e-4,
}

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "cross_attention": {
        "num_layers": [1, 2],
        "pooling_mode": ["mean", "attention"],
        "cls_init": ["random", "spatial"],
        "dropout_rate": [0.1, 0.3],
        "learning_rate": LEARNING_RATE,
    },
    "shared_self_attention": {
        "token_encoder_dim": [20, 60],
        "dropout_rate": [0.1, 0.2],
        "learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-3},
    },
    "shared_self_attention_pooling": {
        "token_encoder_dim": [20, 60],
        "dropout_rate": [0.1, 0.2],
        "learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-3},
    },
    "shared_self_attention_gene2vec": {
        "num_layers": [1, 2],
        "dropout_rate": [0.1, 0.3],
        "learning_rate": LEARNING_RATE,
    },
    "mlp": {
        "pca_components": [0, 20],
        "use_distance": [False, True],
        "dropout_rate": [0.1, 0.3],
        "learning_rate": {"type": "loguniform", "low": 3.0e-4, "high": 3.0e-3},
    },
    # lr 1e-2 converges within a few hundred steps for the two-parameter fits; the low-rank
    # bilinear model needs about 1e-3.
    "distance_decay": {"learning_rate": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
    "cge": {"learning_rate": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
    "bilinear_lowrank": {
        "rank": [4, 8, 16, 32],
        "weight_decay": [0.0, 0.01, 0.1],
        "learning_rate": {"type": "loguniform", "low": 3.0e-4, "high": 3.0e-3},
    },
}

_SINGLE_GENE_TOKENS = {
    "expression_encoding": "continuous",
    "d_model": 32,
    "nhead": 2,
    "deep_hidden_dims": [256, 128],
    "head_batchnorm": True,
    "transformer_dropout": 0.1,
    "weight_decay": 0.05,
}
# The reference models have three parameters or a low-rank pair of matrices: they cannot
# overfit the way a network does, so they train to convergence instead of stopping at the
# first validation wobble.
_REFERENCE = {"batch_size": 256}
DEFAULT_FIXED: dict[str, dict[str, Any]] = {
    "cross_attention": _SINGLE_GENE_TOKENS,
    "shared_self_attention": {k: v for k, v in UPSTREAM_SMT.items() if k not in ("token_encoder_dim", "dropout_rate")},
    "shared_self_attention_pooling": {
        k: v for k, v in UPSTREAM_SMT.items() if k not in ("token_encoder_dim", "dropout_rate", "token_output_dim")
    },
    "shared_self_attention_gene2vec": _SINGLE_GENE_TOKENS,
    "mlp": {"deep_hidden_dims": [256, 128], "head_batchnorm": True},
    "distance_decay": _REFERENCE,
    "cge": _REFERENCE,
    "bilinear_lowrank": _REFERENCE,
}

BASELINES = [
    "shared_self_attention",
    "shared_self_attention_pooling",
    "shared_self_attention_gene2vec",
    "mlp",
    "distance_decay",
    "cge",
    "bilinear_lowrank",
]
