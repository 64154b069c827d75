"""Self-attention baselines: each region is encoded on its own, then the pair is combined.

The comparison table of the reference names three baselines for the cross-attention model:

| family                           | tokens       | attention         | readout           |
|----------------------------------|--------------|-------------------|-------------------|
| shared_self_attention            | gene chunks  | self (per region) | flatten           |
| shared_self_attention_pooling    | gene chunks  | self (per region) | attention pooling |
| shared_self_attention_gene2vec   | single genes | self (per region) | attention pooling |

All three share one skeleton (`_SelfAttentionPairModel`): a region's tokens go through a
pre-norm self-attention encoder (the same weights for both regions of a pair), the encoder
output is read out into one vector h per region, and an MLP head predicts the pair's
connectivity from the two encodings (see "Pair combination").

- Gene-chunk tokens: the G expression values are cut into ceil(G / token_encoder_dim)
  consecutive chunks; the last one is padded with zeros. Padding sits inside the last
  token (it is a real token that carries the remaining genes), so no attention mask is
  needed; the zeros only leave the matching input weights of the chunk projection unused.
  Each chunk goes through Linear(token_encoder_dim, d_model) plus a learned positional
  embedding, which is what tells the encoder (and a permutation-invariant pooling) which
  genes a token holds.
- Single-gene tokens: exactly the cross-attention model's gene tokens (gene vector plus an
  embedding of the binned expression, projected and normalised); `encode_genes` *is* the
  cross model's method, so the two families compute the same tokens from the same
  state-dict keys (`gene_vectors`, `bin_proj`, `token_proj`, `token_ln`). The gene vector
  identifies the gene, so there is no positional embedding.
- Pair combination. The flattening family concatenates [h_i, h_j] (as the reference
  does; its h is n_tokens * d_model wide, so anything more would multiply the head's
  first layer). The two pooling families use [h_i, h_j, h_i * h_j, |h_i - h_j|] (4 *
  d_model): the product and absolute difference give the head the regions' similarity
  directly, which connectivity depends on, for a head input of only 4 * d_model. With
  concat alone both pooled families sat at the mean predictor for ~18 epochs on the
  synthetic target (48 regions, d_model 16, 1 layer) where the flattening family learned
  within 5; with the interaction terms the chunk-pooling family learned within 8. The
  [h_i, h_j] part keeps the pair ordered, as in the cross model: (i, j) and (j, i) are
  different predictions, and a symmetric target is learned from both orders being
  training pairs, not imposed.
- Coordinates are not used: the baselines predict from expression alone, like the cross
  model's default "random" CLS. `forward` still takes them so every family is called the
  same way by the trainer.

Tokens and encodings depend on the region, not on the pair, so `forward` encodes each
unique region of the batch once and gathers; `forward_naive` encodes both sides of every
pair and is the reference the tests compare `forward` with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xattn.models.attention import attention
from xattn.models.cross_attention import (
    AttentionPooling,
    CrossAttentionConfig,
    CrossAttentionGene2VecModel,
    FeedForward,
    MLPHead,
    attach_gene_vectors,
    positive_int,
)

_CROSS_FIELDS = frozenset(f.name for f in dataclasses.fields(CrossAttentionConfig))


@dataclass
class _SelfAttentionConfig:
    """Hyperparameters all three families share; defaults follow the cross-attention model.

    gene_vector_dim and learn_gene_vectors are set from the data like the cross model's
    (the registry passes them to every family); the gene-chunk families ignore them.
    """

    n_genes: int
    gene_vector_dim: int = 200
    d_model: int = 128
    nhead: int = 4
    num_layers: int = 4
    deep_hidden_dims: tuple[int, ...] = (512, 256, 128)
    transformer_dropout: float = 0.1
    dropout_rate: float = 0.1
    learn_gene_vectors: bool = False

    def __post_init__(self) -> None:
        # Fields shared with the cross model follow its rules (and error messages), so a study
        # accepts and rejects the same values whichever family it runs.
        shared = [f.name for f in dataclasses.fields(self) if f.name in _CROSS_FIELDS]
        checked = CrossAttentionConfig(**{name: getattr(self, name) for name in shared})
        for name in shared:
            setattr(self, name, getattr(checked, name))


@dataclass
class _GeneChunkConfig(_SelfAttentionConfig):
    token_encoder_dim: int = 32  # genes per token; the last token is zero-padded

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_encoder_dim = positive_int("token_encoder_dim", self.token_encoder_dim)

    @property
    def n_tokens(self) -> int:
        return math.ceil(self.n_genes / self.token_encoder_dim)


@dataclass
class SharedSelfAttentionConfig(_GeneChunkConfig):
    """Gene-chunk tokens, shared self-attention encoder, flattened token outputs."""


@dataclass
class SharedSelfAttentionPoolingConfig(_GeneChunkConfig):
    """Gene-chunk tokens, shared self-attention encoder, attention pooling over tokens."""


@dataclass
class SharedSelfAttentionGene2VecConfig(_SelfAttentionConfig):
    """Single-gene tokens (gene vector + binned expression), shared encoder, attention pooling."""

    expression_bins: int = 5


class SelfAttention(nn.Module):
    """Multi-head self-attention through `attention()` (FlashAttention or SDPA).

    As in the cross model, transformer_dropout applies to the output, not to the attention
    weights, so the fused CPU kernel is used and every backend computes the same function.
    """

    def __init__(self, config: _SelfAttentionConfig) -> None:
        super().__init__()
        self.nhead = config.nhead
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.transformer_dropout)

    def forward(self, x: Tensor) -> Tensor:
        N, L, d = x.shape
        q, k, v = self.qkv_proj(x).view(N, L, 3 * self.nhead, d // self.nhead).transpose(1, 2).chunk(3, dim=1)
        y = attention(q, k, v)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(N, L, d)))


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FFN(LN(x)) (FFN 4*d, GELU)."""

    def __init__(self, config: _SelfAttentionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.ffn(self.ln_2(x))


class SelfAttentionEncoder(nn.Module):
    """(N, L, d) tokens of N regions -> (N, L, d): num_layers blocks and a final LayerNorm."""

    def __init__(self, config: _SelfAttentionConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SelfAttentionBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


class GeneChunkTokens(nn.Module):
    """(N, G) expression -> (N, ceil(G / k), d) tokens of k consecutive genes each.

    The last chunk is padded with zeros; each chunk is projected by Linear(k, d) and gets a
    learned positional embedding.
    """

    def __init__(self, config: _GeneChunkConfig) -> None:
        super().__init__()
        self.chunk = config.token_encoder_dim
        self.n_tokens = config.n_tokens
        self.proj = nn.Linear(config.token_encoder_dim, config.d_model)
        self.pos_emb = nn.Parameter(torch.randn(config.n_tokens, config.d_model) * 0.02)

    def forward(self, expression: Tensor) -> Tensor:
        padding = self.n_tokens * self.chunk - expression.shape[-1]
        chunks = F.pad(expression, (0, padding)).reshape(len(expression), self.n_tokens, self.chunk)
        return self.proj(chunks) + self.pos_emb


def combine_pair(h_i: Tensor, h_j: Tensor, interaction: bool) -> Tensor:
    """(B, D) encodings of each side -> [h_i, h_j] (B, 2D), or with `interaction`
    [h_i, h_j, h_i * h_j, |h_i - h_j|] (B, 4D)."""
    if not interaction:
        return torch.cat([h_i, h_j], dim=-1)
    return torch.cat([h_i, h_j, h_i * h_j, (h_i - h_j).abs()], dim=-1)


class _SelfAttentionPairModel(nn.Module):
    """The shared skeleton: tokens -> shared encoder -> readout per region; pair -> MLP.

    Subclasses set `config`, define `tokens(expression)` and `readout(x)`, and call
    `_build(region_dim, interaction)` once their token modules exist.
    """

    config: _SelfAttentionConfig

    def _build(self, region_dim: int, interaction: bool) -> None:
        self.interaction = interaction
        self.encoder = SelfAttentionEncoder(self.config)
        width = (4 if interaction else 2) * region_dim
        self.head = MLPHead(width, self.config.deep_hidden_dims, self.config.dropout_rate)

    def tokens(self, expression: Tensor) -> Tensor:  # (N, G) -> (N, L, d)
        raise NotImplementedError

    def readout(self, x: Tensor) -> Tensor:  # (N, L, d) -> (N, region_dim)
        raise NotImplementedError

    def encode_regions(self, expression: Tensor) -> Tensor:
        """(N, G) expression of N regions -> (N, region_dim) encodings, one encoder pass."""
        return self.readout(self.encoder(self.tokens(expression)))

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        """expression (R, G) in [0, 1] and coords (R, 3) of all regions (coords unused);
        pair_i, pair_j (B,) row indices. Returns (B,)."""
        regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
        h = self.encode_regions(expression[regions])  # (U, region_dim): each region once
        return self.head(combine_pair(h[inverse[: len(pair_i)]], h[inverse[len(pair_i) :]], self.interaction))

    def forward_naive(
        self, expression_i: Tensor, expression_j: Tensor, coords_i: Tensor, coords_j: Tensor
    ) -> Tensor:
        """The same model pair by pair, without deduplication: (B, G) expression and (B, 3)
        coords of each side. The reference `forward` is tested against."""
        h_i, h_j = self.encode_regions(expression_i), self.encode_regions(expression_j)
        return self.head(combine_pair(h_i, h_j, self.interaction))

    def num_parameters(self) -> int:
        """Trainable parameters (includes gene vectors only when they are learned)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class SharedSelfAttentionModel(_SelfAttentionPairModel):
    """Gene-chunk tokens, self-attention per region, outputs flattened to n_tokens * d_model;
    the head sees [h_i, h_j]."""

    def __init__(self, config: SharedSelfAttentionConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.chunk_tokens = GeneChunkTokens(config)
        self._build(config.n_tokens * config.d_model, interaction=False)

    def tokens(self, expression: Tensor) -> Tensor:
        return self.chunk_tokens(expression)

    def readout(self, x: Tensor) -> Tensor:
        return x.flatten(start_dim=1)


class SharedSelfAttentionPoolingModel(_SelfAttentionPairModel):
    """Gene-chunk tokens, self-attention per region, attention pooling to d_model; the head
    sees [h_i, h_j, h_i * h_j, |h_i - h_j|]."""

    def __init__(self, config: SharedSelfAttentionPoolingConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.chunk_tokens = GeneChunkTokens(config)
        self.pool = AttentionPooling(config.d_model)
        self._build(config.d_model, interaction=True)

    def tokens(self, expression: Tensor) -> Tensor:
        return self.chunk_tokens(expression)

    def readout(self, x: Tensor) -> Tensor:
        return self.pool(x)


class SharedSelfAttentionGene2VecModel(_SelfAttentionPairModel):
    """Single-gene tokens as in the cross model, self-attention per region, attention pooling;
    the head sees [h_i, h_j, h_i * h_j, |h_i - h_j|]."""

    # The cross model's gene tokens, unchanged: it reads config.expression_bins, bin_proj,
    # token_proj, token_ln and gene_vectors, which this model defines under the same names.
    encode_genes = CrossAttentionGene2VecModel.encode_genes

    def __init__(self, config: SharedSelfAttentionGene2VecConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` (n_genes, gene_vector_dim) as for CrossAttentionGene2VecModel: kept
        under the state-dict key "gene_vectors", a parameter when config.learn_gene_vectors,
        else a buffer; when omitted, N(0, 0.02^2) draws if learned, else zeros for
        `load_state_dict` to fill."""
        super().__init__()
        self.config = config
        attach_gene_vectors(self, config, gene_vectors)
        self.bin_proj = nn.Linear(config.expression_bins, config.gene_vector_dim)
        self.token_proj = nn.Linear(config.gene_vector_dim, config.d_model)
        self.token_ln = nn.LayerNorm(config.d_model)
        self.pool = AttentionPooling(config.d_model)
        self._build(config.d_model, interaction=True)

    def tokens(self, expression: Tensor) -> Tensor:
        return self.encode_genes(expression)

    def readout(self, x: Tensor) -> Tensor:
        return self.pool(x)


