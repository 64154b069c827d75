"""Null datasets: the same connectivity and coordinates with spatially autocorrelated expression.

Expression and connectivity are both smooth over the cortex, so a model can predict held-out
regions from geography alone. A null keeps the spatial structure of expression but breaks its
link to the regions it was measured in; an expression model that does no better on real data
than on its nulls has learnt space, not genes.

- `spin`: rotate the parcels on the sphere (the same random rotation for every gene, mirrored
  between hemispheres) and give each region the expression of its rotated partner
  (Alexander-Bloch et al. 2018). Each region is matched to exactly one partner with the
  Hungarian algorithm (`neuromaps.nulls.spins.gen_spinsamples(method="hungarian")`), so
  every region's expression is used once: parcels that were not sampled are not in the data,
  and the Schaefer parcellations have no medial-wall parcel, so nothing is left unmatched.
- `variogram`: per gene, a surrogate map whose variogram matches the gene's over the region
  distance matrix (Burt et al. 2020, `brainsmash.mapgen.Base`), with the gene's own values
  (resample): works for any parcellation with coordinates, including user files.
- `shuffle`: a plain permutation of regions; it destroys spatial autocorrelation (the floor).
- `msr` (the default): Moran spectral randomisation (Wagner & Dray 2015) in the eigenbasis of
  the expression's own spatial covariance. A Gaussian covariance over region distances
  (a Matern or exponential kernel with a nugget, optionally tied across hemispheres by mirror
  image) is fitted to all genes at once by restricted maximum likelihood; the expression,
  less its generalised-least-squares mean, is written in the eigenvectors of that covariance
  and each eigenvector's coefficient changes sign at random, the same signs for every gene.

Why `msr` is the default. A null is exact when it draws expression from the distribution the
real expression came from, given the regions' places. For a Gaussian field whose covariance is
the fitted one, the coefficients in its eigenbasis are independent and symmetric, and the GLS
mean is independent of the residual, so the sign flips leave the distribution of the
expression unchanged: the real map is one draw among its nulls. Flipping every gene with the
same signs keeps the genes' co-expression (a flip is one orthogonal map applied to every gene),
and with it how many independent patterns the region-by-region similarity of expression
carries. Spins and variogram surrogates miss where it matters: a parcel's spun partner lies up
to a parcel's width from where its expression belongs, so the similarity of two regions'
expression no longer falls off with their distance as it did; variogram surrogates are drawn
gene by gene over plain distance, so they lose co-expression and the two hemispheres' symmetry.

Measured (`benchmarks/null_calibration.py`: worlds on hcp-s100's regions whose connectivity does
not read expression, 12 genes, cge's statistic over 4 spatial folds, N = 19, alpha 0.05): msr
rejected in 1.9-6.1% of 800 worlds per scenario (9 scenarios), spins in 22-98% of 200,
shuffles in 84-100%, variogram surrogates (8 genes, 30 worlds) in 17% of worlds of
independent genes, 60% of worlds whose genes are symmetric across hemispheres, as AHBA's are,
and in none where genes are co-expressed (their nulls beat the real data). msr found a
connectivity effect of 0.05 x expression similarity beside a distance effect in 79% of 200
worlds, of 0.15 in all.

Library choice: netneurotools 0.3.0 no longer ships `gen_spinsamples`; its spin code moved to
neuromaps, whose `gen_spinsamples` takes sphere coordinates and hemisphere ids directly (no
surface files to fetch). brainsmash is the reference implementation of variogram-matched
surrogates and needs only a distance matrix. `msr` is written here with scipy: the library
version (brainspace's MoranRandomization, behind `neuromaps.nulls.moran`) brings VTK, takes a
fixed weight matrix (its eigenvectors are not the data's covariance's: in a prototype, flips in
those of inverse distance rejected in 60% of 60 distance-only worlds of smooth genes) and
draws each gene's signs on its own; no library fits one covariance to many maps by REML.

Limits of `msr`: exact for Gaussian expression whose covariance is in the fitted family;
real expression is bounded, skewed and not stationary, so it is an approximation there too.
The nulls are Gaussian-like values around each gene's mean (a gene's values are not resampled,
so they can leave [0, 1]); a constant gene stays constant.

Every null is a pure function of (data, method, index, seed): the trainable rebuilds it in
its own process, and a resumed or re-evaluated run sees the same null. Null i is one map for
the whole study: the same in every outer fold, for every family and training seed, because
the real statistic (mean test r over folds) is one map scored over K folds and its null
counterpart must be too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import minimize_scalar
from scipy.spatial.distance import cdist

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

# New methods go last: a method's position is part of its nulls' seeds.
NULL_METHODS = ("spin", "variogram", "shuffle", "msr")
_METHOD_IDS = {method: k for k, method in enumerate(NULL_METHODS)}
# brainsmash fits the variogram below this percentile of pair distances. Its default (25) suits
# dense surfaces; a parcellation has few pairs, and an expression model reads long-range
# structure too, so the fit covers most distances.
VARIOGRAM_PERCENTILE = 70


def null_seed(seed: int, method: str, index: int) -> int:
    """The seed of null `index`: independent draws per index, and one draw for every outer fold,
    family and training seed (so null i is one map, scored over the folds as the real one is)."""
    sequence = np.random.SeedSequence([int(seed), _METHOD_IDS[method], int(index)])
    return int(sequence.generate_state(1)[0])


def null_data(data: ConnectomeData, method: str, seed: int) -> ConnectomeData:
    """`data` with its expression replaced by one null draw; connectivity and coords unchanged."""
    if method not in _METHOD_IDS:
        raise DataError(f"unknown null method {method!r}: choose one of {', '.join(NULL_METHODS)}")
    check_null_method(data, method)
    extra = {}
    if method == "variogram":
        expression = variogram_surrogates(data.expression, region_distances(data), seed)
    elif method == "msr":
        covariance = fitted_covariance(data)
        matrix = covariance.matrix(region_distances(data), mirrored_distances(data))
        expression = spectral_flips(data.expression, spectral_basis(matrix), seed)
        extra = {"covariance": dataclasses.asdict(covariance)}
    else:
        order = (
            spin_permutation(data, seed)
            if method == "spin"
            else np.random.default_rng(seed).permutation(data.n_regions)
        )
        expression = data.expression[order]
    metadata = {**data.metadata, "null": {"method": method, "seed": seed, **extra}}
    return dataclasses.replace(data, expression=np.ascontiguousarray(expression, dtype=np.float32), metadata=metadata)


def check_null_method(data: ConnectomeData, method: str) -> None:
    """A one-line DataError when `data` cannot have nulls of `method`."""
    if method != "shuffle" and data.metadata.get("coords") == "missing":
        raise DataError(f"{method} nulls need region coordinates: give data.files.coords, or use nulls.method=shuffle")


def region_distances(data: ConnectomeData) -> np.ndarray:
    """Euclidean distances between region centroids (MNI millimetres for the named datasets)."""
    coords = data.coords.astype(np.float64)
    return cdist(coords, coords)


def hemispheres(data: ConnectomeData) -> np.ndarray:
    """0 (left) or 1 (right) per region: from the labels where every one names its hemisphere
    (Schaefer: `7Networks_LH_...`), else from the sign of the x coordinate (MNI x < 0 is left)."""
    marks = [_hemisphere_mark(label) for label in data.labels]
    if all(mark is not None for mark in marks):
        hemi = np.array(marks, dtype=np.int8)
    else:
        hemi = (data.coords[:, 0] >= 0).astype(np.int8)
    if hemi.min() == hemi.max():
        # One hemisphere: rotate it alone (neuromaps mirrors the rotation for the other id).
        return np.zeros(data.n_regions, dtype=np.int8)
    return hemi


def _hemisphere_mark(label: str) -> int | None:
    parts = {part.upper() for part in label.replace("-", "_").split("_")}
    if parts & {"LH", "L", "LEFT"}:
        return 0
    if parts & {"RH", "R", "RIGHT"}:
        return 1
    return None


def sphere_coordinates(data: ConnectomeData) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sphere coordinates per region and hemisphere ids, for spin rotations.

    An approximation of the parcels' centroids on the FreeSurfer fsaverage sphere, which the
    data does not carry: each hemisphere's MNI centroids are centred on that hemisphere's mean
    and projected radially onto the unit sphere. The inflated sphere keeps a parcel's
    direction from the hemisphere's centre roughly where its centroid is, so neighbours stay
    neighbours and a rotation moves a parcel's expression to a nearby-in-shape place; the
    distortion is largest for medial parcels, which lie close to the centre.
    """
    hemi = hemispheres(data)
    coords = data.coords.astype(np.float64)
    sphere = np.zeros_like(coords)
    for side in np.unique(hemi):
        rows = hemi == side
        centred = coords[rows] - coords[rows].mean(axis=0)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise DataError(
                "two regions share a hemisphere's centre: spin nulls need distinct coordinates; use variogram"
            )
        sphere[rows] = centred / norms
    return sphere, hemi


