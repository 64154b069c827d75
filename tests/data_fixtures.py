"""Fixtures and helpers that tests import by name: the data mirror and hcp-s100, CSV writing,
and index pairs (conftest.py holds the fixtures every test gets without an import).

The real files are read from the data mirror: $XATTN_DATA_MIRROR, else `shared/data` next
to the repository. Tests that need it skip when it is absent, unless XATTN_REQUIRE_DATA=1
makes its absence a failure (for CI machines that are supposed to have it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def mirror_path() -> Path:
    return Path(os.environ.get("XATTN_DATA_MIRROR") or DEFAULT_MIRROR)


def write_csv(path: Path, rows: list[list], header: list | None = None) -> Path:
    """Write rows (and an optional header) as CSV without an index; returns the path."""
    pd.DataFrame(rows, columns=header).to_csv(path, index=False, header=header is not None)
    return path


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(len(matrix), k=1)]


def ordered_pairs(regions) -> np.ndarray:
    """Every ordered pair (i, j), i != j, of `regions`, i-major, as an (n, 2) int64 array."""
    return np.array([(i, j) for i in regions for j in regions if i != j], dtype=np.int64)
