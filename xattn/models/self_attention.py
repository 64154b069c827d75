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
  Each chunk goes through Linear(token_encoder_dim, d_model) plus (by default) a learned
  positional embedding, which is what tells the encoder (and a permutation-invariant
  pooling) which genes a token holds.
- Single-gene tokens: exactly the cross-attention model's gene tokens
  (xattn/models/gene_tokens.py, the same `gene_tokens.` state-dict keys). The gene vector
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

Options (their defaults give the model described above):

- use_alibi (all three): ALiBi biases in every self-attention layer (attention.py; Lq == Lk,
  so it is the symmetric -slope * |r - c|): attention prefers nearby tokens, which is order
  information even without a positional embedding.
- positional_embedding (gene-chunk families, default true): false drops the learned
  positional embedding; then only ALiBi (if on) tells the encoder where a chunk sits.
- token_output_dim k (flatten family, default 0 = off): each encoder output token goes
  through Linear(d_model, k) before flattening, so h is n_tokens * k wide, not
  n_tokens * d_model.
- head_batchnorm (all three): BatchNorm1d after each hidden layer's activation in the MLP
  head. In eval mode it uses running statistics, so a pair's prediction does not depend on
  the rest of its batch.
- output_clamp (all three): the prediction is clamped to [-1, 1] (see `predict_pair`).

Upstream's SMT. GeneEx2Conn's SharedSelfAttentionModel in its best configuration is
`shared_self_attention` with token_encoder_dim 60, use_alibi true, positional_embedding
false, token_output_dim 10, head_batchnorm true, output_clamp true, deep_hidden_dims
[256, 128], d_model 128, nhead 2, num_layers 2 and dropout_rate 0.2 (upstream's encoder
dropout is a separate setting, transformer_dropout here); the trainer's learning_rate 1e-4
and weight_decay 1e-4 (upstream trained about 110 epochs). What still differs:
- our encoder blocks are pre-norm with a GELU feed-forward and a final LayerNorm;
  upstream's are post-norm with ReLU and no final norm;
- our MLP head's activation is GELU (layers.MLPHead), upstream's ReLU (both then
  BatchNorm1d and dropout);
- transformer_dropout never drops attention weights here (see `SelfAttention`);
- upstream needs n_genes to be a multiple of token_encoder_dim; here the last chunk is
  zero-padded.
So these settings give upstream's architecture and training settings, not its exact function.

