"""Building blocks every model family shares: argument checks, the feed-forward and
self-attention sublayers, attention pooling and the MLP head."""

from __future__ import annotations

from numbers import Integral, Real

import torch
import torch.nn as nn
from torch import Tensor

from xattn.errors import SpecError
from xattn.models.attention import alibi_slopes, attention


def positive_int(name: str, value: object) -> int:
    """Accept Python and numpy integers (Optuna, YAML); reject bools, floats and non-positive values."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise SpecError(f"{name}={value!r} is not a positive integer: give a whole number >= 1")
    return int(value)


def non_negative_int(name: str, value: object) -> int:
    """As `positive_int`, but 0 is allowed (the "off" value of an optional size)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise SpecError(f"{name}={value!r} is not a whole number >= 0")
    return int(value)


def probability(name: str, value: object) -> float:
    """A dropout-like rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
        raise SpecError(f"{name}={value!r} is not a probability: choose a value in [0, 1)")
    return float(value)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{name}={value!r} is not a boolean: use true or false")
    return value


def layer_widths(name: str, value: object) -> tuple[int, ...]:
    """A list of positive layer widths (a list, a tuple, or empty)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpecError(f"{name}={value!r} is not a list: give layer widths like [512, 256, 128]")
    return tuple(positive_int(name, width) for width in value)


def choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"{name}={value!r} is not known: choose one of {', '.join(choices)}")
    return value


class FeedForward(nn.Module):
    """d -> 4d (GELU) -> d, dropout on the output."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention through `attention()` (FlashAttention or SDPA).

    As in the cross model, transformer_dropout applies to the output, not to the attention
    weights, so the fused CPU kernel is used and every backend computes the same function.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.nhead = config.nhead
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.transformer_dropout)
        # Not persistent, as in CrossAttention: the slopes follow from nhead.
        slopes = alibi_slopes(config.nhead) if config.use_alibi else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        N, L, d = x.shape
        q, k, v = self.qkv_proj(x).view(N, L, 3 * self.nhead, d // self.nhead).transpose(1, 2).chunk(3, dim=1)
        y = attention(q, k, v, alibi_slopes=self.alibi_slopes)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(N, L, d)))


class AttentionPooling(nn.Module):
    """Weighted mean of the tokens, weights = softmax over tokens of a learned score.

    The score Linear(d, 1) is a learned query dotted with each token (single head). With
    `normalise_scores` the score reads a LayerNorm of the tokens, for tokens of any size;
    the mean is always of the tokens as they are.
    """

    def __init__(self, d_model: int, *, normalise_scores: bool = False) -> None:
        super().__init__()
        self.score_norm = nn.LayerNorm(d_model) if normalise_scores else nn.Identity()
        self.score = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.score(self.score_norm(x)), dim=1)  # (B, L, 1)
        return (weights * x).sum(dim=1)


class MLPHead(nn.Module):
    """in_dim -> hidden dims (Linear, GELU, optional BatchNorm, dropout) -> 1.

    BatchNorm after the activation follows the upstream SMT and MLP heads; in eval mode it
    uses running statistics, so a prediction never depends on the rest of its batch.
    """

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], dropout: float, *, batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.GELU()]
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)
