"""A small, learnable stand-in for real data, generated from a known formula.

Used by tests, examples and smoke studies: it needs no files, takes milliseconds, and the
right answer is known, so a model that cannot beat it has a bug.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist, pdist, squareform
from scipy.special import expit

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

SEMI_AXES_MM = (70.0, 90.0, 60.0)  # roughly a human cerebrum, left-right x front-back x up-down
N_BUMPS = 4  # Gaussian bumps per gene field
BUMP_WIDTH_MM = 35.0
GAIN = 1.5  # slope of the sigmoid applied to each standardised field
DISTANCE_SCALE_MM = 30.0  # lambda
SIMILARITY_WEIGHT = 0.5  # beta


def make_synthetic(
    n_regions: int = 64,
    n_genes: int = 32,
    *,
    seed: int = 0,
    noise: float = 0.1,
    similarity_weight: float = SIMILARITY_WEIGHT,
) -> ConnectomeData:
    """Regions in a brain-sized ellipsoid, smooth gene fields, connectivity from a known formula.

    Generation (all draws from `numpy.random.default_rng(seed)`, so equal arguments give
    equal data):

    - coords: `n_regions` points uniform inside an ellipsoid with semi-axes
      `SEMI_AXES_MM` (millimetres).
    - expression: gene g is a field `f_g(p) = sum_k w_gk * exp(-|p - c_gk|^2 / (2 s^2))`
      of `N_BUMPS` Gaussian bumps (centres c_gk in the ellipsoid, weights w_gk ~ N(0, 1),
      width s = `BUMP_WIDTH_MM`); the region value is `sigmoid(GAIN * z)` where z is f_g
      standardised over regions. So expression lies in (0, 1) and varies smoothly in space.
    - connectivity: `C_ij = exp(-d_ij / lambda) + beta * corr(x_i, x_j) + noise * e_ij`,
      with d the Euclidean distance, corr the Pearson correlation of the two regions'
      expression profiles over genes, e symmetric standard normal, lambda =
      `DISTANCE_SCALE_MM`, beta = `similarity_weight` (default `SIMILARITY_WEIGHT`; 0 makes
      connectivity a function of distance only); the diagonal is zero.

    Both terms are functions of expression (distance through the smooth fields), so a
    model on expression pairs can learn it; `noise` sets how much it cannot.
    """
    _check_arguments(n_regions, n_genes, noise)
    rng = np.random.default_rng(seed)
    coords = _points_in_ellipsoid(rng, n_regions)
    expression = _smooth_expression(rng, coords, n_genes)
    clean = _connectivity(coords, expression, similarity_weight)
    connectivity = clean + noise * _symmetric_noise(rng, n_regions)
    np.fill_diagonal(connectivity, 0.0)
    return ConnectomeData(
        name="synthetic",
        expression=expression.astype(np.float32),
        genes=[f"gene_{g:03d}" for g in range(n_genes)],
        connectivity=connectivity.astype(np.float32),
        coords=coords.astype(np.float32),
        labels=[f"syn_{r:03d}" for r in range(n_regions)],
        original_index=np.arange(n_regions, dtype=np.int64),
        target="synthetic",
        metadata={
            "generator": "C_ij = exp(-d_ij / lambda) + beta * corr(x_i, x_j) + noise * e_ij",
            "seed": seed,
            "noise": noise,
            "lambda_mm": DISTANCE_SCALE_MM,
            "beta": similarity_weight,
            "semi_axes_mm": list(SEMI_AXES_MM),
            "bumps_per_gene": N_BUMPS,
            "bump_width_mm": BUMP_WIDTH_MM,
            "sigmoid_gain": GAIN,
            "coords": "synthetic",
        },
    )


def _check_arguments(n_regions: int, n_genes: int, noise: float) -> None:
    if int(n_regions) != n_regions or n_regions < 4:
        raise DataError(f"synthetic n_regions={n_regions!r}: use an integer of at least 4")
    if int(n_genes) != n_genes or n_genes < 2:
        raise DataError(f"synthetic n_genes={n_genes!r}: use an integer of at least 2 (correlations need two)")
    if not noise >= 0:
        raise DataError(f"synthetic noise={noise!r}: use a standard deviation >= 0")


def _points_in_ellipsoid(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform points in the ellipsoid: random direction, radius ~ U^(1/3), then stretch."""
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.random((n, 1)) ** (1 / 3)
    return direction * radius * np.asarray(SEMI_AXES_MM)


def _smooth_expression(rng: np.random.Generator, coords: np.ndarray, n_genes: int) -> np.ndarray:
    centres = _points_in_ellipsoid(rng, n_genes * N_BUMPS)
    weights = rng.standard_normal((n_genes, N_BUMPS))
    bumps = np.exp(-(cdist(coords, centres) ** 2) / (2 * BUMP_WIDTH_MM**2))  # (R, G * K)
    fields = (bumps.reshape(len(coords), n_genes, N_BUMPS) * weights).sum(axis=2)  # (R, G)
    spread = fields.std(axis=0)
    standardised = (fields - fields.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return expit(GAIN * standardised)


def _connectivity(coords: np.ndarray, expression: np.ndarray, similarity_weight: float) -> np.ndarray:
    distance = squareform(pdist(coords))
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant profile has no correlation
        similarity = np.nan_to_num(np.corrcoef(expression))
    return np.exp(-distance / DISTANCE_SCALE_MM) + similarity_weight * similarity


def _symmetric_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Symmetric matrix with standard normal off-diagonal entries."""
    draws = rng.standard_normal((n, n))
    return (draws + draws.T) / np.sqrt(2.0)
