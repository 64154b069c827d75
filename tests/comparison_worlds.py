"""Simulated two-model comparisons on the real Schaefer-100 regions, for calibrating the corrected
resampled t (xattn/tuning/statistics.py) where the unit is a region fold, as in a study.

A world keeps hcp-s100's 100 regions (MNI centroids) and draws, over its 4,950 unordered region
pairs (i, j):

- a target y_ij (connectivity-like, variance 1);
- for each model M in {A, B}, a raw feature x_M = y + tau_M * n_M (a noisy view of the target),
  and `nuisances` further features h_M that the target does not depend on.

Every pair-level variable v (y, n_A, n_B and each nuisance) is
    v_ij = sqrt(s / 2) * (f_i + f_j) + sqrt(1 - s) * e_ij,  s = `region_share`,
with f a unit-variance region effect (a Gaussian field over the regions' distances with kernel
`kernel` and length `length` mm, or independent across regions when `length` is None) and e
independent pair noise. So pairs that share a region are correlated, and a fold's test pairs
carry about as much information as its few test regions: the fold, not the pair, is the unit.

Fitting, and with it the training-set overlap: each model's prediction is the least-squares fit
of y on (1, x_M, h_M) over the fold's training pairs (both regions in the fold's training
regions; validation regions are left out, as in a study). With infinite data the nuisance
coefficients would be 0; estimated on ~1,800-2,600 correlated training pairs they are not, and
folds share most of their training regions, so their estimation errors, and with them the K
fold differences, are correlated across folds. This is the dependence that the Nadeau-Bengio
correction widens the interval for.

Scores: per fold, each model's Pearson r over the fold's test pairs (both regions in its
held-out set, `region_folds(method="spatial")`), and the fold difference z(r_A) - z(r_B)
(`fisher_z`), or r_A - r_B as `xattn.tuning.comparison.paired_difference` takes it.

The known effect. The design value is analytic: with infinite training data model M's
population r is corr(x_M, y) = 1 / sqrt(1 + tau_M^2), and tau_A, tau_B are computed from
`r_reference` (model B) and `delta_z` so that z(r_A) - z(r_B) = `delta_z` exactly. What the K
folds' mean estimates is not quite that: it is the expected fold difference at this training
size, on test sets of this size and spatial extent (fitting noise lowers r, a spatial patch
holds less variance than the whole cortex, z(r) is biased on few pairs). So the known effect
that coverage is checked against is the expected fold difference measured by one large,
independent simulation of the same worlds (`expected_difference`); with no effect (tau_A =
tau_B, same number of nuisances) it is exactly 0 by symmetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from null_worlds import gaussian_fields

from xattn.data.connectome import ConnectomeData
from xattn.data.nulls import region_distances
from xattn.data.splits import region_folds
from xattn.tuning.statistics import fisher_z

SCALES = ("z", "r")


@dataclass(frozen=True)
class World:
    """How a comparison world is drawn (see the module docstring)."""

    r_reference: float = 0.35  # model B's population r
    delta_z: float = 0.10  # model A's population Fisher z minus model B's
    region_share: float = 0.5  # share of each pair variable's variance that comes from its two regions
    length: float | None = 20.0  # mm, of the region effects' field; None: independent regions
    kernel: str = "exponential"
    nuisances: int = 4  # features per model with no true effect, whose coefficients are fitted

    def population_r(self) -> tuple[float, float]:
        """Models A's and B's population r: corr(x_M, y) with infinite training data."""
        z_b = math.atanh(self.r_reference)
        return math.tanh(z_b + self.delta_z), self.r_reference

    def noise_sd(self) -> tuple[float, float]:
        """tau_A, tau_B: corr(y + tau n, y) = 1 / sqrt(1 + tau^2) for unit-variance y and n."""
        return tuple(math.sqrt(1.0 / r**2 - 1.0) for r in self.population_r())


@dataclass
class Design:
    """The real regions, their distances and unordered pairs (i < j), and one indicator column
    per fold of every split: `train` and `test` (P, F) mark the pairs with both regions in the
    fold's training (resp. test) regions; `folds[K]` are the columns of the K-fold split."""

    distance: np.ndarray
    first: np.ndarray
    second: np.ndarray
    train: np.ndarray
    test: np.ndarray
    folds: dict[int, slice]

    @property
    def n_regions(self) -> int:
        return len(self.distance)


def design(data: ConnectomeData, fold_counts: tuple[int, ...] = (4, 10), split_seed: int = 0) -> Design:
    """hcp-s100's regions with the pairs of its spatial K-fold splits, for each K in `fold_counts`."""
    distance = region_distances(data)
    first, second = np.triu_indices(len(distance), k=1)
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    folds = {}
    for k in fold_counts:
        folds[k] = slice(len(parts["test"]), len(parts["test"]) + k)
        for split in region_folds(data, k, method="spatial", seed=split_seed):
            for part in parts:
                inside = np.zeros(len(distance), dtype=bool)
                inside[getattr(split, part)] = True
                parts[part].append(inside[first] & inside[second])
    return Design(distance, first, second, np.stack(parts["train"], 1), np.stack(parts["test"], 1), folds)


