"""Named datasets: a registry of published files with hashes, a mirror or a cache, a parser.

Modelled on pooch/nilearn fetchers. Every file is pinned to a commit of its upstream
GitHub repository and checked against its sha256, so a dataset name always means the same
numbers. Files are found, in order of preference:

1. in a *mirror*: a folder holding the files in their upstream layout
   (`<repository folder>/<path inside the repository>`), given as `mirror=` or by the
   environment variable `XATTN_DATA_MIRROR`; nothing is downloaded;
2. otherwise in the download cache (`cache_dir=`, `XATTN_DATA_CACHE`, or the user cache
   folder), which uses the same layout and so is itself a valid mirror; missing files are
   downloaded once with `pooch.retrieve` and work offline afterwards.

The published files and how they line up are described in `shared/data/README.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pooch

from xattn.data.connectome import ConnectomeData
from xattn.data.files import read_connectivity, read_expression, sampled_regions
from xattn.data.synthetic import make_synthetic
from xattn.errors import DataError
from xattn.paths import ensure_can_create

MIRROR_ENV = "XATTN_DATA_MIRROR"
CACHE_ENV = "XATTN_DATA_CACHE"
BASE_URL = "https://raw.githubusercontent.com"

# mirror folder -> (GitHub owner/repository, pinned commit)
UPSTREAM: dict[str, tuple[str, str]] = {
    "enigma-extra": ("saratheriver/enigma-extra", "8c9df6e0c37c66830360ad553807326035e180ed"),
    "ENIGMA": ("MICA-MNI/ENIGMA", "d66a7ef320a913f9441bf1089b44f1dad11e5724"),
    "GeneEx2Conn": ("neuroinfolab/GeneEx2Conn", "4e929d77c78a8d7dc7f6e7d1eccf3ec31708b526"),
}

_AHBA = "enigma-extra/ahba"
_HCP = "ENIGMA/enigmatoolbox/datasets/matrices/hcp_connectivity"
_ATLAS = "GeneEx2Conn/data/atlases"

# relative path in the mirror layout -> sha256
REGISTRY: dict[str, str] = {
    f"{_HCP}/funcLabels_ctx_schaefer_100.csv": "27f695aec7c095e95c1b0215ebf6ab232d7e97bd2d26e0e47821b59b2ecfaaf3",
    f"{_HCP}/funcLabels_ctx_schaefer_400.csv": "e110788738d34831958abf33ded83d06c2c46de18d5419d85f3bc0e9a3475c07",
    f"{_HCP}/funcMatrix_ctx_schaefer_100.csv": "2aa7422195916c4a450f57442fadcf5c26ca82571cd63c25cd98f7e48b7cdd76",
    f"{_HCP}/funcMatrix_ctx_schaefer_400.csv": "005390e68dbaccfc74dd4543fd39f6bdd92b5a5f5a7f403aa18e3f5b82be40e9",
    f"{_HCP}/strucLabels_ctx_schaefer_100.csv": "27f695aec7c095e95c1b0215ebf6ab232d7e97bd2d26e0e47821b59b2ecfaaf3",
    f"{_HCP}/strucLabels_ctx_schaefer_400.csv": "e110788738d34831958abf33ded83d06c2c46de18d5419d85f3bc0e9a3475c07",
    f"{_HCP}/strucMatrix_ctx_schaefer_100.csv": "dea65da4029e99880e649414ff258f2236e5e9cfae80d7c448dbd4d183ac014f",
    f"{_HCP}/strucMatrix_ctx_schaefer_400.csv": "f500dd0f9d613a905b342ce5d7ff404d5f46dbdc5b9f39ce366318011a656571",
    f"{_ATLAS}/atlas-4S156Parcels_dseg_reformatted.csv": (
        "e684f4188f021228c9f654d517083d1e0f105ce847d92a355c0fa7294cbd2c33"
    ),
    f"{_ATLAS}/atlas-4S456Parcels_dseg_reformatted.csv": (
        "6fd8fbda3496b202e297a032c2bdb0eb29e6f410b3f430bdbb3c8c0faa097125"
    ),
    f"{_AHBA}/allgenes_stable_r0.6_schaefer_100.csv": (
        "1ae348737fccf620d143c214f51aa6e8a88939333385931dcff6b4d527e2be9a"
    ),
    f"{_AHBA}/allgenes_stable_r0.6_schaefer_400.csv": (
        "44b0aefc00ea50ad3db1c46073e5fdf248527152abb1fd26d0f7a9d490def7a0"
    ),
    f"{_AHBA}/allgenes_stable_r0.8_schaefer_100.csv": (
        "893c75d5e6953aadc1a053d2dbc3effd0e322050f4f71ae5875eb39f8a22477c"
    ),
}


def file_url(relative_path: str) -> str:
    """The pinned download URL of a registry file (reads `BASE_URL` at call time)."""
    folder, _, inside = relative_path.partition("/")
    repository, commit = UPSTREAM[folder]
    return f"{BASE_URL}/{repository}/{commit}/{inside}"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset name stands for, for listings and for checking a spec before loading."""

    name: str
    description: str
    files: tuple[str, ...]  # relative paths in the mirror layout; () for generated data
    regions: int
    genes: int
    target: str  # "fc", "sc" or "synthetic"