def spin_permutation(data: ConnectomeData, seed: int) -> np.ndarray:
    """Row order of one spin null: region k gets the expression of row `order[k]`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neuromaps' optional-dependency and deprecation notices
        from neuromaps.nulls.spins import gen_spinsamples

    sphere, hemi = sphere_coordinates(data)
    spins = gen_spinsamples(sphere, hemi, n_rotate=1, method="hungarian", seed=seed, check_duplicates=False)
    return np.asarray(spins[:, 0], dtype=np.int64)


def variogram_surrogates(expression: np.ndarray, distance: np.ndarray, seed: int) -> np.ndarray:
    """One variogram-matched surrogate per gene column, each with that gene's own values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brainsmash.mapgen import Base

    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=expression.shape[1])
    surrogates = np.empty(expression.shape, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # brainsmash calls np.row_stack
        for gene, gene_seed in enumerate(seeds):
            values = expression[:, gene].astype(np.float64)
            if np.ptp(values) == 0:  # a constant gene has no variogram to match
                surrogates[:, gene] = values
                continue
            surrogates[:, gene] = Base(values, distance, resample=True, pv=VARIOGRAM_PERCENTILE, seed=int(gene_seed))(
                n=1
            )
    return surrogates


def morans_i(values: np.ndarray, distance: np.ndarray) -> float:
    """Moran's I of one map with inverse-distance weights: ~0 for no spatial autocorrelation,
    positive when near regions have similar values."""
    with np.errstate(divide="ignore"):
        weights = np.where(distance > 0, 1.0 / distance, 0.0)
    centred = values - values.mean()
    return float(len(values) / weights.sum() * (centred @ weights @ centred) / (centred @ centred))


# ---------------------------------------------------------------- msr: spectral sign flips

_SQRT3, _SQRT5 = np.sqrt(3.0), np.sqrt(5.0)
# Correlation as a function of distance / length: the Matern family from rough (exponential,
# nu = 1/2) to smooth (Gaussian, nu -> infinity); the likelihood picks among them.
SPATIAL_KERNELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exponential": lambda r: np.exp(-r),
    "matern32": lambda r: (1.0 + _SQRT3 * r) * np.exp(-_SQRT3 * r),
    "matern52": lambda r: (1.0 + _SQRT5 * r + 5.0 * r**2 / 3.0) * np.exp(-_SQRT5 * r),
    "gaussian": lambda r: np.exp(-0.5 * r**2),
}
# How much a region's expression is tied to its mirror image in the other hemisphere: 0 is
# plain distance, 1 is full symmetry (AHBA expression on hcp-s100 fits 1 by far; see
# `mirrored_distances`).
MIRROR_WEIGHTS = (0.0, 0.5, 1.0)
# The nugget (non-spatial share of the variance) is profiled on a log grid: smooth kernels need
# nuggets near 0 resolved (1e-3 against 1e-2 changes the fit), rough ones need them up to ~1.
NUGGETS = np.geomspace(1e-4, 0.95, 40)
COARSE_LENGTHS = 12  # length scales tried per kernel and mirror weight before refining the best


