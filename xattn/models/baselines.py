"""Baseline models: the simple predictors a connectivity model should beat.

| family             | prediction for the pair (i, j)           | learned                  |
|--------------------|------------------------------------------|--------------------------|
| distance_decay     | a * exp(-d_ij / lambda) + b              | a, b, log_lambda         |
| cge                | a * pearson_corr(x_i, x_j) + b           | a, b                     |
| bilinear_lowrank   | (x_i U) . (x_j V) + b                    | U, V (G x rank), b       |

d_ij is the euclidean distance between the two regions' coords as the model receives them:
`prepare_experiment` centres them on the training regions and divides all three axes by one
scale (`coordinate_normalisation`, ~33 mm on hcp-s100), so d_ij is the distance in mm over
that scale and lambda * scale is the decay length in mm (a scale per axis would distort
distances: the brain is longer in y than in z);
pearson_corr is the correlation across genes of the two regions' expression rows
("correlated gene expression").

They are ordinary nn.Modules with the registry's constructor and forward, so they are
fitted the way every family is: `fit` runs AdamW on the MSE of training pairs, early-stops
on validation pairs and never sees test pairs. That is what "fitted on training pairs only"
means here; there is no closed-form solve that could read other pairs by mistake. For cge
(and distance_decay at a fixed lambda) the fit is a least-squares line, which AdamW reaches
up to its small weight decay (0.01 * lr per step, towards 0: negligible for the few epochs
these models need).

Inits, chosen so that AdamW at learning_rate 1e-2 converges within a few dozen epochs on
hcp-s100 (batch_size 256: 16 steps per epoch; see tests/test_models_baselines.py):

- distance_decay: a = 1, b = 0, lambda = 1, a decay length of one coordinate scale (~33 mm
  on hcp-s100). The median training pair is ~2.3 scales (~75 mm) apart, and the
  least-squares lambda on hcp-s100's spatial training folds (K = 4 and 10, seed 0) lies
  between 0.54 and 1.45 (18-50 mm), so lambda = 1 starts within a factor of two of it, and
  a = 1 > 0 starts with the right sign (near regions are more connected), so lambda gets a
  useful gradient from the first step. lambda is learned as log_lambda to stay positive.
  It moves little: fitted at 1e-2 for 30 epochs it ends at 0.94-1.10 there, and test r
  depends little on it (lambda = 1 against the least-squares lambda: within 0.04 a fold).
- cge: a = 1, b = 0: the raw correlation, the right sign. Adam moves each scalar by about
  the learning rate per step, so reaching the least-squares a ~ 0.1, b ~ 0.25 takes a few
  dozen steps: a few epochs.
- bilinear_lowrank: U, V ~ N(0, (0.1 / sqrt(G))^2) from the caller-seeded global RNG, b = 0.
  Expression lies in [0, 1], so a row of x U has entries of size ~0.1 * rms(x) and the
  initial prediction is ~0: small, but not zero (zero U and V would have zero gradient).
  The G x rank matrices make the effective step size of AdamW large (every entry moves by
  ~lr), so this family wants a smaller learning rate (~1e-3) than the two scalar ones.

Per-region quantities are computed once per forward for the unique regions of the batch
(standardised expression rows for cge, x U and x V for bilinear_lowrank) and gathered;
distance_decay has none beyond the coords themselves. Like the networks, the models take
the pair in order; distance_decay and cge are symmetric by construction, bilinear_lowrank
is not (U != V) and learns symmetry from both orders being training pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from xattn.errors import SpecError
from xattn.models.layers import positive_int

# A row whose expression is constant (std 0) standardises to zeros, so its correlation with
# every region is 0 instead of NaN.
_MIN_STD = 1e-8


@dataclass
class _ReferenceConfig:
    """Data-given fields every family has; gene_vector_dim and learn_gene_vectors are accepted
    so `build_model` passes the same arguments to every family, and are unused here."""

    n_genes: int
    gene_vector_dim: int = 200
    learn_gene_vectors: bool = False

    def __post_init__(self) -> None:
        for name in ("n_genes", "gene_vector_dim"):
            setattr(self, name, positive_int(name, getattr(self, name)))
        if not isinstance(self.learn_gene_vectors, bool):
            raise SpecError(f"learn_gene_vectors={self.learn_gene_vectors!r} is not a boolean: use true or false")


@dataclass
class DistanceDecayConfig(_ReferenceConfig):
    """No hyperparameters of its own: only the trainer's (learning_rate, ...) are searched."""


@dataclass
class CGEConfig(_ReferenceConfig):
    """No hyperparameters of its own: only the trainer's (learning_rate, ...) are searched."""


@dataclass
class BilinearLowRankConfig(_ReferenceConfig):
    rank: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rank = positive_int("rank", self.rank)


def _unique_regions(pair_i: Tensor, pair_j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's unique regions and, for each side, the position of its region among them."""
    regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
    return regions, inverse[: len(pair_i)], inverse[len(pair_i) :]


def pair_distance(coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
    """(B,) euclidean distance between the coords of each pair's regions."""
    return (coords[pair_i] - coords[pair_j]).square().sum(dim=-1).sqrt()


def standardise_rows(expression: Tensor) -> Tensor:
    """Each row minus its mean, over its population std: the mean of the product of two
    standardised rows is their Pearson correlation."""
    centred = expression - expression.mean(dim=-1, keepdim=True)
    std = centred.square().mean(dim=-1, keepdim=True).sqrt()
    return centred / std.clamp_min(_MIN_STD)


def pair_correlation(expression: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
    """(B,) Pearson correlation across genes of each pair's expression rows; each unique
    region of the batch is standardised once."""
    regions, side_i, side_j = _unique_regions(pair_i, pair_j)
    z = standardise_rows(expression[regions].float())
    return (z[side_i] * z[side_j]).mean(dim=-1)


class _ReferenceModel(nn.Module):
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class DistanceDecayModel(_ReferenceModel):
    """a * exp(-d_ij / lambda) + b on the coords as given (isotropically scaled millimetres,
    see the module docstring); expression is unused."""

    def __init__(self, config: DistanceDecayConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))
        self.log_lambda = nn.Parameter(torch.tensor(0.0))  # lambda = 1

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        distance = pair_distance(coords.float(), pair_i, pair_j)
        return self.a * torch.exp(-distance / self.log_lambda.exp()) + self.b


class CorrelatedGeneExpressionModel(_ReferenceModel):
    """a * pearson_corr(x_i, x_j) + b; coords are unused."""

    def __init__(self, config: CGEConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        return self.a * pair_correlation(expression, pair_i, pair_j) + self.b


class BilinearLowRankModel(_ReferenceModel):
    """(x_i U) . (x_j V) + b with U, V of shape (n_genes, rank); coords are unused."""

    def __init__(self, config: BilinearLowRankConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored. U and V are drawn
        from the global RNG, which the caller seeds (build_trial_model does)."""
        super().__init__()
        self.config = config
        scale = 0.1 / math.sqrt(config.n_genes)
        self.U = nn.Parameter(torch.randn(config.n_genes, config.rank) * scale)
        self.V = nn.Parameter(torch.randn(config.n_genes, config.rank) * scale)
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        regions, side_i, side_j = _unique_regions(pair_i, pair_j)
        x = expression[regions]
        left, right = x @ self.U, x @ self.V  # (U_regions, rank) each: every region once
        return (left[side_i] * right[side_j]).sum(dim=-1) + self.b
