"""Simulated worlds on the real Schaefer-100 regions, for calibrating spatial nulls.

A world keeps hcp-s100's regions (MNI centroids, labels, hence hemispheres) and replaces its
expression and connectivity by draws whose dependence is known:

- expression: genes drawn from Gaussian random fields over the regions (a Matern-family
  covariance of region distance, or of the mirrored distance for fields symmetric across the
  hemispheres, as AHBA expression is), optionally as mixtures of a few latent fields (genes
  co-expressed) and passed through a sigmoid with per-gene offsets (values in (0, 1), as the data);
- connectivity, independent of expression given space: (a) a function of distance plus noise,
  exp(-d / decay) + noise, or (b) the similarity of an independent set of spatial fields plus
  noise; or, for power, (c) (a) plus `effect` times the expression similarity.

The statistic is what the `cge` reference family scores, without training: its prediction is
a * corr(x_i, x_j) + b (xattn/models/baselines.py: Pearson correlation across genes of the two
regions' expression rows), so with a > 0 its test Pearson r is exactly the Pearson r between
corr(x_i, x_j) and connectivity over the test pairs, whatever the fitted a and b. Test pairs are
those of a spatial fold split (`region_folds(method="spatial")`), and, as in a study, the
statistic is the mean over the K folds and null i is one map scored over every fold.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from xattn.data import load_dataset
from xattn.data.connectome import ConnectomeData
from xattn.data.nulls import (
    SPATIAL_KERNELS,
    fit_spatial_covariance,
    mirrored_distances,
    null_data,
    null_seed,
    region_distances,
    spectral_basis,
    spectral_flips,
)
from xattn.data.splits import region_folds

ALPHA = 0.05


@dataclass(frozen=True)
class Expression:
    """How a world's expression is drawn: `genes` columns, each a Gaussian field with kernel
    `kernel` (nulls.SPATIAL_KERNELS) of length `length` mm, or, with `latent`, each a random
    mixture of that many such fields plus white noise of sd `noise`. `symmetric`: fields of
    the mirrored distance (homologous regions alike). `sigmoid`: values expit(offset_g + field),
    offsets N(0, 1) per gene. `second`: (kernel, length, weight) of a second field added to
    each first one (a map with two scales, which no single kernel of the fit matches)."""

    genes: int = 12
    kernel: str = "exponential"
    length: float = 20.0
    latent: int | None = None
    noise: float = 0.0
    symmetric: bool = False
    sigmoid: bool = False
    second: tuple[str, float, float] | None = None


@dataclass(frozen=True)
class Connectivity:
    """How a world's connectivity is drawn: "distance" (exp(-d / decay) + noise), "field" (the
    correlation across `fields` independent Gaussian fields of kernel `kernel`, length `length`,
    plus noise) or "expression" ("distance" plus `effect` times the expression similarity)."""

    kind: str = "distance"
    decay: float = 30.0
    noise: float = 0.1
    fields: int = 8
    kernel: str = "matern32"
    length: float = 30.0
    effect: float = 0.0


@dataclass
class Regions:
    """The regions every world shares: hcp-s100 as loaded, its distances and test sets."""

    data: ConnectomeData
    distance: np.ndarray
    mirrored: np.ndarray
    test_sets: list[np.ndarray]
    eigen_cache: dict = dataclasses.field(default_factory=dict)  # msr's fits share the grid's eigendecompositions


def schaefer100(mirror, folds: int = 4, split_seed: int = 0) -> Regions:
    """hcp-s100's 100 cortical regions and the test regions of its `folds` spatial folds."""
    data = load_dataset("hcp-s100", mirror=str(mirror))
    test_sets = [split.test for split in region_folds(data, folds, method="spatial", seed=split_seed)]
    return Regions(data, region_distances(data), mirrored_distances(data), test_sets)


def gaussian_fields(distance: np.ndarray, n: int, kernel: str, length: float, rng: np.random.Generator) -> np.ndarray:
    """(R, n) independent draws of a zero-mean, unit-variance Gaussian field with correlation
    kernel(distance / length)."""
    covariance = SPATIAL_KERNELS[kernel](distance / length)
    # A smooth kernel is numerically singular on 100 regions: a jitter far below any nugget.
    factor = np.linalg.cholesky(covariance + 1e-6 * np.eye(len(distance)))
    return factor @ rng.standard_normal((len(distance), n))


def draw_expression(regions: Regions, spec: Expression, rng: np.random.Generator) -> np.ndarray:
    distance = regions.mirrored if spec.symmetric else regions.distance
    n_fields = spec.latent or spec.genes

    def fields(kernel: str, length: float) -> np.ndarray:
        return gaussian_fields(distance, n_fields, kernel, length, rng)

    drawn = fields(spec.kernel, spec.length)
    if spec.second is not None:
        kernel, length, weight = spec.second
        drawn = np.sqrt(1 - weight) * drawn + np.sqrt(weight) * fields(kernel, length)
    if spec.latent:
        drawn = drawn @ rng.standard_normal((spec.latent, spec.genes)) / np.sqrt(spec.latent)
    values = drawn + spec.noise * rng.standard_normal(drawn.shape)
    if spec.sigmoid:
        values = expit(rng.standard_normal(spec.genes) + values)
    return values


