"""Gene tokens: one token per gene of a region, its identity plus its expression value.

Every family with single-gene tokens (cross_attention, shared_self_attention_gene2vec)
builds them here, from the same state-dict keys under `gene_tokens.`:

    token(g, x) = identity(g) + value(g, x)                         (d_model each)

- identity(g) = LayerNorm(W (gene_vectors[g] - mean over genes)): the gene's vector (Gene2Vec,
  co-expression or a learned one-hot vector, see xattn.data.genevec), centred across genes,
  projected to d_model and normalised, so every kind of gene vector enters at unit scale
  whatever its own. Centring (and no bias in W) keeps what all genes share from dominating:
  what is left is what tells one gene from another.
- value(g, x), by `expression_encoding`:
  - "continuous": z * w_g, with z = (x - mean_g) / std_g the gene's expression standardised
    with training-region statistics and w_g a learned vector per gene (the numerical-feature
    tokenizer of FT-Transformer, Gorishniy et al. 2021). Linear in z, so a region outside the
    training range (a held-out patch at the end of a spatial gradient) still gets a distinct
    token instead of falling into the last bin.
  - "quantile_bins": an embedding of the bin of x among `expression_bins` bins whose edges are
    the gene's quantiles over the training regions (each bin holds about as many training
    regions).
  - "equal_bins": the reference design, equal-width bins on [0, 1] (values outside are
    clamped and 1.0 falls in the last bin).
  - "learned_bins" (the reference's planned "dynamic binning"): the bin edges are parameters
    that train with the model, initialised at the training-region quantiles. A value belongs
    to each bin softly, p_k(x) = s_k(x) - s_{k+1}(x) with s_k(x) = sigmoid((x - e_k) / tau_g),
    and its token is the p-weighted mean of the bin embeddings, so the loss has a gradient
    with respect to every edge. tau_g = bin_temperature * std_g: the softness is measured in
    the gene's own spread, and bin_temperature -> 0 gives the hard quantile bins. Edges stay
    sorted by construction (the first edge plus cumulative softplus gaps).

Balance. identity has unit variance per dimension by construction, and w_g and the bin
embeddings start as N(0, 1) draws, so at initialisation the part of a token that tells genes
apart and the part that tells regions apart have the same scale (tests/test_gene_tokens.py
measures both variances). In the reference design the bin embedding (a default-initialised
Linear on one-hot bins) was about 10x the co-expression vectors, so each query saw G
near-identical keys.

Data-fitted statistics (per-gene mean, std and bin edges) are buffers set by
`fit_to_training_regions` from the training regions' expression only; they travel in the
state dict, so a checkpoint evaluates with the statistics it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xattn.errors import SpecError
from xattn.models.layers import choice, positive_int

EXPRESSION_ENCODINGS = ("continuous", "quantile_bins", "equal_bins", "learned_bins")
MIN_EDGE_GAP = 1e-4  # learned_bins: the smallest gap the initial quantile edges are given
# A standardised value beyond this is an outlier, not information: it is clipped so one
# extreme region cannot dominate a token.
MAX_ABS_Z = 8.0
MIN_STD = 1e-3  # expression is in [0, 1]; a gene flatter than this is treated as constant


@dataclass(kw_only=True)
class GeneTokenFields:
    """The token hyperparameters of every family with single-gene tokens (a config mixin:
    cross_attention, shared_self_attention_gene2vec), checked by `check_gene_token_fields`."""

    expression_encoding: str = "continuous"  # | "quantile_bins" | "equal_bins" | "learned_bins"
    expression_bins: int = 5  # bins of the binned encodings
    bin_temperature: float = 0.1  # learned_bins: softness, in units of each gene's training std

    def check_gene_token_fields(self) -> None:
        self.expression_encoding = choice("expression_encoding", self.expression_encoding, EXPRESSION_ENCODINGS)
        self.expression_bins = positive_int("expression_bins", self.expression_bins)
        if self.expression_bins < 2:
            raise SpecError(f"expression_bins={self.expression_bins} is too few: use at least 2 bins")
        temperature = self.bin_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise SpecError(f"bin_temperature={temperature!r} is not a positive number: try 0.1")
        self.bin_temperature = float(temperature)


def gene_tokens_of(config, gene_vectors: Tensor | None) -> GeneTokens:
    """The gene tokens of a config with GeneTokenFields, n_genes, gene_vector_dim, d_model and
    learn_gene_vectors: the one place every family builds them."""
    return GeneTokens(
        config.n_genes, config.gene_vector_dim, config.d_model,
        encoding=config.expression_encoding, bins=config.expression_bins, temperature=config.bin_temperature,
        learn_gene_vectors=config.learn_gene_vectors, gene_vectors=gene_vectors,
    )  # fmt: skip


def attach_gene_vectors(module: nn.Module, n_genes: int, dim: int, learn: bool, gene_vectors: Tensor | None) -> None:
    """Keep (n_genes, dim) vectors under the key "gene_vectors": a trainable parameter when
    `learn`, else a buffer.

    Without vectors, learnable ones start as N(0, 0.02^2) draws from the caller-seeded global
    RNG, and fixed ones as zeros that `load_state_dict` fills (how a checkpoint is rebuilt
    without the original vector file).
    """
    shape = (n_genes, dim)
    if gene_vectors is None:
        gene_vectors = torch.randn(shape) * 0.02 if learn else torch.zeros(shape)
    elif tuple(gene_vectors.shape) != shape:
        raise SpecError(
            f"gene vectors have shape {tuple(gene_vectors.shape)} but the model expects {shape}: "
            "set n_genes and gene_vector_dim from the vectors"
        )
    gene_vectors = gene_vectors.detach().clone().float()
    if learn:
        module.gene_vectors = nn.Parameter(gene_vectors)
    else:
        module.register_buffer("gene_vectors", gene_vectors)


class GeneTokens(nn.Module):
    """(N, G) expression of N regions -> (N, G, d_model) gene tokens; see the module docstring."""

    def __init__(
        self,
        n_genes: int,
        gene_vector_dim: int,
        d_model: int,
        *,
        encoding: str = "continuous",
        bins: int = 5,
        temperature: float = 0.1,
        learn_gene_vectors: bool = False,
        gene_vectors: Tensor | None = None,
    ) -> None:
        super().__init__()
        if encoding not in EXPRESSION_ENCODINGS:
            raise SpecError(
                f"expression_encoding={encoding!r} is not known: choose one of {', '.join(EXPRESSION_ENCODINGS)}"
            )
        self.encoding = encoding
        attach_gene_vectors(self, n_genes, gene_vector_dim, learn_gene_vectors, gene_vectors)
        self.identity_proj = nn.Linear(gene_vector_dim, d_model, bias=False)
        self.identity_ln = nn.LayerNorm(d_model)
        # Until fitted: the identity transform of [0, 1] values and equal-width edges.
        self.register_buffer("expression_mean", torch.zeros(n_genes))
        self.register_buffer("expression_std", torch.ones(n_genes))
        equal_edges = torch.linspace(0.0, 1.0, bins + 1)[1:-1].expand(n_genes, -1).contiguous()
        if encoding == "learned_bins":
            self.temperature = temperature
            self.edge_start = nn.Parameter(torch.empty(n_genes))
            self.edge_gaps = nn.Parameter(torch.empty(n_genes, bins - 2))  # before softplus
            self._set_edges(equal_edges)
        else:
            self.register_buffer("bin_edges", equal_edges)
        if encoding == "continuous":
            self.value_weight = nn.Parameter(torch.randn(n_genes, d_model))
        else:
            self.bin_embedding = nn.Embedding(bins, d_model)
            nn.init.normal_(self.bin_embedding.weight)

    @torch.no_grad()
    def fit_to_training_regions(self, expression: Tensor) -> None:
        """Set the per-gene statistics from the (n_train, G) expression of the training regions."""
        expression = expression.to(self.expression_mean.device, torch.float32)
        self.expression_mean.copy_(expression.mean(dim=0))
        self.expression_std.copy_(expression.std(dim=0).clamp_min(MIN_STD))
        if self.encoding in ("quantile_bins", "learned_bins"):
            n_edges = self.bin_embedding.num_embeddings - 1
            levels = torch.arange(1, n_edges + 1, device=expression.device, dtype=torch.float32) / (n_edges + 1)
            quantiles = torch.quantile(expression, levels, dim=0).T
            if self.encoding == "quantile_bins":
                self.bin_edges.copy_(quantiles)
            else:
                self._set_edges(quantiles)

    @torch.no_grad()
    def _set_edges(self, edges: Tensor) -> None:
        """Set the learned edges' parameters so that `edges()` returns (G, B-1) sorted `edges`
        (ties are spread by MIN_EDGE_GAP: a softplus gap cannot be 0)."""
        gaps = edges.diff(dim=1).clamp_min(MIN_EDGE_GAP)
        self.edge_start.copy_(edges[:, 0])
        self.edge_gaps.copy_(gaps + torch.log(-torch.expm1(-gaps)))  # the inverse of softplus

    def edges(self) -> Tensor:
        """(G, bins - 1) bin edges, sorted along each row: learned ones, or the fitted buffer."""
        if self.encoding != "learned_bins":
            return self.bin_edges
        steps = torch.cat([self.edge_start.unsqueeze(1), F.softplus(self.edge_gaps)], dim=1)
        return steps.cumsum(dim=1)

    def forward(self, expression: Tensor) -> Tensor:
        return self.identities() + self.values(expression)

    def identities(self) -> Tensor:
        """(G, d): the identity part of each gene's token, computed once per forward, not per region."""
        centred = self.gene_vectors - self.gene_vectors.mean(dim=0)
        return self.identity_ln(self.identity_proj(centred))

    def values(self, expression: Tensor) -> Tensor:
        """(N, G) -> (N, G, d): the expression part of each token."""
        if self.encoding == "continuous":
            z = ((expression - self.expression_mean) / self.expression_std).clamp(-MAX_ABS_Z, MAX_ABS_Z)
            return z.unsqueeze(-1) * self.value_weight
        if self.encoding == "learned_bins":
            return self.soft_bins(expression) @ self.bin_embedding.weight
        return self.bin_embedding(self.bins(expression))

    def soft_bins(self, expression: Tensor) -> Tensor:
        """(N, G) -> (N, G, bins): each value's soft membership of the learned bins (sums to 1)."""
        tau = (self.temperature * self.expression_std).unsqueeze(-1)  # (G, 1)
        above = torch.sigmoid((expression.unsqueeze(-1) - self.edges()) / tau)  # (N, G, B-1): s_k, decreasing in k
        ones, zeros = torch.ones_like(above[..., :1]), torch.zeros_like(above[..., :1])
        return torch.cat([ones, above], dim=-1) - torch.cat([above, zeros], dim=-1)

    def bins(self, expression: Tensor) -> Tensor:
        """(N, G) bin indices: how many of the gene's edges lie at or below the value."""
        if self.encoding == "equal_bins":
            expression = expression.clamp(0.0, 1.0)
        edges = self.edges().detach()
        values = expression.to(edges.dtype).T.contiguous()  # (G, N): one sorted row of edges per gene
        return torch.searchsorted(edges.contiguous(), values, right=True).T
