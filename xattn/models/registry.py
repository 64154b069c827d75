"""Model families by name: build a model from a trial's flat parameter dict, or from JSON.

Adding a family is one entry in MODEL_FAMILIES: a config dataclass (validated in
__post_init__, with n_genes / gene_vector_dim / learn_gene_vectors fields) and a model
class whose __init__ is (config, gene_vectors=None).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from xattn.errors import SpecError
from xattn.models.baselines import (
    BilinearLowRankConfig,
    BilinearLowRankModel,
    CGEConfig,
    CorrelatedGeneExpressionModel,
    DistanceDecayConfig,
    DistanceDecayModel,
)
from xattn.models.cross_attention import CrossAttentionConfig, CrossAttentionGene2VecModel
from xattn.models.cross_attention import blind_spot as cross_attention_blind_spot
from xattn.models.mlp import MLPConfig, MLPModel
from xattn.models.self_attention import (
    SharedSelfAttentionConfig,
    SharedSelfAttentionGene2VecConfig,
    SharedSelfAttentionGene2VecModel,
    SharedSelfAttentionModel,
    SharedSelfAttentionPoolingConfig,
    SharedSelfAttentionPoolingModel,
)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    description: str
    # Whether predictions depend on both regions' expression; false for a reference built on
    # something else on purpose (distance decay).
    uses_expression: bool = True
    # config -> (field, what its predictions cannot depend on), or None: see `blind_spot`.
    blind_spot: Callable[[Any], tuple[str, str] | None] | None = None


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "cross_attention": ModelFamily(
        name="cross_attention",
        config_cls=CrossAttentionConfig,
        model_cls=CrossAttentionGene2VecModel,
        description="CLS + gene tokens of region i cross-attend to gene tokens of region j",
        blind_spot=cross_attention_blind_spot,
    ),
    "shared_self_attention": ModelFamily(
        name="shared_self_attention",
        config_cls=SharedSelfAttentionConfig,
        model_cls=SharedSelfAttentionModel,
        description="gene-chunk tokens, shared self-attention per region, flattened; MLP on [h_i, h_j]",
    ),
    "shared_self_attention_pooling": ModelFamily(
        name="shared_self_attention_pooling",
        config_cls=SharedSelfAttentionPoolingConfig,
        model_cls=SharedSelfAttentionPoolingModel,
        description="gene-chunk tokens, shared self-attention per region, attention pooling; MLP on [h_i, h_j]",
    ),
    "shared_self_attention_gene2vec": ModelFamily(
        name="shared_self_attention_gene2vec",
        config_cls=SharedSelfAttentionGene2VecConfig,
        model_cls=SharedSelfAttentionGene2VecModel,
        description="single-gene tokens (gene vector + bin), shared self-attention per region, attention pooling",
    ),
    "distance_decay": ModelFamily(
        name="distance_decay",
        config_cls=DistanceDecayConfig,
        model_cls=DistanceDecayModel,
        description="reference: a * exp(-d_ij / lambda) + b on the regions' euclidean distance",
        uses_expression=False,
    ),
    "cge": ModelFamily(
        name="cge",
        config_cls=CGEConfig,
        model_cls=CorrelatedGeneExpressionModel,
        description="reference: a * corr(x_i, x_j) + b, correlated gene expression of the two regions",
    ),
    "bilinear_lowrank": ModelFamily(
        name="bilinear_lowrank",
        config_cls=BilinearLowRankConfig,
        model_cls=BilinearLowRankModel,
        description="reference: (x_i U) . (x_j V) + b with U, V of shape (genes, rank)",
    ),
    "mlp": ModelFamily(
        name="mlp",
        config_cls=MLPConfig,
        model_cls=MLPModel,
        description="MLP on both regions' expression (standardised genes or PCA fitted on training regions), "
        "optional coordinates and distance",
    ),
}

# Set from the data (gene count, vector file), never searched over.
DATA_FIELDS = frozenset({"n_genes", "gene_vector_dim", "learn_gene_vectors"})


def get_family(family: str | ModelFamily) -> ModelFamily:
    """The registered family of that name, or a SpecError naming the known ones."""
    if isinstance(family, ModelFamily):
        return family
    if family in MODEL_FAMILIES:
        return MODEL_FAMILIES[family]
    known = ", ".join(sorted(MODEL_FAMILIES))
    near = difflib.get_close_matches(str(family), list(MODEL_FAMILIES), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise SpecError(f"unknown model family {family!r}: {hint}known families: {known}")


def model_param_names(family: str | ModelFamily) -> set[str]:
    """The hyperparameters of a family: its config fields other than the data-given ones."""
    fields = dataclasses.fields(get_family(family).config_cls)
    return {f.name for f in fields} - DATA_FIELDS


def make_config(
    family: str | ModelFamily,
    params: Mapping[str, Any],
    *,
    n_genes: int,
    learn_gene_vectors: bool = False,
    gene_vector_dim: int | None = None,
) -> Any:
    """A validated config from a trial's params; keys that are not model fields
    (learning_rate, batch_size, genevec, ...) are ignored. gene_vector_dim=None keeps the
    family's default."""
    fam = get_family(family)
    kwargs = {name: _plain(fam, name, params[name]) for name in model_param_names(fam) if name in params}
    kwargs.update(n_genes=n_genes, learn_gene_vectors=learn_gene_vectors)
    if gene_vector_dim is not None:
        kwargs["gene_vector_dim"] = gene_vector_dim
    return fam.config_cls(**kwargs)