def similarity(values: np.ndarray) -> np.ndarray:
    """(R, R) Pearson correlation across columns of each pair of rows: cge's corr(x_i, x_j)."""
    return np.corrcoef(values)


def draw_connectivity(
    regions: Regions, spec: Connectivity, rng: np.random.Generator, expression: np.ndarray | None = None
) -> np.ndarray:
    noise = rng.standard_normal(regions.distance.shape)
    noise = spec.noise * (noise + noise.T) / np.sqrt(2.0)
    if spec.kind == "field":
        signal = similarity(gaussian_fields(regions.distance, spec.fields, spec.kernel, spec.length, rng))
    else:
        signal = np.exp(-regions.distance / spec.decay)
        if spec.kind == "expression":
            signal = signal + spec.effect * similarity(expression)
    connectivity = signal + noise
    np.fill_diagonal(connectivity, 0.0)
    return connectivity


def world(regions: Regions, expression: np.ndarray, connectivity: np.ndarray) -> ConnectomeData:
    """hcp-s100 with this expression (genes g0, g1, ...) and connectivity."""
    return dataclasses.replace(
        regions.data,
        expression=np.ascontiguousarray(expression, dtype=np.float32),
        genes=[f"g{g}" for g in range(expression.shape[1])],
        connectivity=np.ascontiguousarray(connectivity, dtype=np.float32),
    )


def fold_statistic(expression: np.ndarray, connectivity: np.ndarray, test_sets: list[np.ndarray]) -> float:
    """Mean over folds of the Pearson r between corr(x_i, x_j) and connectivity over the fold's
    test pairs: cge's test r averaged over folds (see the module docstring)."""
    corr = similarity(np.asarray(expression, dtype=np.float64))
    values = []
    for test in test_sets:
        first, second = np.triu_indices(len(test), k=1)
        i, j = test[first], test[second]  # unordered pairs: r over ordered ones counts each twice, the same r
        values.append(np.corrcoef(corr[i, j], connectivity[i, j])[0, 1])
    return float(np.mean(values))


def null_maps(regions: Regions, data: ConnectomeData, method: str, n_nulls: int, seed: int):
    """The expression of nulls 0 .. n_nulls - 1 of `data` as a study draws them (one map per
    index for all folds). msr goes through the functions null_data calls, with the grid's
    eigendecompositions shared across worlds (null_data refits per dataset; the fit is the same)."""
    if method == "msr":
        covariance = fit_spatial_covariance(
            data.expression, regions.distance, regions.mirrored, eigen_cache=regions.eigen_cache
        )
        basis = spectral_basis(covariance.matrix(regions.distance, regions.mirrored))
        for index in range(n_nulls):
            yield spectral_flips(data.expression, basis, null_seed(seed, method, index))
        return
    for index in range(n_nulls):
        yield null_data(data, method, null_seed(seed, method, index)).expression


def null_p(regions: Regions, data: ConnectomeData, method: str, n_nulls: int, seed: int = 0) -> dict:
    """The real statistic, the nulls' and p = (1 + #nulls >= real) / (1 + N), as
    xattn.tuning.comparison.null_test computes it."""
    real = fold_statistic(data.expression, data.connectivity, regions.test_sets)
    nulls = np.array(
        [
            fold_statistic(x, data.connectivity, regions.test_sets)
            for x in null_maps(regions, data, method, n_nulls, seed)
        ]
    )
    return {"real": real, "nulls": nulls, "p": float((1 + np.sum(nulls >= real)) / (1 + n_nulls))}


def rejection_rate(
    regions: Regions,
    expression: Expression,
    connectivity: Connectivity,
    methods: tuple[str, ...],
    n_worlds: int,
    n_nulls: int,
    seed: int = 0,
    alpha: float = ALPHA,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Per method, the share of `n_worlds` worlds whose p <= alpha (the false-positive rate when
    connectivity does not read expression, the power when it does), the mean real-minus-null
    statistic, and seconds spent on nulls. Every method sees the same worlds."""
    results = {method: {"rejected": 0, "gap": 0.0, "seconds": 0.0} for method in methods}
    for index in range(n_worlds):
        rng = np.random.default_rng([seed, index])
        values = draw_expression(regions, expression, rng)
        data = world(regions, values, draw_connectivity(regions, connectivity, rng, values))
        for method in methods:
            start = time.perf_counter()
            tested = null_p(regions, data, method, n_nulls, seed=int(rng.integers(2**31)))
            entry = results[method]
            entry["seconds"] += time.perf_counter() - start
            entry["rejected"] += tested["p"] <= alpha
            entry["gap"] += (tested["real"] - tested["nulls"].mean()) / n_worlds
        if progress is not None:
            progress(f"world {index + 1}/{n_worlds}")
    for entry in results.values():
        entry["rate"] = entry["rejected"] / n_worlds
        entry["worlds"], entry["nulls"] = n_worlds, n_nulls
    return results


def rates_text(results: dict[str, dict]) -> str:
    """'spin 0.85 (17/20), msr 0.05 (1/20)': the rates for an assertion message."""
    return ", ".join(f"{m} {e['rate']:.2f} ({e['rejected']}/{e['worlds']})" for m, e in results.items())
