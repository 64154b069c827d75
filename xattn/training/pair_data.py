"""PairData: the data of one fit on the device, as region index pairs into three tensors.

A batch is a slice of (i, j) index pairs and its targets are gathered from the connectivity
matrix on the device: no DataLoader, no row per pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xattn.errors import DataError


@dataclass
class PairData:
    """Everything one fit needs, as tensors on one device.

    Pairs are (P, 2) int64 tensors of region indices into the rows of `expression`;
    the target of pair (i, j) is `connectivity[i, j]`. Coords are expected already
    normalised with training-region statistics (the data layer's job).
    """

    expression: Tensor  # (R, G) float32
    coords: Tensor  # (R, 3) float32
    connectivity: Tensor  # (R, R) float32
    train_pairs: Tensor  # (P_train, 2) int64
    val_pairs: Tensor  # (P_val, 2) int64
    test_pairs: Tensor  # (P_test, 2) int64

    def __post_init__(self) -> None:
        n_regions = self.expression.shape[0] if self.expression.ndim == 2 else -1
        checks = [
            (self.expression.ndim == 2, f"expression must be 2-D, got shape {tuple(self.expression.shape)}"),
            (
                tuple(self.coords.shape) == (n_regions, 3),
                f"coords are {tuple(self.coords.shape)}, expected ({n_regions}, 3)",
            ),
            (
                tuple(self.connectivity.shape) == (n_regions, n_regions),
                f"connectivity is {tuple(self.connectivity.shape)}, expected ({n_regions}, {n_regions})",
            ),
        ]
        for name in ("expression", "coords", "connectivity"):
            checks.append((getattr(self, name).is_floating_point(), f"{name} must be a float tensor"))
        for name in ("train_pairs", "val_pairs", "test_pairs"):
            pairs = getattr(self, name)
            checks.append((pairs.dtype == torch.int64, f"{name} must be int64, got {pairs.dtype}"))
            shape_ok = pairs.ndim == 2 and pairs.shape[1] == 2
            checks.append((shape_ok, f"{name} must have shape (P, 2), got {tuple(pairs.shape)}"))
            in_range = pairs.numel() == 0 or (int(pairs.min()) >= 0 and int(pairs.max()) < n_regions)
            checks.append((in_range, f"{name} index regions outside 0..{n_regions - 1}"))
        for ok, message in checks:
            if not ok:
                raise DataError(f"pair data: {message}")

    @classmethod
    def from_numpy(
        cls,
        expression: np.ndarray,
        coords: np.ndarray,
        connectivity: np.ndarray,
        train_pairs: np.ndarray,
        val_pairs: np.ndarray,
        test_pairs: np.ndarray,
        device: str | torch.device = "cpu",
    ) -> PairData:
        """Convert arrays (floats to float32, pairs to int64) and place them on `device`."""

        def floats(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

        def pairs(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.int64).reshape(-1, 2), device=device)

        return cls(
            floats(expression), floats(coords), floats(connectivity),
            pairs(train_pairs), pairs(val_pairs), pairs(test_pairs),
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.expression.device

    def to(self, device: str | torch.device) -> PairData:
        """A copy on `device` (tensors already there are shared, not copied)."""
        return PairData(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def targets(self, pairs: Tensor) -> Tensor:
        """Connectivity values of `pairs`, gathered on the device."""
        return self.connectivity[pairs[:, 0], pairs[:, 1]]
