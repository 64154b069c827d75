"""Models: the cross-attention gene-token model, the self-attention baselines, the attention dispatch, the registry."""

from xattn.models.attention import (
    FLASH_ATTN_AVAILABLE,
    alibi_bias,
    alibi_slopes,
    attention,
    explicit_attention,
    select_backend,
)
from xattn.models.cross_attention import CrossAttentionConfig, CrossAttentionGene2VecModel
from xattn.models.mlp import MLPConfig, MLPModel
from xattn.models.registry import (
    MODEL_FAMILIES,
    ModelFamily,
    build_model,
    config_to_dict,
    family_of,
    get_family,
    make_config,
    model_from_dict,
    model_param_names,
    model_to_dict,
)
from xattn.models.self_attention import (
    SharedSelfAttentionGene2VecModel,
    SharedSelfAttentionModel,
    SharedSelfAttentionPoolingModel,
)

__all__ = [
    "FLASH_ATTN_AVAILABLE",
    "MLPConfig",
    "MLPModel",
    "MODEL_FAMILIES",
    "CrossAttentionConfig",
    "CrossAttentionGene2VecModel",
    "ModelFamily",
    "alibi_bias",
    "alibi_slopes",
    "attention",
    "build_model",
    "config_to_dict",
    "explicit_attention",
    "family_of",
    "get_family",
    "make_config",
    "model_from_dict",
    "model_param_names",
    "model_to_dict",
    "select_backend",
    "SharedSelfAttentionGene2VecModel",
    "SharedSelfAttentionModel",
    "SharedSelfAttentionPoolingModel",
]
