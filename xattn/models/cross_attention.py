"""CrossAttentionGene2VecModel: connectivity of a region pair (i, j) from gene expression.

Every gene of a region is a token (its gene vector plus an encoding of its expression,
xattn/models/gene_tokens.py). A CLS token and the gene tokens of region i are the queries; the gene tokens of
region j are the keys/values. After `num_layers` pre-norm cross-attention blocks the query
tokens are pooled and an MLP head predicts one number per pair.

Tokens depend on the region, not on the pair, so `forward` takes the whole expression matrix
plus index pairs, encodes each unique region of the batch once, and in each block projects
the keys/values of each unique j region once before gathering them per pair.
`forward_naive` is the same model computed pair by pair, kept as the reference for tests.

The memory (region j's tokens) is the same tensor in every block, as in the standard
transformer decoder's cross-attention: only the queries evolve through the residual stream.
Unlike a decoder there is no self-attention among the queries, so every query token evolves
on its own, from its gene and expression, attending to region j. Two consequences follow
from the reference design: with pooling_mode "cls" the prediction does not depend on region
i's expression at all (only on the CLS token and region j; `forward` then skips region i's
tokens), and with "mean" it is a mean over region i's genes of per-gene terms.

With use_alibi the bias follows FlashAttention's alignment (see attention.py): query gene g
lines up with key gene g, and the CLS query sits at position -1, so it leans towards the
first genes of the gene order.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xattn.errors import SpecError
from xattn.models.attention import alibi_slopes, attention
from xattn.models.gene_tokens import EXPRESSION_ENCODINGS, GeneTokens
from xattn.models.layers import AttentionPooling, FeedForward, MLPHead, boolean, choice, layer_widths, positive_int, probability

CLS_INITS = ("random", "spatial")
POOLING_MODES = ("mean", "attention", "cls")


@dataclass
class CrossAttentionConfig:
    """Architecture hyperparameters; defaults follow the reference implementation, except
    expression_encoding: the reference's 5 equal-width bins lose what distinguishes a held-out
    region at the end of a spatial gradient (README, "The model"), so values enter continuously.

    Trainer settings of the reference (learning_rate, batch_size, cosine_lr) live elsewhere.
    """

    n_genes: int
    gene_vector_dim: int = 200
    expression_encoding: str = "continuous"  # | "quantile_bins" | "equal_bins" (gene_tokens.py)
    expression_bins: int = 5  # bins of the two binned encodings
    d_model: int = 128
    nhead: int = 4
    num_layers: int = 4
    deep_hidden_dims: tuple[int, ...] = (512, 256, 128)
    cls_init: str = "random"  # "random" | "spatial"
    pooling_mode: str = "mean"  # "mean" | "attention" | "cls"
    use_alibi: bool = False
    transformer_dropout: float = 0.1
    dropout_rate: float = 0.1
    head_batchnorm: bool = False  # BatchNorm1d after each hidden activation of the head
    learn_gene_vectors: bool = False  # True for the learned (one-hot) gene-vector option

    def __post_init__(self) -> None:
        for name in ("n_genes", "gene_vector_dim", "d_model", "nhead", "num_layers"):
            setattr(self, name, positive_int(name, getattr(self, name)))
        self.expression_bins = positive_int("expression_bins", self.expression_bins)
        if self.expression_bins < 2:
            raise SpecError(f"expression_bins={self.expression_bins} is too few: use at least 2 bins")
        if self.d_model % self.nhead != 0:
            raise SpecError(
                f"d_model={self.d_model} is not divisible by nhead={self.nhead}: "
                "choose d_model a multiple of nhead"
            )
        self.deep_hidden_dims = layer_widths("deep_hidden_dims", self.deep_hidden_dims)
        self.expression_encoding = choice("expression_encoding", self.expression_encoding, EXPRESSION_ENCODINGS)
        self.cls_init = choice("cls_init", self.cls_init, CLS_INITS)
        self.pooling_mode = choice("pooling_mode", self.pooling_mode, POOLING_MODES)
        for name in ("use_alibi", "learn_gene_vectors", "head_batchnorm"):
            setattr(self, name, boolean(name, getattr(self, name)))
        for name in ("transformer_dropout", "dropout_rate"):
            setattr(self, name, probability(name, getattr(self, name)))


def blind_spot(config: CrossAttentionConfig) -> tuple[str, str] | None:
    """(field, why) when a model with this config cannot depend on something a region-pair
    model must see, else None: studies refuse such configurations (xattn.tuning.spec)."""
    if config.pooling_mode == "cls":
        return "pooling_mode", (
            "the prediction cannot depend on region i's expression (no query attends to another, "
            "so only the CLS query reaches the output)"
        )
    return None


def gene_tokens_of(config, gene_vectors: Tensor | None) -> GeneTokens:
    """The gene tokens a config with n_genes, gene_vector_dim, d_model, expression_encoding,
    expression_bins and learn_gene_vectors asks for."""
    return GeneTokens(
        config.n_genes, config.gene_vector_dim, config.d_model,
        encoding=config.expression_encoding, bins=config.expression_bins,
        learn_gene_vectors=config.learn_gene_vectors, gene_vectors=gene_vectors,
    )  # fmt: skip


class CrossAttention(nn.Module):
    """Multi-head attention of the query stream over a fixed memory of key/value tokens.

    transformer_dropout applies to the output, not to the attention weights: PyTorch's CPU
    SDPA has no fused kernel with dropout and falls back to materialising the (B, H, G+1, G)
    weights, about 5-10x slower at G = 810 (measured, torch 2.13), and the model must
    compute the same function whichever backend runs it.
    """

    def __init__(self, config: CrossAttentionConfig) -> None:
        super().__init__()
        self.nhead = config.nhead
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.transformer_dropout)
        # Not persistent: the slopes follow from nhead, so checkpoints need not carry them.
        slopes = alibi_slopes(config.nhead) if config.use_alibi else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def forward(self, x: Tensor, memory: Tensor, memory_index: Tensor | None = None) -> Tensor:
        """x: (B, Lq, d) queries; memory: (U, Lk, d) keys/values, one row per unique region.

        The K/V projection runs on the U memory rows; `memory_index` (B,) then picks each
        pair's row. Without an index, memory is already one row per pair (U == B).
        """
        B, Lq, d = x.shape
        q = self.q_proj(x).view(B, Lq, self.nhead, d // self.nhead).transpose(1, 2)
        kv = self.kv_proj(memory)
        if memory_index is not None:
            # index_select, not kv[memory_index]: its backward is an index_add, about 6x
            # faster on CPU than advanced indexing's accumulating index_put (measured).
            kv = kv.index_select(0, memory_index)
        k, v = kv.view(B, -1, 2 * self.nhead, d // self.nhead).transpose(1, 2).chunk(2, dim=1)
        y = attention(q, k, v, alibi_slopes=self.alibi_slopes)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(B, Lq, d)))


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x), memory), then x + FFN(LN(x)).

    The memory arrives normalised (the model's `memory_ln`, once per region): a per-block
    LayerNorm's affine map would be absorbed by the K/V projection anyway.
    """

    def __init__(self, config: CrossAttentionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CrossAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.transformer_dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_index: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), memory, memory_index)
        return x + self.ffn(self.ln_2(x))