@dataclass(frozen=True)
class _Recipe:
    """Which file plays which part, and how many leading rows are the cortical parcels."""

    expression: str
    connectivity: str
    labels: str
    atlas: str
    n_parcels: int

    @property
    def files(self) -> tuple[str, ...]:
        return (self.expression, self.connectivity, self.labels, self.atlas)


def _hcp_recipe(expression: str, parcels: int, modality: str) -> _Recipe:
    atlas = {100: "atlas-4S156Parcels_dseg_reformatted.csv", 400: "atlas-4S456Parcels_dseg_reformatted.csv"}[parcels]
    return _Recipe(
        expression=f"{_AHBA}/{expression}",
        connectivity=f"{_HCP}/{modality}Matrix_ctx_schaefer_{parcels}.csv",
        labels=f"{_HCP}/{modality}Labels_ctx_schaefer_{parcels}.csv",
        atlas=f"{_ATLAS}/{atlas}",
        n_parcels=parcels,
    )


_RECIPES: dict[str, _Recipe] = {
    "hcp-s100": _hcp_recipe("allgenes_stable_r0.6_schaefer_100.csv", 100, "func"),
    "hcp-s100-sc": _hcp_recipe("allgenes_stable_r0.6_schaefer_100.csv", 100, "struc"),
    "hcp-s100-r08": _hcp_recipe("allgenes_stable_r0.8_schaefer_100.csv", 100, "func"),
    "hcp-s400": _hcp_recipe("allgenes_stable_r0.6_schaefer_400.csv", 400, "func"),
    "hcp-s400-sc": _hcp_recipe("allgenes_stable_r0.6_schaefer_400.csv", 400, "struc"),
}

_AHBA_NOTE = "AHBA expression (abagen, scaled to [0, 1])"
DATASETS: dict[str, DatasetInfo] = {
    "hcp-s100": DatasetInfo(
        "hcp-s100",
        f"Schaefer-100 cortex: {_AHBA_NOTE}, genes with stability > 0.6; HCP group functional connectivity",
        _RECIPES["hcp-s100"].files,
        100,
        810,
        "fc",
    ),
    "hcp-s100-sc": DatasetInfo(
        "hcp-s100-sc",
        f"Schaefer-100 cortex: {_AHBA_NOTE}, genes with stability > 0.6; HCP group structural connectivity",
        _RECIPES["hcp-s100-sc"].files,
        100,
        810,
        "sc",
    ),
    "hcp-s100-r08": DatasetInfo(
        "hcp-s100-r08",
        f"Schaefer-100 cortex: {_AHBA_NOTE}, only the 34 genes with stability > 0.8; HCP functional connectivity",
        _RECIPES["hcp-s100-r08"].files,
        100,
        34,
        "fc",
    ),
    "hcp-s400": DatasetInfo(
        "hcp-s400",
        f"Schaefer-400 cortex, the 351 sampled parcels: {_AHBA_NOTE}, stability > 0.6; HCP functional connectivity",
        _RECIPES["hcp-s400"].files,
        351,
        282,
        "fc",
    ),
    "hcp-s400-sc": DatasetInfo(
        "hcp-s400-sc",
        f"Schaefer-400 cortex, the 351 sampled parcels: {_AHBA_NOTE}, stability > 0.6; HCP structural connectivity",
        _RECIPES["hcp-s400-sc"].files,
        351,
        282,
        "sc",
    ),
    "synthetic": DatasetInfo(
        "synthetic",
        "generated in memory: smooth expression fields over an ellipsoid, connectivity = "
        "exp(-distance/lambda) + beta * expression correlation + noise (options: n_regions, n_genes, seed, noise)",
        (),
        64,
        32,
        "synthetic",
    ),
}


