"""Reference models (distance_decay, cge, bilinear_lowrank): registry, validation, shapes,
gradients, checkpoints, the quantities they compute, and their fit on hcp-s100."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from xattn.errors import SpecError
from xattn.models.baselines import (
    BilinearLowRankModel,
    CorrelatedGeneExpressionModel,
    DistanceDecayModel,
    pair_correlation,
    pair_distance,
)
from xattn.models.registry import (
    MODEL_FAMILIES,
    build_model,
    family_of,
    make_config,
    model_from_dict,
    model_param_names,
    model_to_dict,
)

FAMILIES = ["distance_decay", "cge", "bilinear_lowrank"]
CLASSES = [DistanceDecayModel, CorrelatedGeneExpressionModel, BilinearLowRankModel]
N_REGIONS, N_GENES = 12, 16  # the shape of conftest.py's `region_pairs`
PARAMS = {"rank": 4, "learning_rate": 1e-2, "d_model": 32}  # non-fields are ignored, as for every family

# The trainer settings the real-data tests fit with (see xattn/models/baselines.py for the inits).
# Measured on hcp-s100 (random folds, seed 0): best validation epoch 5-22 for both families,
# 0.3-2.3 s a fit on one thread.
FIT = dict(
    learning_rate=1e-2,
    batch_size=256,
    max_epochs=40,
    patience_steps=70,
    seed=0,
    warmup_steps=0,
    lr_schedule="constant",
    grad_clip=0.0,
)  # 5 epochs


def make_model(family, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(family, {**PARAMS, **overrides}, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, 8))


def test_families_are_registered_with_their_classes_and_params():
    for family, cls in zip(FAMILIES, CLASSES):
        assert MODEL_FAMILIES[family].model_cls is cls and MODEL_FAMILIES[family].description
        model = make_model(family)
        assert family_of(model).name == family and family_of(model.config).name == family
    # Nothing to tune but the trainer's settings, except the bilinear model's rank.
    assert model_param_names("distance_decay") == set()
    assert model_param_names("cge") == set()
    assert model_param_names("bilinear_lowrank") == {"rank"}
    assert make_config("bilinear_lowrank", {}, n_genes=810).rank == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_data_fields_are_accepted_and_unused(family):
    # build_model passes the vectors' width and learn_gene_vectors to every family.
    config = make_config(family, {}, n_genes=N_GENES, learn_gene_vectors=True, gene_vector_dim=12)
    assert (config.n_genes, config.gene_vector_dim, config.learn_gene_vectors) == (N_GENES, 12, True)
    model = build_model(family, {}, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, 12), learn_gene_vectors=True)
    assert not any("gene_vectors" in k for k in model.state_dict())


@pytest.mark.parametrize(
    "family,params,start",
    [
        ("bilinear_lowrank", {"rank": 0}, "rank=0 is not a positive integer"),
        ("bilinear_lowrank", {"rank": 2.5}, "rank=2.5 is not a positive integer"),
        ("bilinear_lowrank", {"rank": True}, "rank=True is not a positive integer"),
        ("cge", {"n_genes": 0}, "n_genes=0 is not a positive integer"),
        ("distance_decay", {"learn_gene_vectors": "yes"}, "learn_gene_vectors='yes' is not a boolean"),
    ],
)
def test_configs_reject_bad_values_in_one_line(family, params, start):
    config_cls = MODEL_FAMILIES[family].config_cls
    with pytest.raises(SpecError) as err:
        config_cls(**{"n_genes": N_GENES, **params})
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape_and_every_parameter_gets_a_gradient(region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family)
    out = model(expression, coords, pair_i, pair_j)
    assert out.shape == (len(pair_i),) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_parameter_counts():
    assert make_model("distance_decay").num_parameters() == 3
    assert make_model("cge").num_parameters() == 2
    assert make_model("bilinear_lowrank").num_parameters() == 2 * N_GENES * 4 + 1


def test_bilinear_init_follows_the_global_seed():
    a, b, c = (make_model("bilinear_lowrank", seed=seed) for seed in (0, 0, 1))
    assert torch.equal(a.U, b.U) and torch.equal(a.V, b.V)
    assert not torch.equal(a.U, c.U) and not torch.equal(a.U, a.V)


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_round_trip_rebuilds_an_identical_model(tmp_path, region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family).eval()
    with torch.no_grad():  # away from the deterministic inits, so equality comes from the loaded weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(model_to_dict(model)))

    torch.manual_seed(99)
    rebuilt = model_from_dict(json.loads((tmp_path / "model.json").read_text())).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    with torch.no_grad():
        expected = model(expression, coords, pair_i, pair_j)
        torch.testing.assert_close(rebuilt(expression, coords, pair_i, pair_j), expected, atol=0, rtol=0)


def test_cge_correlation_is_numpys_corrcoef(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    expected = [np.corrcoef(expression[i].double().numpy(), expression[j].double().numpy())[0, 1]
                for i, j in zip(pair_i.tolist(), pair_j.tolist())]  # fmt: skip
    got = pair_correlation(expression, pair_i, pair_j)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    model = make_model("cge")
    with torch.no_grad():
        model.a.fill_(2.0), model.b.fill_(-0.5)
        out = model(expression, coords, pair_i, pair_j)
    np.testing.assert_allclose(out.numpy(), 2.0 * np.array(expected) - 0.5, atol=1e-5)


def test_cge_of_a_constant_row_is_zero_not_nan(region_pairs):
    expression, _, _, _ = region_pairs
    expression = expression.clone()
    expression[3] = 0.25
    got = pair_correlation(expression, torch.tensor([3, 3]), torch.tensor([0, 3]))
    assert got.tolist() == [0.0, 0.0]


def test_distance_decay_distance_is_numpys(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    c = coords.double().numpy()
    expected = np.linalg.norm(c[pair_i.numpy()] - c[pair_j.numpy()], axis=1)
    np.testing.assert_allclose(pair_distance(coords, pair_i, pair_j).numpy(), expected, rtol=1e-6)
    model = make_model("distance_decay")
    with torch.no_grad():
        model.a.fill_(0.5), model.b.fill_(0.1), model.log_lambda.fill_(np.log(2.0))
        out = model(expression, coords, pair_i, pair_j)
    np.testing.assert_allclose(out.numpy(), 0.5 * np.exp(-expected / 2.0) + 0.1, rtol=1e-6)


def test_bilinear_is_the_per_pair_formula(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model("bilinear_lowrank")
    with torch.no_grad():
        naive = ((expression[pair_i] @ model.U) * (expression[pair_j] @ model.V)).sum(-1) + model.b
        torch.testing.assert_close(model(expression, coords, pair_i, pair_j), naive, atol=1e-6, rtol=1e-5)
        # Not symmetric: U and V differ.
        assert not torch.allclose(model(expression, coords, pair_i, pair_j), model(expression, coords, pair_j, pair_i))


# --- real data ---------------------------------------------------------------------------


def _experiment(mirror, fold, method="random"):
    from xattn.data.spec import DataSpec
    from xattn.experiment import prepare_experiment

    spec = DataSpec(dataset="hcp-s100", split={"method": method, "folds": 5, "fold": fold})
    return prepare_experiment(spec, {"genevec": "coexpression"}, seed=0, mirror=str(mirror))


def _fit(experiment, family, pairs=None, params=None, **overrides):
    from xattn.experiment import build_trial_model
    from xattn.training import TrainConfig, fit

    model = build_trial_model(experiment, family, params or {}, seed=0)
    result = fit(model, pairs or experiment.pairs, TrainConfig(**{**FIT, **overrides}))
    return model, result


@pytest.fixture(scope="module")
def random_folds(mirror):
    return [_experiment(mirror, fold) for fold in range(5)]


@pytest.mark.parametrize("family", ["distance_decay", "cge"])
def test_fitted_reference_correlation_on_hcp_s100(random_folds, family):
    # The data's reference facts (all upper-triangle pairs): corr(FC, CGE) = 0.29,
    # corr(FC, -distance) = 0.25. A test fold has 20 regions (190 pairs), whose r scatters
    # by ~0.07: cge's is 0.138 on fold 0 alone, so the band is checked on the 5-fold mean.
    # Measured test r, folds 0-4: distance_decay 0.363 0.383 0.315 0.242 0.354 (mean 0.331; it
    # was 0.324 on per-axis standardised coords), cge 0.138 0.308 0.376 0.261 0.319 (mean 0.280).
    rs = []
    for experiment in random_folds:
        model, result = _fit(experiment, family)
        r = result.test["test_pearson"]
        assert r > 0.1, (experiment.split.fold, r)
        assert model.a.item() > 0  # near regions / similar expression: more connected
        if family == "cge":
            # An affine map with a > 0 keeps the correlation: the fit must match the closed form.
            pairs = experiment.pairs
            cge = np.corrcoef(pairs.expression.double().numpy())
            test = pairs.test_pairs.numpy()
            target = pairs.connectivity.numpy()[test[:, 0], test[:, 1]]
            assert r == pytest.approx(np.corrcoef(cge[test[:, 0], test[:, 1]], target)[0, 1], abs=1e-4)
        rs.append(r)
    assert 0.15 <= np.mean(rs) <= 0.45, rs


@pytest.mark.parametrize("family", FAMILIES)
def test_fitted_parameters_depend_on_training_pairs_only(random_folds, family):
    experiment = random_folds[0]
    pairs = experiment.pairs
    test_regions = torch.as_tensor(experiment.split.test)
    used = set(pairs.train_pairs.flatten().tolist()) | set(pairs.val_pairs.flatten().tolist())
    assert not set(test_regions.tolist()) & used
    connectivity = pairs.connectivity.clone()
    g = torch.Generator().manual_seed(0)
    connectivity[test_regions, :] = torch.rand(len(test_regions), connectivity.shape[1], generator=g)
    connectivity[:, test_regions] = torch.rand(connectivity.shape[0], len(test_regions), generator=g)
    perturbed = dataclasses.replace(pairs, connectivity=connectivity)

    overrides = {"max_epochs": 8, "learning_rate": 1e-3 if family == "bilinear_lowrank" else 1e-2}
    model, result = _fit(experiment, family, params={"rank": 4}, **overrides)
    model_p, result_p = _fit(experiment, family, pairs=perturbed, params={"rank": 4}, **overrides)
    state, state_p = model.state_dict(), model_p.state_dict()
    assert state.keys() == state_p.keys()
    for name in state:
        torch.testing.assert_close(state_p[name], state[name], atol=0, rtol=0)
    assert result_p.best_epoch == result.best_epoch
    # The perturbation was real: only the test metrics moved.
    assert result_p.test["test_pearson"] != result.test["test_pearson"]


def test_distance_decay_sees_millimetres_over_one_scale_on_hcp_s100(mirror):
    # The brain is longer in y than in z (training-region std ~40 vs ~26 mm): coords scaled per
    # axis would make the model's distance a distorted one. With one scale, the fitted model is
    # a * exp(-d_mm / (lambda * scale)) + b on the atlas' own millimetre distances.
    experiment = _experiment(mirror, 0, method="spatial")
    scale = float(experiment.coord_scale)
    assert 30 < scale < 37  # mm: one normalised unit
    std = experiment.data.coords[experiment.split.train].std(axis=0)
    assert std.max() / std.min() > 1.3  # anisotropic enough for a per-axis scale to be caught
    model, _ = _fit(experiment, "distance_decay", max_epochs=3)
    pairs = experiment.pairs.test_pairs
    i, j = pairs[:, 0], pairs[:, 1]
    mm = np.linalg.norm(
        experiment.data.coords[i.numpy()].astype(np.float64) - experiment.data.coords[j.numpy()], axis=1
    )
    np.testing.assert_allclose(pair_distance(experiment.pairs.coords, i, j).numpy(), mm / scale, rtol=1e-5)
    with torch.no_grad():
        out = model(experiment.pairs.expression, experiment.pairs.coords, i, j).double().numpy()
    lam_mm = model.log_lambda.exp().item() * scale
    np.testing.assert_allclose(out, model.a.item() * np.exp(-mm / lam_mm) + model.b.item(), rtol=1e-5, atol=1e-6)
