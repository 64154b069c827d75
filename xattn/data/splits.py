"""Region-held-out cross-validation: folds of regions, and the region pairs inside each part.

A pair (i, j) belongs to a part only when both regions do, so no test pair shares a
region with training. "random" folds scatter test regions over the brain; "spatial" folds
hold out contiguous patches, which also removes the help a test region gets from its
training neighbours (spatial autocorrelation of expression and connectivity).

Validation regions are carved from the non-test regions with the split's own method: a
spatial fold validates on a spatial patch too. Random validation regions inside a spatial
fold each have trained neighbours, which makes validation easier than test (measured on
hcp-s100: validation r 0.47 where test r was 0.26), and early stopping and the tuner then
select on a signal that does not predict the test metric. `inner_folds` partitions the
non-test regions the same way, for validation averaged over several patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

METHODS = ("random", "spatial")
PARTS = ("train", "val", "test")
MIN_PART_REGIONS = 2  # a part needs two regions to hold a pair
KMEANS_ITERATIONS = 25
WHOLE_DATA_STREAM = 2**31 - 1  # the seed sequence entry of the split with no test fold


@dataclass(frozen=True, eq=False)
class RegionSplit:
    """Disjoint sorted region indices for training, validation and test in one fold."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    fold: int
    method: str
    seed: int

    def __post_init__(self) -> None:
        for part in PARTS:
            object.__setattr__(self, part, np.sort(np.asarray(getattr(self, part), dtype=np.int64)))
        together = np.concatenate([self.train, self.val, self.test])
        if np.unique(together).size != together.size:
            raise DataError(f"fold {self.fold}: train, val and test regions overlap or repeat")

    def pairs(self, part: str) -> np.ndarray:
        """Ordered pairs (P, 2) of distinct regions that both lie in `part`."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return ordered_pairs(getattr(self, part))

    def to_dict(self) -> dict:
        """JSON-friendly form (plain lists and ints)."""
        return {
            **{part: getattr(self, part).tolist() for part in PARTS},
            "fold": int(self.fold),
            "method": self.method,
            "seed": int(self.seed),
        }

    @classmethod
    def from_dict(cls, payload: dict) -> RegionSplit:
        return cls(**{key: payload[key] for key in (*PARTS, "fold", "method", "seed")})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegionSplit) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable arrays inside


def ordered_pairs(regions: np.ndarray) -> np.ndarray:
    """All (i, j) with i, j in `regions` and i != j, row-major in the given order, int64."""
    regions = np.asarray(regions, dtype=np.int64).ravel()
    first = np.repeat(regions, regions.size)
    second = np.tile(regions, regions.size)
    distinct = first != second
    return np.stack([first[distinct], second[distinct]], axis=1)


def region_folds(
    data_or_coords: ConnectomeData | np.ndarray,
    n_folds: int = 5,
    *,
    method: str = "random",
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[RegionSplit]:
    """K folds whose test sets partition the regions (sizes differ by at most one).

    "spatial" groups regions by balanced k-means on their coordinates (seeded farthest-point
    start, then Lloyd steps whose assignment gives every cluster its exact quota), so each
    test set is a compact patch. In every fold `val_fraction` of the remaining regions (at
    least 2) validate, drawn with the same method and seeded by (seed, fold): at random, or as
    a spatial patch grown from a random remaining region by repeatedly adding the remaining
    region nearest to the patch (so the patch has no gap larger than the data's own spacing).
    """
    coords, coords_missing = _coords_of(data_or_coords)
    n_regions = len(coords)
    _check_arguments(n_regions, n_folds, method, val_fraction)
    if method == "spatial":
        if coords_missing:
            raise DataError(
                "spatial folds need region coordinates, and this dataset has none: "
                "add a coords file or use method 'random'"
            )
        test_sets = _balanced_kmeans(coords, n_folds, np.random.default_rng(seed))
    else:
        test_sets = np.array_split(np.random.default_rng(seed).permutation(n_regions), n_folds)
    return [_split_fold(coords, test, fold, method, seed, val_fraction) for fold, test in enumerate(test_sets)]


def whole_data_split(
    data_or_coords: ConnectomeData | np.ndarray, *, method: str, seed: int, val_fraction: float, refit: bool = False
) -> RegionSplit:
    """A split with no test regions, for the model a study deploys: `val_fraction` of all
    regions validate (a grown patch for "spatial", as in every fold) and the rest train, which
    is where the deployable configuration is selected; with `refit`, every region trains (no
    validation either). Fold -1 marks it in checkpoints."""
    coords, _ = _coords_of(data_or_coords)
    everything = np.arange(len(coords))
    empty = np.empty(0, dtype=np.int64)
    if refit:
        return RegionSplit(train=everything, val=empty, test=empty, fold=-1, method=method, seed=seed)
    return _split_fold(coords, empty, -1, method, seed, val_fraction)


def inner_folds(data_or_coords: ConnectomeData | np.ndarray, split: RegionSplit, n_inner: int) -> list[RegionSplit]:
    """`n_inner` splits of `split`'s non-test regions with the same test set: the non-test
    regions are partitioned by the split's method (balanced k-means patches, as the test
    folds, or random groups) and each group validates once while the others train. Seeded
    by the split's (seed, fold)."""
    coords, _ = _coords_of(data_or_coords)
    n_remaining = len(coords) - len(split.test)
    if int(n_inner) != n_inner or not 2 <= n_inner <= n_remaining // MIN_PART_REGIONS - 1:
        raise DataError(
            f"inner_folds={n_inner!r} does not fit {n_remaining} non-test regions: use an integer from 2 to "
            f"{max(2, n_remaining // MIN_PART_REGIONS - 1)}"
        )
    groups = _validation_groups(coords, split.test, int(n_inner), split.method, split.seed, split.fold)
    return [_with_validation(split.test, groups, g, split.fold, split.method, split.seed) for g in range(len(groups))]


