"""Synthetic data: deterministic, well-formed, and learnable from expression alone."""

from __future__ import annotations

import numpy as np
import pytest

from xattn.data import make_synthetic, ordered_pairs
from xattn.errors import DataError


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    for field in ("expression", "connectivity", "coords"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
        assert not np.allclose(getattr(first, field), getattr(other, field))


def test_shapes_ranges_and_symmetry():
    data = make_synthetic(n_regions=40, n_genes=12, noise=0.2)
    assert data.expression.shape == (40, 12) and data.connectivity.shape == (40, 40)
    assert data.expression.min() >= 0 and data.expression.max() <= 1
    np.testing.assert_array_equal(data.connectivity, data.connectivity.T)
    assert not np.diag(data.connectivity).any()
    assert data.labels[:2] == ["syn_000", "syn_001"] and data.target == "synthetic"
    assert data.metadata["noise"] == 0.2 and "lambda_mm" in data.metadata
    assert np.abs(data.coords).max() < 100  # millimetres, brain-sized


def test_noise_free_target_is_the_documented_formula():
    data = make_synthetic(n_regions=30, n_genes=8, noise=0.0)
    meta = data.metadata
    distance = np.linalg.norm(data.coords[:, None].astype(float) - data.coords[None].astype(float), axis=2)
    expected = np.exp(-distance / meta["lambda_mm"]) + meta["beta"] * np.corrcoef(data.expression.astype(float))
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(data.connectivity, expected, atol=1e-5)


def test_held_out_regions_are_predictable_from_expression():
    """A ridge fit on pair features of training regions predicts pairs of unseen regions."""
    data = make_synthetic(n_regions=64, n_genes=32, seed=0, noise=0.1)
    regions = np.random.default_rng(0).permutation(data.n_regions)
    train, test = ordered_pairs(regions[16:]), ordered_pairs(regions[:16])

    def features(pairs):
        a, b = data.expression[pairs[:, 0]], data.expression[pairs[:, 1]]
        return np.hstack([a * b, np.abs(a - b), np.ones((len(pairs), 1))])

    x, y = features(train), data.connectivity[train[:, 0], train[:, 1]]
    weights = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    prediction = features(test) @ weights
    assert np.corrcoef(prediction, data.connectivity[test[:, 0], test[:, 1]])[0, 1] > 0.5


@pytest.mark.parametrize("options", [{"n_regions": 3}, {"n_genes": 1}, {"noise": -1.0}])
def test_bad_arguments_raise_data_error(options):
    with pytest.raises(DataError):
        make_synthetic(**options)