def build_model(
    family: str | ModelFamily,
    params: Mapping[str, Any],
    *,
    n_genes: int,
    gene_vectors: Tensor | None = None,
    learn_gene_vectors: bool = False,
) -> nn.Module:
    """make_config + the model; gene_vector_dim is taken from `gene_vectors` when given."""
    fam = get_family(family)
    dim = None if gene_vectors is None else int(gene_vectors.shape[1])
    config = make_config(fam, params, n_genes=n_genes, learn_gene_vectors=learn_gene_vectors, gene_vector_dim=dim)
    return fam.model_cls(config, gene_vectors=gene_vectors)


def fit_to_training_regions(model: nn.Module, expression: Tensor) -> None:
    """Fit what a model derives from data (token statistics, bin edges, PCA) to the (n_train, G)
    expression of the training regions; models without such statistics are left as they are.

    The fitted values are buffers, so they are saved with the weights and a checkpoint never
    needs the training data again.
    """
    fit = getattr(model, "fit_to_training_regions", None)
    if fit is not None:
        fit(expression)


def blind_spot(family: str | ModelFamily, config: Any) -> tuple[str, str] | None:
    """(the field to blame, what a model of `family` with `config` cannot depend on although it
    should), or None when it sees both regions: a study refuses to train such configurations."""
    fam = get_family(family)
    return fam.blind_spot(config) if fam.blind_spot is not None else None


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config's fields as a JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def family_of(model_or_config: Any) -> ModelFamily:
    """The registered family a model or config instance belongs to."""
    for fam in MODEL_FAMILIES.values():
        if type(model_or_config) in (fam.model_cls, fam.config_cls):
            return fam
    raise SpecError(f"{type(model_or_config).__name__} is not a registered model family: add it to MODEL_FAMILIES")


def model_to_dict(model: nn.Module) -> dict[str, Any]:
    """{"family": ..., "config": {...}}: what model_from_dict needs to rebuild `model`."""
    return {"family": family_of(model).name, "config": config_to_dict(model.config)}


def model_from_dict(d: Mapping[str, Any]) -> nn.Module:
    """Rebuild an untrained model from {"family": ..., "config": {...}} (a checkpoint's JSON);
    the caller loads the weights (gene vectors included) with load_state_dict."""
    if not isinstance(d, Mapping) or "family" not in d or "config" not in d:
        raise SpecError('model description must be {"family": ..., "config": {...}}: write it with model_to_dict')
    fam = get_family(d["family"])
    known = {f.name for f in dataclasses.fields(fam.config_cls)}
    unknown = sorted(set(d["config"]) - known)
    if unknown:
        raise SpecError(
            f"{fam.name} config has unknown fields {', '.join(unknown)}: was it written by another version of xattn?"
        )
    config = fam.config_cls(**{k: _plain(fam, k, v) for k, v in d["config"].items()})
    return fam.model_cls(config)


def _plain(family: ModelFamily, name: str, value: Any) -> Any:
    """Lists (JSON, YAML) become tuples. For tuple-valued fields a string "512-256-128" or
    "512,256,128" also becomes a tuple of ints: Optuna categorical choices must be scalars,
    so a search space often spells layer widths that way."""
    if isinstance(value, list):
        return tuple(value)
    default = next(f.default for f in dataclasses.fields(family.config_cls) if f.name == name)
    if isinstance(default, tuple) and isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*[-,x]\s*\d+)*\s*", value):
        return tuple(int(part) for part in re.split(r"\s*[-,x]\s*", value.strip()))
    return value