def _split_fold(
    coords: np.ndarray, test: np.ndarray, fold: int, method: str, seed: int, val_fraction: float
) -> RegionSplit:
    remaining = np.setdiff1d(np.arange(len(coords)), test)
    n_val = _val_size(remaining.size, val_fraction)
    rng = _fold_rng(seed, fold)
    if method == "spatial":
        val = _grown_patch(coords, remaining, n_val, rng)
    else:
        val = rng.permutation(remaining)[:n_val]
    return RegionSplit(train=np.setdiff1d(remaining, val), val=val, test=test, fold=fold, method=method, seed=seed)


def _fold_rng(seed: int, fold: int) -> np.random.Generator:
    """The random stream of one fold; fold -1 (no test fold: whole_data_split) has its own too."""
    return np.random.default_rng([seed, fold if fold >= 0 else WHOLE_DATA_STREAM])


def _val_size(n_remaining: int, val_fraction: float) -> int:
    return max(MIN_PART_REGIONS, int(round(val_fraction * n_remaining)))


def _grown_patch(coords: np.ndarray, candidates: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` of `candidates`: a seeded start, then always the candidate nearest to the patch."""
    distance = cdist(coords[candidates], coords[candidates])
    inside = np.zeros(len(candidates), dtype=bool)
    inside[rng.integers(len(candidates))] = True
    to_patch = distance[inside].min(axis=0)
    for _ in range(size - 1):
        nearest = int(np.where(inside, np.inf, to_patch).argmin())
        inside[nearest] = True
        to_patch = np.minimum(to_patch, distance[nearest])
    return candidates[inside]


def _validation_groups(
    coords: np.ndarray, test: np.ndarray, n_groups: int, method: str, seed: int, fold: int
) -> list[np.ndarray]:
    """The non-test regions partitioned into `n_groups` (sizes differ by at most one)."""
    remaining = np.setdiff1d(np.arange(len(coords)), test)
    rng = _fold_rng(seed, fold)
    if method == "spatial":
        return [remaining[group] for group in _balanced_kmeans(coords[remaining], n_groups, rng)]
    return np.array_split(rng.permutation(remaining), n_groups)


def _with_validation(
    test: np.ndarray, groups: list[np.ndarray], chosen: int, fold: int, method: str, seed: int
) -> RegionSplit:
    train = np.concatenate([group for g, group in enumerate(groups) if g != chosen])
    return RegionSplit(train=train, val=groups[chosen], test=test, fold=fold, method=method, seed=seed)


def _coords_of(data_or_coords: ConnectomeData | np.ndarray) -> tuple[np.ndarray, bool]:
    if isinstance(data_or_coords, ConnectomeData):
        return data_or_coords.coords.astype(np.float64), data_or_coords.metadata.get("coords") == "missing"
    coords = np.asarray(data_or_coords, dtype=np.float64)
    if coords.ndim != 2 or not np.isfinite(coords).all():
        raise DataError(f"region_folds needs a dataset or finite (regions, dims) coordinates, got shape {coords.shape}")
    return coords, False


def _check_arguments(n_regions: int, n_folds: int, method: str, val_fraction: float) -> None:
    if method not in METHODS:
        raise DataError(f"unknown split method {method!r}: choose one of {', '.join(METHODS)}")
    if int(n_folds) != n_folds or not 2 <= n_folds <= n_regions // 2:
        raise DataError(
            f"n_folds={n_folds!r} does not fit {n_regions} regions: use an integer from 2 to {n_regions // 2} "
            "(each test set needs at least 2 regions)"
        )
    if not 0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction={val_fraction!r}: use a fraction in (0, 0.5]")
    largest_test = -(-n_regions // n_folds)
    if n_regions - largest_test - _val_size(n_regions - largest_test, val_fraction) < MIN_PART_REGIONS:
        raise DataError(
            f"{n_regions} regions in {n_folds} folds leave fewer than {MIN_PART_REGIONS} training regions: "
            "use fewer folds or a smaller val_fraction"
        )


def _balanced_kmeans(coords: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k spatial clusters of sizes from `np.array_split` (differ by at most one)."""
    quotas = [len(part) for part in np.array_split(np.arange(len(coords)), k)]
    slot_cluster = np.repeat(np.arange(k), quotas)  # one assignment slot per region
    centres = _farthest_point_start(coords, k, rng)
    labels = None
    for _ in range(KMEANS_ITERATIONS):
        cost = cdist(coords, centres, "sqeuclidean")[:, slot_cluster]
        _, slots = linear_sum_assignment(cost)
        new_labels = slot_cluster[slots]
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centres = np.stack([coords[labels == c].mean(axis=0) for c in range(k)])
    return [np.flatnonzero(labels == c) for c in range(k)]


def _farthest_point_start(coords: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded first centre, then repeatedly the region farthest from all centres so far."""
    chosen = [int(rng.integers(len(coords)))]
    nearest = cdist(coords, coords[chosen]).ravel()
    for _ in range(k - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, cdist(coords, coords[chosen[-1:]]).ravel())
    return coords[chosen]