# ---------------------------------------------------------------- names and folders


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a DataError listing the known names."""
    if name in DATASETS:
        return DATASETS[name]
    near = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise DataError(f"unknown dataset {name!r}{hint}: choose one of {', '.join(DATASETS)}, or give your own files")


def data_mirror(mirror: str | Path | None = None) -> Path | None:
    """The mirror folder to read from: `mirror`, else $XATTN_DATA_MIRROR, else None (download).

    Absolute, because Ray Tune runs each trial in its own working directory: a relative
    `../shared/data` read there names a folder that does not exist."""
    chosen = mirror or os.environ.get(MIRROR_ENV) or None
    return None if chosen is None else Path(chosen).expanduser().resolve()


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where downloads go: `cache_dir`, else $XATTN_DATA_CACHE, else the user cache folder."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else Path(pooch.os_cache("xattn"))


# ---------------------------------------------------------------- fetching files


def fetch(
    name: str, *, mirror: str | Path | None = None, cache_dir: str | Path | None = None, progress: bool = False
) -> dict[str, Path]:
    """Local paths of the dataset's files, keyed by relative path, each checked against its sha256."""
    info = dataset_info(name)
    if not info.files:  # generated in memory
        return {}
    root = data_mirror(mirror)
    if root is not None:
        if not root.is_dir():
            raise DataError(
                f"data mirror {root} is not a folder: fix --mirror / ${MIRROR_ENV}, or unset it to download"
            )
        return {rel: _checked_mirror_file(root, rel) for rel in info.files}
    cache = cache_folder(cache_dir)
    ensure_can_create(cache, "download cache", f"pass --cache-dir DIR or set ${CACHE_ENV}")
    return {rel: _download(rel, cache, progress) for rel in info.files}


def _checked_mirror_file(root: Path, relative_path: str) -> Path:
    path = root / relative_path
    if not path.is_file():
        raise DataError(
            f"data mirror {root} lacks {relative_path}: copy it from {file_url(relative_path)}, "
            f"or unset --mirror / ${MIRROR_ENV} to download it"
        )
    expected = REGISTRY[relative_path]
    actual = pooch.file_hash(str(path), alg="sha256")
    if actual != expected:
        raise DataError(
            f"{path} has sha256 {actual[:12]}..., expected {expected[:12]}...: it is damaged or a different "
            f"version; replace it with {file_url(relative_path)}"
        )
    return path


def _download(relative_path: str, cache: Path, progress: bool) -> Path:
    """Download one file into `cache` (same layout as a mirror) unless a good copy is there."""
    import requests  # pooch's own dependency; imported here to keep `import xattn.data` light

    target = cache / relative_path
    url = file_url(relative_path)
    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{REGISTRY[relative_path]}",
            fname=target.name,
            path=target.parent,
            progressbar=progress and _has_tqdm(),
        )
    except (requests.exceptions.RequestException, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(
            f"could not download {relative_path} from {url} ({reason}): check the network, or point "
            f"--mirror / ${MIRROR_ENV} at a folder holding the files"
        ) from None
    return target


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- loading


def load_dataset(
    name: str,
    *,
    mirror: str | Path | None = None,
    cache_dir: str | Path | None = None,
    synthetic: dict | None = None,
) -> ConnectomeData:
    """The named dataset as a `ConnectomeData`, fetched and checked for alignment.

    `synthetic` holds keyword options for `make_synthetic`; it is used for the name
    "synthetic" and ignored otherwise (a study spec may carry it for any dataset). File datasets
    are parsed once per process and per source folder; each call returns fresh copies of the
    arrays, so callers may modify what they get.
    """
    info = dataset_info(name)
    if info.target == "synthetic":
        return _synthetic(synthetic or {})
    root = data_mirror(mirror)
    cache = None if root is not None else cache_folder(cache_dir)
    parsed = _load_cached(name, None if root is None else str(root.resolve()), None if cache is None else str(cache))
    return _fresh_copy(parsed)


def _synthetic(options: dict) -> ConnectomeData:
    try:
        return make_synthetic(**options)
    except TypeError:
        raise DataError(
            f"unknown synthetic option(s) in {sorted(options)}: use n_regions, n_genes, seed, noise, similarity_weight"
        ) from None


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, mirror: str | None, cache_dir: str | None) -> ConnectomeData:
    paths = fetch(name, mirror=mirror, cache_dir=cache_dir)
    root = Path(mirror) if mirror is not None else Path(cache_dir)
    return _parse(DATASETS[name], _RECIPES[name], paths, root)


