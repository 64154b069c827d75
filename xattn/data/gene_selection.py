"""Which genes a study uses: all of them, the most variable ones, or a list from a file.

The most variable genes are ranked on the training regions only: a gene that varies mostly
across the held-out regions must not be chosen because of them (selection is a fitted
preprocessing step like any other). A file is a plain gene list, one symbol a line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

SHOWN = 5  # symbols named in an error message


def select_genes(data: ConnectomeData, selection: Any, train_regions: np.ndarray) -> np.ndarray:
    """Column indices (ascending, so the dataset's gene order is kept) of the genes `selection` picks.

    `selection` is "all", {"top_variance": N} or {"file": PATH}, or an object with one of
    those attributes (the spec's models).
    """
    kind, value = _parse(selection)
    if kind == "all":
        return np.arange(data.n_genes)
    if kind == "top_variance":
        return top_variance(data, int(value), train_regions)
    return from_file(data, Path(value))


def top_variance(data: ConnectomeData, n: int, train_regions: np.ndarray) -> np.ndarray:
    """The `n` genes whose expression varies most across `train_regions` (ties: lower index)."""
    if not 1 <= n <= data.n_genes:
        raise DataError(
            f"genes: top_variance {n} does not fit {data.name!r}, which has {data.n_genes} genes: "
            f"use 1 to {data.n_genes}"
        )
    regions = np.unique(np.asarray(train_regions, dtype=np.int64))
    if regions.size < 2:
        raise DataError("genes: top_variance needs at least 2 training regions to rank genes by variance")
    variance = data.expression[regions].astype(np.float64).var(axis=0)
    ranked = np.argsort(-variance, kind="stable")
    return np.sort(ranked[:n])


def read_gene_list(path: Path) -> list[str]:
    """Symbols of a gene list file: one a line; blank lines and `#` comments are skipped."""
    if not path.is_file():
        raise DataError(f"gene list {path} does not exist: give a text file with one gene symbol a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"gene list {path} is not readable text ({type(error).__name__}): save it as UTF-8") from None
    symbols = [line.split("#", 1)[0].strip() for line in lines]
    symbols = list(dict.fromkeys(s for s in symbols if s))  # repeated symbols count once
    if not symbols:
        raise DataError(f"gene list {path} holds no gene symbols: write one symbol a line")
    return symbols


def from_file(data: ConnectomeData, path: Path) -> np.ndarray:
    """The dataset's columns of the genes listed in `path` (symbols matched ignoring case)."""
    symbols = read_gene_list(path)
    column_of = {gene.upper(): column for column, gene in enumerate(data.genes)}
    missing = [s for s in symbols if s.upper() not in column_of]
    if missing:
        raise DataError(
            f"gene list {path}: {len(missing)} of {len(symbols)} genes are not in {data.name!r} "
            f"({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''}): "
            "remove them or use another dataset"
        )
    return np.sort(np.array([column_of[s.upper()] for s in symbols], dtype=np.int64))


def _parse(selection: Any) -> tuple[str, Any]:
    if selection is None or selection == "all":
        return "all", None
    if not isinstance(selection, Mapping):
        selection = {
            k: getattr(selection, k) for k in ("top_variance", "file") if getattr(selection, k, None) is not None
        }
    if len(selection) == 1:
        ((kind, value),) = selection.items()
        if kind in ("top_variance", "file"):
            return kind, value
    raise DataError(f"genes: {selection!r} is not a gene selection: use all, {{top_variance: N}} or {{file: PATH}}")
