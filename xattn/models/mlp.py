"""MLPModel: an MLP on the concatenated expression of both regions of a pair.

This is upstream's strongest baseline (GeneEx2Conn's DynamicMLP): the paper reports that an
MLP on both regions' expression matches its transformer on held-out regions, so every
attention family here should be compared with it.

    z(x)          = (x - input_mean) @ projection                 (per region, k features)
    features(i,j) = [z_i, z_j] (+ [c_i, c_j] with use_coords) (+ [|c_i - c_j|] with use_distance)
    prediction    = MLPHead(features)                             (GELU, optional BatchNorm, dropout)

with c the coords as the model receives them (normalised with training-region statistics)
and, by `pca_components`:

- 0: every gene, standardised: projection = diag(1 / std_g); a gene with (near-)zero
  training std gets scale 1 (it then enters as ~0), not a division by zero.
- k > 0: the first k principal components of the training regions' centred expression
  (torch.linalg.svd), each scaled to unit variance over the training regions. Components the
  training regions cannot give (beyond n_train - 1, or G, or numerically zero) are zero columns.

input_mean and projection are buffers of fixed shape (G,) and (G, k or G), set by
`fit_to_training_regions` from the training regions' expression only: a held-out region
must not shape the inputs (its mean, scale or principal axes), or a region-held-out score
would measure a model that has already seen the test regions. Being buffers, they travel in
the state dict, so a checkpoint evaluates with the statistics it was trained with. Until
fitted they are the identity (mean 0, projection the first k unit vectors).

Region features are computed once per forward for the unique regions of the batch and
gathered. The pair is taken in order: predictions for (i, j) and (j, i) differ, and symmetry
is learned from both orders being training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from xattn.models.layers import MLPHead, boolean, layer_widths, non_negative_int, positive_int, probability

# Expression is in [0, 1]; a gene flatter than this over the training regions is treated as
# constant (as in gene_tokens.py).
MIN_STD = 1e-3


@dataclass
class MLPConfig:
    """gene_vector_dim and learn_gene_vectors are accepted so `build_model` passes the same
    arguments to every family, and are unused here."""

    n_genes: int
    gene_vector_dim: int = 200
    learn_gene_vectors: bool = False
    pca_components: int = 0  # 0: every gene, standardised; k: the first k principal components
    use_coords: bool = False  # append both regions' coords
    use_distance: bool = False  # append the distance between the regions' coords
    deep_hidden_dims: tuple[int, ...] = (256, 128)
    dropout_rate: float = 0.1
    head_batchnorm: bool = True

    def __post_init__(self) -> None:
        for name in ("n_genes", "gene_vector_dim"):
            setattr(self, name, positive_int(name, getattr(self, name)))
        self.pca_components = non_negative_int("pca_components", self.pca_components)
        for name in ("learn_gene_vectors", "use_coords", "use_distance", "head_batchnorm"):
            setattr(self, name, boolean(name, getattr(self, name)))
        self.deep_hidden_dims = layer_widths("deep_hidden_dims", self.deep_hidden_dims)
        self.dropout_rate = probability("dropout_rate", self.dropout_rate)

    @property
    def region_dim(self) -> int:
        return self.pca_components or self.n_genes


class MLPModel(nn.Module):
    """Predicts connectivity of region pairs (i, j); see the module docstring."""

    def __init__(self, config: MLPConfig, gene_vectors: Tensor | None = None) -> None:
        """`gene_vectors` is accepted for a uniform constructor and ignored."""
        super().__init__()
        self.config = config
        self.register_buffer("input_mean", torch.zeros(config.n_genes))
        self.register_buffer("projection", torch.eye(config.n_genes, config.region_dim))
        width = 2 * config.region_dim + 6 * config.use_coords + config.use_distance
        self.head = MLPHead(width, config.deep_hidden_dims, config.dropout_rate, batchnorm=config.head_batchnorm)

    def forward(self, expression: Tensor, coords: Tensor, pair_i: Tensor, pair_j: Tensor) -> Tensor:
        """expression (R, G) and normalised coords (R, 3) of all regions; pair_i, pair_j (B,)
        row indices. Returns (B,)."""
        regions, inverse = torch.unique(torch.cat([pair_i, pair_j]), return_inverse=True)
        z = self.region_features(expression[regions])  # (U, k): each region once
        z_i, z_j = z[inverse[: len(pair_i)]], z[inverse[len(pair_i) :]]
        return self.head(self.pair_features(z_i, z_j, coords[pair_i], coords[pair_j]))

    def forward_naive(self, expression_i: Tensor, expression_j: Tensor, coords_i: Tensor, coords_j: Tensor) -> Tensor:
        """The same model pair by pair, without deduplication: the reference `forward` is tested against."""
        z_i, z_j = self.region_features(expression_i), self.region_features(expression_j)
        return self.head(self.pair_features(z_i, z_j, coords_i, coords_j))

    def region_features(self, expression: Tensor) -> Tensor:
        """(N, G) expression -> (N, k) standardised genes or unit-variance PCA scores."""
        return (expression.float() - self.input_mean) @ self.projection

    def pair_features(self, z_i: Tensor, z_j: Tensor, coords_i: Tensor, coords_j: Tensor) -> Tensor:
        parts = [z_i, z_j]
        if self.config.use_coords:
            parts += [coords_i.float(), coords_j.float()]
        if self.config.use_distance:
            parts.append(torch.linalg.vector_norm((coords_i - coords_j).float(), dim=-1, keepdim=True))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def fit_to_training_regions(self, expression: Tensor) -> None:
        """Set input_mean and projection from the (n_train, G) expression of the training regions."""
        x = expression.to(self.input_mean.device, torch.float64)
        n, k = x.shape[0], self.projection.shape[1]
        mean = x.mean(dim=0)
        centred = x - mean
        dof = max(n - 1, 1)  # unbiased variances, as torch.var
        if self.config.pca_components == 0:
            std = (centred.square().sum(dim=0) / dof).sqrt()
            projection = torch.diag(torch.where(std > MIN_STD, 1.0 / std, torch.ones_like(std)))
        else:
            _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # s descending, (min(n, G),)
            keep = s > s.max().clamp_min(1e-12) * max(x.shape) * torch.finfo(x.dtype).eps
            scale = torch.where(keep, dof**0.5 / s.clamp_min(1e-300), torch.zeros_like(s))
            projection = torch.zeros_like(self.projection, dtype=torch.float64)
            m = min(k, len(s))
            projection[:, :m] = vh[:m].T * scale[:m]
        self.input_mean.copy_(mean)
        self.projection.copy_(projection)

    def num_parameters(self) -> int:
        """Trainable parameters (the fitted statistics are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
