"""CrossAttentionGene2VecModel: connectivity of a region pair (i, j) from gene expression.

Every gene of a region is a token (its gene vector plus an embedding of its binned
expression). A CLS token and the gene tokens of region i are the queries; the gene tokens of
region j are the keys/values. After `num_layers` pre-norm cross-attention blocks the query
tokens are pooled and an MLP head predicts one number per pair.

Tokens depend on the region, not on the pair, so `forward` takes the whole expression matrix
plus index pairs, encodes each unique region of the batch once, and in each block projects
the keys/values of each unique j region once before gathering them per pair.
`forward_naive` is the same model computed pair by pair, kept as the reference for tests.

The memory (region j's tokens) is the same tensor in every block, as in the standard
transformer decoder's cross-attention: only the queries evolve through the residual stream.
Unlike a decoder there is no self-attention among the queries, so every query token evolves
on its own, from its gene and expression bin, attending to region j. Two consequences follow
from the reference design: with pooling_mode "cls" the prediction does not depend on region
i's expression at all (only on the CLS token and region j; `forward` then skips region i's
tokens), and with "mean" it is a mean over region i's genes of per-gene terms.

With use_alibi the bias follows FlashAttention's alignment (see attention.py): query gene g
lines up with key gene g, and the CLS query sits at position -1, so it leans towards the
first genes of the gene order.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xattn.errors import SpecError
from xattn.models.attention import alibi_slopes, attention

CLS_INITS = ("random", "spatial")
POOLING_MODES = ("mean", "attention", "cls")


@dataclass
class CrossAttentionConfig:
    """Architecture hyperparameters; defaults follow the reference implementation.

    Trainer settings of the reference (learning_rate, batch_size, cosine_lr) live elsewhere.
    """

    n_genes: int
    gene_vector_dim: int = 200
    expression_bins: int = 5
    d_model: int = 128
    nhead: int = 4
    num_layers: int = 4
    deep_hidden_dims: tuple[int, ...] = (512, 256, 128)
    cls_init: str = "random"  # "random" | "spatial"
    pooling_mode: str = "mean"  # "mean" | "attention" | "cls"
    use_alibi: bool = False
    transformer_dropout: float = 0.1
    dropout_rate: float = 0.1
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
        if isinstance(self.deep_hidden_dims, (str, bytes)) or not hasattr(self.deep_hidden_dims, "__iter__"):
            raise SpecError(
                f"deep_hidden_dims={self.deep_hidden_dims!r} is not a list: give layer widths like [512, 256, 128]"
            )
        self.deep_hidden_dims = tuple(positive_int("deep_hidden_dims", d) for d in self.deep_hidden_dims)
        for name, choices in (("cls_init", CLS_INITS), ("pooling_mode", POOLING_MODES)):
            if getattr(self, name) not in choices:
                raise SpecError(f"{name}={getattr(self, name)!r} is not known: choose one of {', '.join(choices)}")
        for name in ("use_alibi", "learn_gene_vectors"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name}={getattr(self, name)!r} is not a boolean: use true or false")
        for name in ("transformer_dropout", "dropout_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
                raise SpecError(f"{name}={value!r} is not a probability: choose a value in [0, 1)")
            setattr(self, name, float(value))


def positive_int(name: str, value: object) -> int:
    """Accept Python and numpy integers (Optuna, YAML); reject bools, floats and non-positive values."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise SpecError(f"{name}={value!r} is not a positive integer: give a whole number >= 1")
    return int(value)


def attach_gene_vectors(module: nn.Module, config, gene_vectors: Tensor | None) -> None:
    """Keep (n_genes, gene_vector_dim) vectors under the state-dict key "gene_vectors":
    a trainable parameter when config.learn_gene_vectors, else a buffer.

    Without vectors, learnable ones start as N(0, 0.02^2) draws from the caller-seeded global
    RNG, and fixed ones as zeros that `load_state_dict` fills (how a checkpoint is rebuilt
    without the original vector file).
    """
    shape = (config.n_genes, config.gene_vector_dim)
    if gene_vectors is None:
        gene_vectors = torch.randn(shape) * 0.02 if config.learn_gene_vectors else torch.zeros(shape)
    elif tuple(gene_vectors.shape) != shape:
        raise SpecError(
            f"gene vectors have shape {tuple(gene_vectors.shape)} but the model expects {shape}: "
            "set n_genes and gene_vector_dim from the vectors"
        )
    gene_vectors = gene_vectors.detach().clone().float()
    if config.learn_gene_vectors:
        module.gene_vectors = nn.Parameter(gene_vectors)
    else:
        module.register_buffer("gene_vectors", gene_vectors)


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