Tokens and encodings depend on the region, not on the pair, so `forward` encodes each
unique region of the batch once and gathers; `forward_naive` encodes both sides of every
pair and is the reference the tests compare `forward` with. Both, and benchmarks/naive.py,
end in `predict_pair`, so every path computes the same pair head.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xattn.models.cross_attention import CrossAttentionConfig
from xattn.models.gene_tokens import GeneTokenFields, gene_tokens_of
from xattn.models.layers import (
    AttentionPooling,
    FeedForward,
    MLPHead,
    SelfAttention,
    boolean,
    non_negative_int,
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
    use_alibi: bool = False
    head_batchnorm: bool = False  # BatchNorm1d after each hidden activation of the head
    output_clamp: bool = False  # clamp predictions to [-1, 1]

    def __post_init__(self) -> None:
        # Fields shared with the cross model (use_alibi among them) follow its rules and error
        # messages, so a study accepts and rejects the same values whichever family it runs.
        shared = [f.name for f in dataclasses.fields(self) if f.name in _CROSS_FIELDS]
        checked = CrossAttentionConfig(**{name: getattr(self, name) for name in shared})
        for name in shared:
            setattr(self, name, getattr(checked, name))
        for name in ("head_batchnorm", "output_clamp"):
            setattr(self, name, boolean(name, getattr(self, name)))


@dataclass
class _GeneChunkConfig(_SelfAttentionConfig):
    token_encoder_dim: int = 32  # genes per token; the last token is zero-padded
    positional_embedding: bool = True  # learned, one vector per chunk

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_encoder_dim = positive_int("token_encoder_dim", self.token_encoder_dim)
        self.positional_embedding = boolean("positional_embedding", self.positional_embedding)

    @property
    def n_tokens(self) -> int:
        return math.ceil(self.n_genes / self.token_encoder_dim)


@dataclass
class SharedSelfAttentionConfig(_GeneChunkConfig):
    """Gene-chunk tokens, shared self-attention encoder, flattened token outputs."""

    token_output_dim: int = 0  # k > 0: Linear(d_model, k) per output token before flattening

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_output_dim = non_negative_int("token_output_dim", self.token_output_dim)


@dataclass
class SharedSelfAttentionPoolingConfig(_GeneChunkConfig):
    """Gene-chunk tokens, shared self-attention encoder, attention pooling over tokens."""


@dataclass
class SharedSelfAttentionGene2VecConfig(_SelfAttentionConfig, GeneTokenFields):
    """Single-gene tokens (gene vector + expression encoding), shared encoder, attention pooling."""


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FFN(LN(x)) (FFN 4*d, GELU)."""

    def __init__(self, config: _SelfAttentionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.transformer_dropout)

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

    The last chunk is padded with zeros; each chunk is projected by Linear(k, d) and, with
    config.positional_embedding, gets a learned positional embedding (else `pos_emb` is None).
    """

    def __init__(self, config: _GeneChunkConfig) -> None:
        super().__init__()
        self.chunk = config.token_encoder_dim
        self.n_tokens = config.n_tokens
        self.proj = nn.Linear(config.token_encoder_dim, config.d_model)
        pos_emb = torch.randn(config.n_tokens, config.d_model) * 0.02 if config.positional_embedding else None
        self.pos_emb = None if pos_emb is None else nn.Parameter(pos_emb)

    def forward(self, expression: Tensor) -> Tensor:
        padding = self.n_tokens * self.chunk - expression.shape[-1]
        chunks = F.pad(expression, (0, padding)).reshape(len(expression), self.n_tokens, self.chunk)
        tokens = self.proj(chunks)
        return tokens if self.pos_emb is None else tokens + self.pos_emb


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
        self.head = MLPHead(
            width, self.config.deep_hidden_dims, self.config.dropout_rate, batchnorm=self.config.head_batchnorm
        )

    def tokens(self, expression: Tensor) -> Tensor:  # (N, G) -> (N, L, d)
        raise NotImplementedError

    def readout(self, x: Tensor) -> Tensor:  # (N, L, d) -> (N, region_dim)
        raise NotImplementedError

    def encode_regions(self, expression: Tensor) -> Tensor:
        """(N, G) expression of N regions -> (N, region_dim) encodings, one encoder pass."""
        return self.readout(self.encoder(self.tokens(expression)))

    def predict_pair(self, h_i: Tensor, h_j: Tensor) -> Tensor:
        """(B, region_dim) encodings of each side -> (B,) predictions: combine, MLP head, and
        with config.output_clamp torch.clamp to [-1, 1].

        The clamp has zero gradient outside [-1, 1]: a pair predicted beyond it gets no
        gradient through the prediction, and a target beyond it cannot be reached. HCP
        functional connectivity (Fisher z) reaches 1.42 on hcp-s100, so with the clamp such
        pairs are predicted at best as 1 and keep a loss of (z - 1)^2.
        """
        y = self.head(combine_pair(h_i, h_j, self.interaction))
        return y.clamp(-1.0, 1.0) if self.config.output_clamp else y

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        """expression (R, G) in [0, 1] and coords (R, 3) of all regions (coords unused);
        pair_i, pair_j (B,) row indices. Returns (B,)."""
        regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
        h = self.encode_regions(expression[regions])  # (U, region_dim): each region once
        return self.predict_pair(h[inverse[: len(pair_i)]], h[inverse[len(pair_i) :]])

    def forward_naive(self, expression_i: Tensor, expression_j: Tensor, coords_i: Tensor, coords_j: Tensor) -> Tensor:
        """The same model pair by pair, without deduplication: (B, G) expression and (B, 3)
        coords of each side. The reference `forward` is tested against."""
        return self.predict_pair(self.encode_regions(expression_i), self.encode_regions(expression_j))

    def num_parameters(self) -> int:
        """Trainable parameters (includes gene vectors only when they are learned)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class SharedSelfAttentionModel(_SelfAttentionPairModel):
    """Gene-chunk tokens, self-attention per region, outputs flattened to n_tokens * d_model
    (n_tokens * token_output_dim when that is set); the head sees [h_i, h_j]."""

    def __init__(self, config: SharedSelfAttentionConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.chunk_tokens = GeneChunkTokens(config)
        k = config.token_output_dim
        self.token_out = nn.Linear(config.d_model, k) if k else None
        self._build(config.n_tokens * (k or config.d_model), interaction=False)

    def tokens(self, expression: Tensor) -> Tensor:
        return self.chunk_tokens(expression)

    def readout(self, x: Tensor) -> Tensor:
        if self.token_out is not None:
            x = self.token_out(x)  # (N, L, d) -> (N, L, k)
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

    def __init__(self, config: SharedSelfAttentionGene2VecConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` (n_genes, gene_vector_dim) as for CrossAttentionGene2VecModel: kept
        under the state-dict key "gene_vectors", a parameter when config.learn_gene_vectors,
        else a buffer; when omitted, N(0, 0.02^2) draws if learned, else zeros for
        `load_state_dict` to fill."""
        super().__init__()
        self.config = config
        self.gene_tokens = gene_tokens_of(config, gene_vectors)
        self.pool = AttentionPooling(config.d_model)
        self._build(config.d_model, interaction=True)

    def tokens(self, expression: Tensor) -> Tensor:
        return self.gene_tokens(expression)

    def fit_to_training_regions(self, expression: Tensor) -> None:
        """Fit the token statistics (per-gene mean, std, bin edges) to the training regions."""
        self.gene_tokens.fit_to_training_regions(expression)

    def readout(self, x: Tensor) -> Tensor:
        return self.pool(x)
