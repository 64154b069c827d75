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

Library choice: netneurotools 0.3.0 no longer ships `gen_spinsamples`; its spin code moved to
neuromaps, whose `gen_spinsamples` takes sphere coordinates and hemisphere ids directly (no
surface files to fetch). brainsmash is the reference implementation of variogram-matched
surrogates and needs only a distance matrix.

Every null is a pure function of (data, method, index, seed): the trainable rebuilds it in
its own process, and a resumed or re-evaluated run sees the same null.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy.spatial.distance import cdist

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

NULL_METHODS = ("spin", "variogram", "shuffle")
_METHOD_IDS = {method: k for k, method in enumerate(NULL_METHODS)}
# brainsmash fits the variogram below this percentile of pair distances. Its default (25) suits
# dense surfaces; a parcellation has few pairs, and an expression model reads long-range
# structure too, so the fit covers most distances.
VARIOGRAM_PERCENTILE = 70


def null_seed(seed: int, method: str, index: int, fold: int) -> int:
    """The seed of null `index` of outer fold `fold`: independent draws per index and fold, the
    same draw for every family and training seed (so families are compared on the same nulls)."""
    sequence = np.random.SeedSequence([int(seed), _METHOD_IDS[method], int(index), int(fold)])
    return int(sequence.generate_state(1)[0])


def null_data(data: ConnectomeData, method: str, seed: int) -> ConnectomeData:
    """`data` with its expression replaced by one null draw; connectivity and coords unchanged."""
    if method not in _METHOD_IDS:
        raise DataError(f"unknown null method {method!r}: choose one of {', '.join(NULL_METHODS)}")
    check_null_method(data, method)
    if method == "variogram":
        expression = variogram_surrogates(data.expression, region_distances(data), seed)
    else:
        order = (
            spin_permutation(data, seed)
            if method == "spin"
            else np.random.default_rng(seed).permutation(data.n_regions)
        )
        expression = data.expression[order]
    metadata = {**data.metadata, "null": {"method": method, "seed": seed}}
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
