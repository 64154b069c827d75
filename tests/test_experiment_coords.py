"""Coordinates reach every model centred on the training regions and divided by ONE scale, so
distances between them are the data's distances (mm) over that scale; the scale is stored in
checkpoints and pinned when one is rebuilt, per-axis scales of older checkpoints included."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from xattn.data.spec import DataSpec
from xattn.experiment import (
    build_trial_model,
    coordinate_normalisation,
    prepare_experiment,
    stored_coordinate_normalisation,
)
from xattn.training import TrainConfig, fit

# The synthetic generator's coords fill an ellipsoid with semi-axes 70, 90, 60 mm, and its
# connectivity is exp(-d_mm / 30) (+ noise, no expression term with similarity 0).
SYNTHETIC = DataSpec(
    dataset="synthetic",
    synthetic={"regions": 64, "genes": 8, "similarity": 0.0, "noise": 0.05, "seed": 1},
    split={"method": "random", "folds": 5, "fold": 0},
)


def anisotropic_coords(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3)) * [10.0, 40.0, 3.0] + [5.0, -20.0, 12.0]).astype(np.float32)


def test_one_scale_keeps_every_distance_ratio():
    coords = anisotropic_coords()
    train = np.arange(30)
    centre, scale = coordinate_normalisation(coords[train])
    assert scale.shape == ()
    np.testing.assert_allclose(centre, coords[train].mean(axis=0), rtol=1e-6)
    # The root mean square offset over all axes: the square root of the mean per-axis variance.
    assert float(scale) == pytest.approx(np.sqrt(coords[train].astype(np.float64).var(axis=0).mean()), rel=1e-5)
    normalised = (coords - centre) / scale
    # A scale per axis (std ~10, 40, 3 here) would stretch z against y some 13 times.
    np.testing.assert_allclose(pdist(normalised), pdist(coords) / float(scale), rtol=1e-5)
    # Fitted on the training rows only.
    moved = coords.copy()
    moved[30:] *= 100
    np.testing.assert_array_equal(coordinate_normalisation(moved[train])[1], scale)


def test_missing_coords_stay_zeros():
    centre, scale = coordinate_normalisation(np.zeros((10, 3), dtype=np.float32))
    assert float(scale) == 1.0 and not centre.any()


@pytest.fixture(scope="module")
def synthetic():
    return prepare_experiment(SYNTHETIC, {}, seed=0)


def test_models_see_data_distances_over_the_stored_scale(synthetic):
    raw = synthetic.data.coords
    std = raw[synthetic.split.train].std(axis=0)
    assert std.max() / std.min() > 1.2  # anisotropic: a per-axis scale would fail below
    seen = synthetic.pairs.coords.double().numpy()
    np.testing.assert_allclose(pdist(seen), pdist(raw.astype(np.float64)) / float(synthetic.coord_scale), rtol=1e-5)
    np.testing.assert_allclose(seen[synthetic.split.train].mean(axis=0), 0.0, atol=1e-5)
    extra = synthetic.checkpoint_extra(SYNTHETIC, {}, 0)
    assert len(extra["coord_mean"]) == 3 and isinstance(extra["coord_scale"], float) and "coord_std" not in extra


def test_a_checkpoints_normalisation_is_pinned_on_rebuild(synthetic):
    extra = synthetic.checkpoint_extra(SYNTHETIC, {}, 0)
    pinned = prepare_experiment(
        SYNTHETIC, {}, seed=0, split=synthetic.split, coord_normalisation=stored_coordinate_normalisation(extra)
    )
    assert torch.equal(pinned.pairs.coords, synthetic.pairs.coords)
    # A checkpoint from before the one scale stored a per-axis std: its model learnt in those units.
    train = synthetic.data.coords[synthetic.split.train]
    old = {"coord_mean": train.mean(axis=0).tolist(), "coord_std": (train.std(axis=0) + 1e-6).tolist()}
    per_axis = prepare_experiment(
        SYNTHETIC, {}, seed=0, split=synthetic.split, coord_normalisation=stored_coordinate_normalisation(old)
    )
    expected = (synthetic.data.coords - np.float32(old["coord_mean"])) / np.float32(old["coord_std"])
    np.testing.assert_allclose(per_axis.pairs.coords.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert stored_coordinate_normalisation({"split": {}}) is None


def test_distance_decay_learns_the_generators_decay_length_in_mm(synthetic):
    assert synthetic.data.metadata["lambda_mm"] == 30.0
    model = build_trial_model(synthetic, "distance_decay", {}, seed=0)
    config = TrainConfig(learning_rate=1e-2, batch_size=256, max_epochs=40, patience_steps=10**6, seed=0)
    result = fit(model, synthetic.pairs, config)
    # Measured: 30.4 mm, a 0.99, b -0.004, test r 0.96 (the generator: 30 mm, a 1, b 0; the
    # init, lambda = 1 scale, is 33 mm here, so this checks units more than convergence).
    assert model.log_lambda.exp().item() * float(synthetic.coord_scale) == pytest.approx(30.0, rel=0.1)
    assert result.test["test_pearson"] > 0.9
