"""The one container every dataset becomes: expression, target connectivity, coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xattn.errors import DataError


@dataclass(frozen=True)
class ConnectomeData:
    """One parcellated dataset, rows aligned across every array.

    `original_index[k]` is the parcel index (0-based, in the upstream row order) of kept
    row k: regions whose expression is entirely missing are dropped on load.
    """

    name: str
    expression: np.ndarray  # (R, G) float32, scaled to [0, 1]
    genes: list[str]  # (G,) gene symbols
    connectivity: np.ndarray  # (R, R) float32 target
    coords: np.ndarray  # (R, 3) float32, MNI millimetres or synthetic units
    labels: list[str]  # (R,) region labels
    original_index: np.ndarray  # (R,) int64
    target: str = "fc"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_regions, n_genes = self.expression.shape
        checks = [
            (self.expression.ndim == 2, f"expression must be 2-D, got shape {self.expression.shape}"),
            (len(self.genes) == n_genes, f"{len(self.genes)} gene names for {n_genes} expression columns"),
            (
                self.connectivity.shape == (n_regions, n_regions),
                f"connectivity is {self.connectivity.shape}, expected ({n_regions}, {n_regions}) "
                "to match the expression's regions",
            ),
            (self.coords.shape == (n_regions, 3), f"coords are {self.coords.shape}, expected ({n_regions}, 3)"),
            (len(self.labels) == n_regions, f"{len(self.labels)} labels for {n_regions} regions"),
            (self.original_index.shape == (n_regions,), "original_index must have one entry per region"),
            (bool(np.isfinite(self.expression).all()), "expression has missing or infinite values"),
            (bool(np.isfinite(self.connectivity).all()), "connectivity has missing or infinite values"),
            (bool(np.isfinite(self.coords).all()), "coords have missing or infinite values"),
            (len(set(self.genes)) == n_genes, "gene names are not unique"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"dataset {self.name!r}: {message}")

    @property
    def n_regions(self) -> int:
        return self.expression.shape[0]

    @property
    def n_genes(self) -> int:
        return self.expression.shape[1]

    def summary(self) -> dict:
        upper = self.connectivity[np.triu_indices(self.n_regions, k=1)]
        return {
            "name": self.name,
            "target": self.target,
            "regions": self.n_regions,
            "genes": self.n_genes,
            "ordered_pairs": self.n_regions * (self.n_regions - 1),
            "connectivity_min": float(upper.min()) if upper.size else 0.0,
            "connectivity_max": float(upper.max()) if upper.size else 0.0,
            "expression_min": float(self.expression.min()),
            "expression_max": float(self.expression.max()),
        }

    def select_genes(self, keep: np.ndarray) -> ConnectomeData:
        """A copy restricted to the gene columns `keep` (indices, in the new order)."""
        keep = np.asarray(keep, dtype=np.int64)
        return ConnectomeData(
            name=self.name,
            expression=self.expression[:, keep],
            genes=[self.genes[k] for k in keep],
            connectivity=self.connectivity,
            coords=self.coords,
            labels=self.labels,
            original_index=self.original_index,
            target=self.target,
            metadata=self.metadata,
        )