class FeedForward(nn.Module):
    def __init__(self, config: CrossAttentionConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
            nn.Dropout(config.transformer_dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x), memory), then x + FFN(LN(x)).

    The memory is not normalised here: `encode_genes` ends in a LayerNorm, and a per-block
    LayerNorm's affine map would be absorbed by the K/V projection anyway.
    """

    def __init__(self, config: CrossAttentionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CrossAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor, memory: Tensor, memory_index: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), memory, memory_index)
        return x + self.ffn(self.ln_2(x))


class AttentionPooling(nn.Module):
    """Weighted mean of the tokens, weights = softmax over tokens of a learned score.

    The score Linear(d, 1) is a learned query dotted with each token (single head).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.score(x), dim=1)  # (B, L, 1)
        return (weights * x).sum(dim=1)


class MLPHead(nn.Module):
    """d_model -> hidden dims (GELU, dropout) -> 1."""

    def __init__(self, d_model: int, hidden_dims: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d_model
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class CrossAttentionGene2VecModel(nn.Module):
    """Predicts connectivity of region pairs (i, j); see the module docstring."""

    def __init__(self, config: CrossAttentionConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors`: (n_genes, gene_vector_dim), see `attach_gene_vectors`."""
        super().__init__()
        self.config = config
        attach_gene_vectors(self, config, gene_vectors)

        # One-hot bins -> Linear as in the reference (a bin embedding table plus a shared bias).
        self.bin_proj = nn.Linear(config.expression_bins, config.gene_vector_dim)
        self.token_proj = nn.Linear(config.gene_vector_dim, config.d_model)
        # Tokens feed both streams and are never re-normalised as memory: fix their scale here,
        # whatever the scale of the (pretrained) gene vectors.
        self.token_ln = nn.LayerNorm(config.d_model)

        # "random" CLS: six values drawn once (kept in the state dict), through the same kind of
        # projection as the spatial coordinates, so it is in effect a learned vector.
        self.register_buffer("cls_seed", torch.randn(6) if config.cls_init == "random" else None)
        self.cls_proj = nn.Linear(6, config.d_model)

        self.blocks = nn.ModuleList(CrossAttentionBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.pool = AttentionPooling(config.d_model) if config.pooling_mode == "attention" else None
        self.head = MLPHead(config.d_model, config.deep_hidden_dims, config.dropout_rate)

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        """expression (R, G) in [0, 1] and coords (R, 3) of all regions; pair_i, pair_j (B,) row
        indices. Coords must already be normalised (training-region statistics). Returns (B,)."""
        cls = self.cls_token(coords[pair_i], coords[pair_j])
        if self.only_cls_reaches_output:
            memory_rows, memory_index = torch.unique(pair_j, return_inverse=True)
            memory, x = self.encode_genes(expression[memory_rows]), cls  # region i is not needed
        else:
            regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
            index_i, index_j = inverse[: len(pair_i)], inverse[len(pair_i) :]
            tokens = self.encode_genes(expression[regions])  # (U, G, d): each region once
            # Keys/values only for regions that occur as j (random pairs: about half of U).
            memory_rows, memory_index = torch.unique(index_j, return_inverse=True)
            memory = tokens.index_select(0, memory_rows)  # (Uj, G, d)
            x = torch.cat([cls, tokens.index_select(0, index_i)], dim=1)
        for block in self.blocks:
            x = block(x, memory, memory_index)  # x: (B, G + 1, d), or (B, 1, d) when only the CLS query is kept
        return self.head(self.pool_tokens(self.ln_f(x)))

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
        memory = self.encode_genes(expression_j)
        for block in self.blocks:
            x = block(x, memory)
        return self.head(self.pool_tokens(self.ln_f(x)))

    def encode_genes(self, expression: Tensor) -> Tensor:
        """(N, G) expression in [0, 1] -> (N, G, d_model) gene tokens.

        Equal-width bins on [0, 1]; values outside are clamped and 1.0 falls in the last bin.
        """
        n_bins = self.config.expression_bins
        bins = (expression.clamp(0.0, 1.0) * n_bins).long().clamp_(max=n_bins - 1)
        one_hot = F.one_hot(bins, n_bins).to(self.bin_proj.weight.dtype)
        return self.token_ln(self.token_proj(self.bin_proj(one_hot) + self.gene_vectors))

    def cls_token(self, coords_i: Tensor, coords_j: Tensor) -> Tensor:
        """(B, 1, d_model) CLS tokens from the (B, 3) coords of each side (unused when "random")."""
        if self.cls_seed is not None:
            return self.cls_proj(self.cls_seed).expand(len(coords_i), 1, -1)
        return self.cls_proj(torch.cat([coords_i, coords_j], dim=-1)).unsqueeze(1)

    def pool_tokens(self, x: Tensor) -> Tensor:
        """(B, L, d) -> (B, d) by the configured pooling mode."""
        if self.config.pooling_mode == "cls":
            return x[:, 0]
        if self.config.pooling_mode == "mean":
            return x.mean(dim=1)
        return self.pool(x)

    def num_parameters(self) -> int:
        """Trainable parameters (includes gene vectors only when they are learned)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