@dataclasses.dataclass(frozen=True)
class SpatialCovariance:
    """The correlation of a gene's expression between two regions, shared by every gene (each
    gene has its own mean and variance): (1 - nugget) * spatial + nugget * identity, spatial =
    (1 - mirror) * k(d / length) + mirror * k(m / length) for region distance d and mirrored
    distance m (millimetres for the named datasets)."""

    kernel: str
    length: float
    mirror: float
    nugget: float

    def matrix(self, distance: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
        return (1.0 - self.nugget) * _spatial(self.kernel, self.length, self.mirror, distance, mirrored) + (
            self.nugget * np.eye(len(distance))
        )


def _spatial(kernel: str, length: float, mirror: float, distance: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    correlation = SPATIAL_KERNELS[kernel]
    plain = correlation(distance / length)
    return plain if mirror == 0 else (1.0 - mirror) * plain + mirror * correlation(mirrored / length)


def mirrored_distances(data: ConnectomeData) -> np.ndarray:
    """Distances after reflecting the second hemisphere onto the first across the plane midway
    between their mean x: same-hemisphere pairs keep their distance, a cross-hemisphere pair
    gets the distance from one region to the other's mirror image (homologues are close). A
    kernel of these distances is a kernel of the reflected points, so it is a covariance."""
    hemi = hemispheres(data)
    coords = data.coords.astype(np.float64)
    if hemi.min() == hemi.max():
        return cdist(coords, coords)
    midline = 0.5 * (coords[hemi == 0, 0].mean() + coords[hemi == 1, 0].mean())
    reflected = coords.copy()
    reflected[hemi == 1, 0] = 2.0 * midline - coords[hemi == 1, 0]
    return cdist(reflected, reflected)


def fit_spatial_covariance(
    expression: np.ndarray, distance: np.ndarray, mirrored: np.ndarray, *, eigen_cache: dict | None = None
) -> SpatialCovariance:
    """The `SpatialCovariance` of largest restricted (REML) likelihood for the gene columns of
    `expression`, each gene N(mean_g, variance_g * covariance): a grid over kernels, mirror
    weights and COARSE_LENGTHS length scales (the nugget profiled on NUGGETS), then the length of
    the best refined between its grid neighbours. REML, not a fit to the empirical variogram or
    correlogram: the unknown means bias those towards short lengths for smooth maps (measured:
    a Gaussian field of length 40 mm fitted 25 mm), which made the flips anti-conservative.

    `eigen_cache`, a dict the caller keeps, holds the grid's eigendecompositions between calls:
    they depend on the regions only, so many maps over one set of regions (a calibration) pay
    for them once.
    """
    values = np.asarray(expression, dtype=np.float64)
    values = values[:, np.ptp(values, axis=0) > 0]  # a constant gene has no spatial structure to fit
    if values.shape[1] == 0:
        raise DataError("msr nulls need at least one gene whose expression varies across regions")
    pairs = distance[np.triu_indices(len(distance), k=1)]
    pairs = pairs[pairs > 0]
    if pairs.size == 0:
        raise DataError("msr nulls need regions at distinct coordinates")
    lengths = np.geomspace(pairs.min() / 2.0, pairs.max() * 2.0, COARSE_LENGTHS)
    mirrors = MIRROR_WEIGHTS if not np.allclose(distance, mirrored) else (0.0,)

    def score(kernel: str, mirror: float, length: float, cached: bool = False) -> tuple[float, float]:
        key = (kernel, mirror, float(length))
        if cached and eigen_cache is not None and key in eigen_cache:
            return _reml(values, eigen_cache[key])
        decomposition = eigh(_spatial(kernel, length, mirror, distance, mirrored))
        if cached and eigen_cache is not None:
            eigen_cache[key] = decomposition
        return _reml(values, decomposition)

    grid = {
        (k, m, i): score(k, m, length, cached=True)[0]
        for k in SPATIAL_KERNELS
        for m in mirrors
        for i, length in enumerate(lengths)
    }
    (kernel, mirror, best), coarse = max(grid.items(), key=lambda item: item[1])
    low, high = np.log(lengths[max(best - 1, 0)]), np.log(lengths[min(best + 1, len(lengths) - 1)])
    refined = minimize_scalar(
        lambda log_length: -score(kernel, mirror, np.exp(log_length))[0], bounds=(low, high), method="bounded",
        options={"xatol": 0.02},
    )  # fmt: skip
    length = float(np.exp(refined.x)) if -refined.fun > coarse else float(lengths[best])
    return SpatialCovariance(kernel, length, float(mirror), score(kernel, mirror, length)[1])


def _reml(values: np.ndarray, decomposition: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """The restricted log-likelihood (up to a constant) of the columns of `values` (R, G), each
    N(mean_g, variance_g * ((1 - t) spatial + t I)) with mean_g and variance_g profiled out,
    maximised over the nugget t in NUGGETS; and that t. One eigendecomposition of `spatial`
    (`decomposition`, as scipy's eigh returns it) serves every t."""
    n_regions, n_genes = values.shape
    eigenvalues, vectors = decomposition
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # a kernel matrix is PSD; round-off is not
    rotated, ones = vectors.T @ values, vectors.T @ np.ones(n_regions)
    variances = (1.0 - NUGGETS)[:, None] * eigenvalues[None, :] + NUGGETS[:, None]  # (T, R)
    inverse = 1.0 / variances
    information = inverse @ ones**2  # 1' C^-1 1 per nugget
    cross = inverse @ (ones[:, None] * rotated)  # 1' C^-1 x_g
    residual = inverse @ rotated**2 - cross**2 / information[:, None]  # (x_g - mean_g)' C^-1 (x_g - mean_g)
    loglik = -0.5 * (
        (n_regions - 1) * np.log(np.maximum(residual, 1e-300)).sum(axis=1)
        + n_genes * (np.log(variances).sum(axis=1) + np.log(information))
    )
    best = int(np.argmax(loglik))
    return float(loglik[best]), float(NUGGETS[best])


def fitted_covariance(data: ConnectomeData) -> SpatialCovariance:
    """`fit_spatial_covariance` of `data`'s expression and coordinates, cached per process: every
    null of one dataset uses the same fit, and a trainable that is reused draws several."""
    digest = hashlib.sha256()
    for array in (data.expression, data.coords, hemispheres(data)):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    key = digest.hexdigest()
    if key not in _FITS:
        if len(_FITS) >= _FITS_KEPT:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = fit_spatial_covariance(data.expression, region_distances(data), mirrored_distances(data))
    return _FITS[key]


_FITS: dict[str, SpatialCovariance] = {}  # by a digest of the data: ConnectomeData holds arrays, which do not hash
_FITS_KEPT = 4


def spectral_basis(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What msr nulls of one dataset share: the GLS mean weights (R,) of `covariance` C,
    C^-1 1 / 1' C^-1 1, and the eigenvectors (R, R - 1) of the residual covariance
    C - 1 1' / (1' C^-1 1) other than its null direction C^-1 1, which every residual is
    orthogonal to."""
    ones = np.ones(len(covariance))
    gls = np.linalg.solve(covariance, ones)
    information = float(ones @ gls)
    direction = gls / np.linalg.norm(gls)
    # The null direction moved to eigenvalue -1: first in eigh's ascending order, whatever the
    # near-zero eigenvalues of a smooth kernel do.
    reduced = covariance - np.outer(ones, ones) / information - np.outer(direction, direction)
    _, vectors = eigh(reduced)
    return gls / information, vectors[:, 1:]


def spectral_flips(expression: np.ndarray, basis: tuple[np.ndarray, np.ndarray], seed: int) -> np.ndarray:
    """One msr null: each gene's GLS mean plus its residual with the coefficient of every
    eigenvector of `basis` (`spectral_basis`) times a random sign, the same signs for all genes.

    For Gaussian genes of covariance C the GLS mean and the residual are independent, and the
    residual's coefficients on those eigenvectors are independent and symmetric, so flipping
    their signs leaves the distribution of the expression unchanged.
    """
    weights, vectors = basis
    values = np.asarray(expression, dtype=np.float64)
    mean = weights @ values
    residual = values - mean
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=vectors.shape[1])
    return mean + vectors @ (signs[:, None] * (vectors.T @ residual))