def fold_differences(
    regions: Design, world: World, n_worlds: int, seed: int, batch: int = 100
) -> dict[int, dict[str, np.ndarray]]:
    """Per K, per scale ("z": z(r_A) - z(r_B); "r": r_A - r_B), the (n_worlds, K) fold
    differences of model A minus model B. The same worlds are split with every K."""
    out = {k: {scale: [] for scale in SCALES} for k in regions.folds}
    for start in range(0, n_worlds, batch):
        rng = np.random.default_rng([seed, start])
        r = [_test_r(gram) for gram in _grams(regions, world, min(batch, n_worlds - start), rng)]
        for k, columns in regions.folds.items():
            r_a, r_b = r[0][:, columns], r[1][:, columns]
            out[k]["z"].append(fisher_z(r_a) - fisher_z(r_b))
            out[k]["r"].append(r_a - r_b)
    return {k: {scale: np.concatenate(parts) for scale, parts in by_scale.items()} for k, by_scale in out.items()}


def expected_difference(regions: Design, world: World, n_worlds: int, seed: int) -> dict[int, dict[str, tuple]]:
    """Per K and scale, the expected fold difference (mean over worlds and folds) with its
    standard error, from `n_worlds` worlds; the standard error treats worlds as independent and
    the K folds of a world as one observation (their mean)."""
    differences = fold_differences(regions, world, n_worlds, seed)
    result = {}
    for k, by_scale in differences.items():
        result[k] = {}
        for scale, values in by_scale.items():
            per_world = values.mean(axis=1)
            result[k][scale] = (float(per_world.mean()), float(per_world.std(ddof=1) / np.sqrt(len(per_world))))
    return result


def _grams(regions: Design, world: World, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`size` worlds; per model the Gram matrices (size, 2F, d, d) of its columns [1, x, h..., y]
    over every fold's training pairs (the first F) and test pairs (the last F)."""
    p = world.nuisances
    n_vars = 3 + 2 * p  # y, n_A, n_B, then the nuisances of A and of B
    n_pairs = len(regions.first)
    if world.length is None:
        effects = rng.standard_normal((regions.n_regions, n_vars * size))
    else:
        effects = gaussian_fields(regions.distance, n_vars * size, world.kernel, world.length, rng)
    effects = effects.astype(np.float32)
    s = world.region_share
    pairs = np.ascontiguousarray((effects[regions.first] + effects[regions.second]).T)
    pairs = np.sqrt(s / 2, dtype=np.float32) * pairs.reshape(n_vars, size, n_pairs)
    pairs += np.sqrt(1 - s, dtype=np.float32) * rng.standard_normal((n_vars, size, n_pairs), dtype=np.float32)
    y = pairs[0]
    masks = np.concatenate([regions.train, regions.test], axis=1).astype(np.float32)  # (P, 2F)
    grams = []
    for m, tau in enumerate(world.noise_sd()):
        columns = [None, y + np.float32(tau) * pairs[1 + m], *pairs[3 + m * p : 3 + (m + 1) * p], y]
        d = len(columns)
        upper = [(a, b) for a in range(d) for b in range(a, d)]
        products = np.empty((len(upper), size, n_pairs), dtype=np.float32)
        for index, (a, b) in enumerate(upper):
            _product(columns[a], columns[b], products[index])
        sums = (products.reshape(-1, n_pairs) @ masks).reshape(len(upper), size, -1).astype(np.float64)
        gram = np.empty((size, masks.shape[1], d, d))
        for index, (a, b) in enumerate(upper):
            gram[:, :, a, b] = gram[:, :, b, a] = sums[index]
        grams.append(gram)
    return grams


def _product(first: np.ndarray | None, second: np.ndarray | None, out: np.ndarray) -> None:
    """The elementwise product of two columns into `out`, None standing for the column of ones."""
    if first is None and second is None:
        out.fill(1.0)
    elif first is None or second is None:
        out[...] = second if first is None else first
    else:
        np.multiply(first, second, out=out)


def _test_r(gram: np.ndarray) -> np.ndarray:
    """(size, F) test Pearson r of each fold's least-squares fit of the last column on the
    others over its training pairs, from the Gram matrices of the two parts."""
    n_folds = gram.shape[1] // 2
    fitting, held = gram[:, :n_folds], gram[:, n_folds:]
    beta = np.linalg.solve(fitting[..., :-1, :-1], fitting[..., :-1, -1:])[..., 1:, 0]  # the intercept drops out
    count = held[..., :1, :1]
    mean = held[..., 0, :] / count[..., 0]
    cov = held / count - mean[..., :, None] * mean[..., None, :]
    cross = np.einsum("wfa,wfa->wf", beta, cov[..., 1:-1, -1])
    var = np.einsum("wfa,wfab,wfb->wf", beta, cov[..., 1:-1, 1:-1], beta)
    return cross / np.sqrt(var * cov[..., -1, -1])
