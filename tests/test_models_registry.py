"""The model-family registry: trial params -> config -> model, and JSON -> model."""

import json

import numpy as np
import pytest
import torch

from xattn.errors import SpecError
from xattn.models import (
    MODEL_FAMILIES,
    CrossAttentionConfig,
    CrossAttentionGene2VecModel,
    build_model,
    config_to_dict,
    make_config,
    model_from_dict,
    model_param_names,
    model_to_dict,
)

TRIAL = {
    "d_model": 32,
    "nhead": 4,
    "num_layers": 1,
    "deep_hidden_dims": [16, 8],
    "pooling_mode": "cls",
    "learning_rate": 1e-3,
    "batch_size": 64,
    "cosine_lr": True,
    "genevec": "gene2vec",
}


def test_cross_attention_is_registered():
    fam = MODEL_FAMILIES["cross_attention"]
    assert fam.config_cls is CrossAttentionConfig and fam.model_cls is CrossAttentionGene2VecModel
    assert fam.description


def test_model_param_names_exclude_data_fields():
    names = model_param_names("cross_attention")
    assert "d_model" in names and "deep_hidden_dims" in names and "use_alibi" in names
    assert not names & {"n_genes", "gene_vector_dim", "learn_gene_vectors", "learning_rate", "batch_size"}


def test_make_config_ignores_non_model_keys_and_converts_lists():
    config = make_config("cross_attention", TRIAL, n_genes=16)
    assert config.deep_hidden_dims == (16, 8)
    assert (config.d_model, config.num_layers, config.pooling_mode, config.n_genes) == (32, 1, "cls", 16)
    assert config.expression_bins == 5  # unspecified: the default
    assert make_config("cross_attention", TRIAL, n_genes=16, learn_gene_vectors=True).learn_gene_vectors


def test_make_config_accepts_numpy_scalars_and_string_layer_widths():
    params = {
        "d_model": np.int64(64),
        "nhead": np.int64(8),
        "deep_hidden_dims": "256-128",
        "dropout_rate": np.float64(0.2),
    }
    config = make_config("cross_attention", params, n_genes=16)
    assert config.d_model == 64 and type(config.d_model) is int
    assert config.deep_hidden_dims == (256, 128)
    assert make_config("cross_attention", {"deep_hidden_dims": "512,256"}, n_genes=4).deep_hidden_dims == (512, 256)
    json.dumps(config_to_dict(config))


def test_make_config_rejects_d_model_not_divisible_by_nhead():
    with pytest.raises(SpecError, match="d_model=100 is not divisible by nhead=3: choose d_model a multiple of nhead"):
        make_config("cross_attention", {"d_model": 100, "nhead": 3}, n_genes=16)


def test_unknown_family_lists_families_and_suggests_a_near_miss():
    with pytest.raises(SpecError) as err:
        make_config("cross_atention", TRIAL, n_genes=16)
    message = str(err.value)
    assert "did you mean 'cross_attention'?" in message and "cross_attention" in message.split("known families: ")[1]
    assert "\n" not in message
    with pytest.raises(SpecError, match="known families"):
        build_model("zzz", TRIAL, n_genes=16)


def test_build_model_takes_the_vector_dimension_from_the_vectors():
    model = build_model("cross_attention", TRIAL, n_genes=16, gene_vectors=torch.randn(16, 12))
    assert isinstance(model, CrossAttentionGene2VecModel)
    assert model.config.gene_vector_dim == 12 and model.gene_tokens.gene_vectors.shape == (16, 12)
    learned = build_model("cross_attention", TRIAL, n_genes=16, learn_gene_vectors=True)
    assert learned.gene_tokens.gene_vectors.requires_grad and learned.config.gene_vector_dim == 200


def test_config_dict_is_json_and_rebuilds_the_same_config():
    config = make_config("cross_attention", TRIAL, n_genes=16, gene_vector_dim=12)
    d = json.loads(json.dumps({"family": "cross_attention", "config": config_to_dict(config)}))
    assert d["config"]["deep_hidden_dims"] == [16, 8]
    model = model_from_dict(d)
    assert model.config == config
    assert model_to_dict(model) == d


def test_model_from_dict_refuses_malformed_descriptions():
    with pytest.raises(SpecError, match='"family"'):
        model_from_dict({"d_model": 32})
    config = config_to_dict(make_config("cross_attention", {}, n_genes=4))
    with pytest.raises(SpecError, match="unknown fields bogus"):
        model_from_dict({"family": "cross_attention", "config": {**config, "bogus": 1}})
    with pytest.raises(SpecError, match="not divisible"):
        model_from_dict({"family": "cross_attention", "config": {**config, "nhead": 3}})