class CrossAttentionGene2VecModel(nn.Module):
    """Predicts connectivity of region pairs (i, j); see the module docstring."""

    def __init__(self, config: CrossAttentionConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors`: (n_genes, gene_vector_dim), see `gene_tokens.attach_gene_vectors`."""
        super().__init__()
        self.config = config
        self.gene_tokens = gene_tokens_of(config, gene_vectors)
        # Tokens enter the query stream as they are (a continuous value keeps its magnitude
        # there); as keys and values they are normalised, so an extreme region cannot make
        # the attention logits explode.
        self.memory_ln = nn.LayerNorm(config.d_model)

        # "random" CLS: six values drawn once (kept in the state dict), through the same kind of
        # projection as the spatial coordinates, so it is in effect a learned vector.
        self.register_buffer("cls_seed", torch.randn(6) if config.cls_init == "random" else None)
        self.cls_proj = nn.Linear(6, config.d_model)

        self.blocks = nn.ModuleList(CrossAttentionBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.pool = AttentionPooling(config.d_model, normalise_scores=True) if config.pooling_mode == "attention" else None
        self.head = MLPHead(config.d_model, config.deep_hidden_dims, config.dropout_rate, batchnorm=config.head_batchnorm)

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        """expression (R, G) in [0, 1] and coords (R, 3) of all regions; pair_i, pair_j (B,) row
        indices. Coords must already be normalised (training-region statistics). Returns (B,)."""
        cls = self.cls_token(coords[pair_i], coords[pair_j])
        if self.only_cls_reaches_output:
            memory_rows, memory_index = torch.unique(pair_j, return_inverse=True)
            memory, x = self.memory_ln(self.encode_genes(expression[memory_rows])), cls  # region i is not needed
        else:
            regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
            index_i, index_j = inverse[: len(pair_i)], inverse[len(pair_i) :]
            tokens = self.encode_genes(expression[regions])  # (U, G, d): each region once
            # Keys/values only for regions that occur as j (random pairs: about half of U).
            memory_rows, memory_index = torch.unique(index_j, return_inverse=True)
            memory = self.memory_ln(tokens.index_select(0, memory_rows))  # (Uj, G, d)
            x = torch.cat([cls, tokens.index_select(0, index_i)], dim=1)
        for block in self.blocks:
            x = block(x, memory, memory_index)  # x: (B, G + 1, d), or (B, 1, d) when only the CLS query is kept
        return self.head(self.ln_f(self.pool_tokens(x)))

    @property
    def only_cls_reaches_output(self) -> bool:
        """With CLS pooling only the CLS query's output is used, and no query attends to
        another, so region i's gene tokens cannot change the prediction: `forward` skips
        them. (With ALiBi the CLS query's bias depends on its position among all queries,
        so there the full query sequence is kept.)"""
        return self.config.pooling_mode == "cls" and not self.config.use_alibi

    def forward_naive(
        self, expression_i: Tensor, expression_j: Tensor, coords_i: Tensor, coords_j: Tensor
    ) -> Tensor:
        """The same model, pair by pair without deduplication: (B, G) expression and (B, 3)
        coords of each side. The reference `forward` is tested against."""
        cls = self.cls_token(coords_i, coords_j)
        x = torch.cat([cls, self.encode_genes(expression_i)], dim=1)
        memory = self.memory_ln(self.encode_genes(expression_j))
        for block in self.blocks:
            x = block(x, memory)
        return self.head(self.ln_f(self.pool_tokens(x)))

    def encode_genes(self, expression: Tensor) -> Tensor:
        """(N, G) expression in [0, 1] -> (N, G, d_model) gene tokens."""
        return self.gene_tokens(expression)

    def fit_to_training_regions(self, expression: Tensor) -> None:
        """Fit the token statistics (per-gene mean, std, bin edges) to the training regions."""
        self.gene_tokens.fit_to_training_regions(expression)

    def cls_token(self, coords_i: Tensor, coords_j: Tensor) -> Tensor:
        """(B, 1, d_model) CLS tokens from the (B, 3) coords of each side (unused when "random")."""
        if self.cls_seed is not None:
            return self.cls_proj(self.cls_seed).expand(len(coords_i), 1, -1)
        return self.cls_proj(torch.cat([coords_i, coords_j], dim=-1)).unsqueeze(1)

    def pool_tokens(self, x: Tensor) -> Tensor:
        """(B, L, d) -> (B, d) by the configured pooling mode, before the final LayerNorm.

        Pooling first keeps what a per-token LayerNorm would squash: with continuous values a
        token's size carries the gene's expression, and normalising each token before the mean
        left the head a saturated function of it (test r 0.345 -> 0.434 pooled first, hcp-s100,
        4 spatial folds, one layer, d_model 32; README, The model)."""
        if self.config.pooling_mode == "cls":
            return x[:, 0]
        if self.config.pooling_mode == "mean":
            return x.mean(dim=1)
        return self.pool(x)

    def num_parameters(self) -> int:
        """Trainable parameters (includes gene vectors only when they are learned)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