def _fresh_copy(data: ConnectomeData) -> ConnectomeData:
    """A copy whose arrays and metadata can be changed without touching the cached original."""
    return dataclasses.replace(
        data,
        expression=data.expression.copy(),
        genes=list(data.genes),
        connectivity=data.connectivity.copy(),
        coords=data.coords.copy(),
        labels=list(data.labels),
        original_index=data.original_index.copy(),
        metadata=copy.deepcopy(data.metadata),
    )


def _parse(info: DatasetInfo, recipe: _Recipe, paths: dict[str, Path], root: Path) -> ConnectomeData:
    """Cortical rows of expression, the matrix, atlas centroids; aligned, unsampled rows dropped."""
    n = recipe.n_parcels
    expression_path = paths[recipe.expression]
    expr_labels, genes, values = read_expression(expression_path)
    expr_labels, values = expr_labels[:n], values[:n]
    _, matrix = read_connectivity(paths[recipe.connectivity])
    matrix_labels = _read_label_line(paths[recipe.labels])
    atlas_labels, coords = _read_atlas(paths[recipe.atlas], n)
    _check_aligned(
        {
            recipe.expression: expr_labels,
            recipe.labels: matrix_labels,
            recipe.atlas: atlas_labels,
        },
        n,
    )
    if matrix.shape != (n, n):
        raise DataError(f"{paths[recipe.connectivity]} is {matrix.shape[0]} x {matrix.shape[1]}, expected {n} x {n}")

    keep = sampled_regions(values, expression_path, expr_labels)
    return ConnectomeData(
        name=info.name,
        expression=values[keep].astype(np.float32),
        genes=genes,
        connectivity=matrix[np.ix_(keep, keep)].astype(np.float32),
        coords=coords[keep].astype(np.float32),
        labels=[expr_labels[k] for k in keep],
        original_index=keep.astype(np.int64),
        target=info.target,
        metadata={
            "dataset": info.name,
            "description": info.description,
            "data_root": str(root),
            "source_files": {
                "expression": recipe.expression,
                "connectivity": recipe.connectivity,
                "connectivity_labels": recipe.labels,
                "coords": recipe.atlas,
            },
            "parcels": n,
            "dropped_regions": [expr_labels[k] for k in np.setdiff1d(np.arange(n), keep)],
            "coords": "mni",
        },
    )


def _read_label_line(path: Path) -> list[str]:
    """The matrices' row order: one line of comma-separated parcel labels."""
    return [label.strip() for label in path.read_text().strip().split(",")]


def _read_atlas(path: Path, n_parcels: int) -> tuple[list[str], np.ndarray]:
    """Labels (`label_7network`) and MNI centroids of the first `n_parcels` rows of an atlas table."""
    table = pd.read_csv(path)
    needed = ["label_7network", "mni_x", "mni_y", "mni_z"]
    absent = [c for c in needed if c not in table.columns]
    if absent or len(table) < n_parcels:
        raise DataError(
            f"atlas table {path} lacks column(s) {absent} or has under {n_parcels} rows: "
            "it must be the pinned upstream file"
        )
    head = table.iloc[:n_parcels]
    return head["label_7network"].astype(str).str.strip().tolist(), head[needed[1:]].to_numpy(np.float64)


def _check_aligned(labels_by_file: dict[str, list[str]], n_parcels: int) -> None:
    """Every file must list the same `n_parcels` parcels in the same order."""
    (reference_file, reference), *others = labels_by_file.items()
    for other_file, other in others:
        if len(other) < n_parcels or len(reference) < n_parcels:
            raise DataError(f"{other_file} or {reference_file} lists fewer than {n_parcels} parcels")
        for k, (a, b) in enumerate(zip(reference[:n_parcels], other[:n_parcels])):
            if a != b:
                raise DataError(
                    f"parcel {k} is {a!r} in {reference_file} but {b!r} in {other_file}: the files are not "
                    "aligned; use the pinned upstream versions"
                )
