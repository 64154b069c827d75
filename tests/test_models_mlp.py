"""The mlp family: registry, validation, forward vs. the pair-by-pair reference, statistics
fitted on training regions only, which inputs matter, gradients, checkpoints, and its fit
on synthetic data."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from xattn.errors import SpecError
from xattn.models import MLPConfig, MLPModel
from xattn.models.registry import (
    MODEL_FAMILIES,
    build_model,
    family_of,
    make_config,
    model_from_dict,
    model_param_names,
    model_to_dict,
)

N_REGIONS, N_GENES = 12, 16  # the shape of conftest.py's `region_pairs`
TRAIN = torch.arange(8)  # the first 8 regions train
SMALL = {"deep_hidden_dims": (32, 16), "learning_rate": 1e-3, "d_model": 32}  # non-fields are ignored
COORD_OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


def make_model(seed=0, fit=None, **overrides):
    torch.manual_seed(seed)
    model = build_model("mlp", {**SMALL, **overrides}, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, 8))
    if fit is not None:
        model.fit_to_training_regions(fit[TRAIN])
    return model


def test_mlp_is_registered_with_its_params_and_defaults():
    fam = MODEL_FAMILIES["mlp"]
    assert fam.config_cls is MLPConfig and fam.model_cls is MLPModel and fam.description
    model = make_model()
    assert family_of(model).name == "mlp" and family_of(model.config).name == "mlp"
    assert model_param_names("mlp") == {
        "pca_components", "use_coords", "use_distance", "deep_hidden_dims", "dropout_rate", "head_batchnorm",
    }  # fmt: skip
    config = make_config("mlp", {"deep_hidden_dims": "64-32"}, n_genes=810)
    assert (config.pca_components, config.use_coords, config.use_distance) == (0, False, False)
    assert (config.deep_hidden_dims, config.dropout_rate, config.head_batchnorm) == ((64, 32), 0.1, True)
    assert make_config("mlp", {}, n_genes=810).deep_hidden_dims == (256, 128)


def test_data_fields_are_accepted_and_unused():
    config = make_config("mlp", {}, n_genes=N_GENES, learn_gene_vectors=True, gene_vector_dim=12)
    assert (config.n_genes, config.gene_vector_dim, config.learn_gene_vectors) == (N_GENES, 12, True)
    model = build_model("mlp", {}, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, 12), learn_gene_vectors=True)
    assert not any("gene_vectors" in k for k in model.state_dict())


@pytest.mark.parametrize(
    "params,start",
    [
        ({"pca_components": -1}, "pca_components=-1 is not a whole number >= 0"),
        ({"pca_components": 2.5}, "pca_components=2.5 is not a whole number >= 0"),
        ({"pca_components": True}, "pca_components=True is not a whole number >= 0"),
        ({"use_coords": "yes"}, "use_coords='yes' is not a boolean"),
        ({"use_distance": 1}, "use_distance=1 is not a boolean"),
        ({"head_batchnorm": "no"}, "head_batchnorm='no' is not a boolean"),
        ({"dropout_rate": 1.0}, "dropout_rate=1.0 is not a probability"),
        ({"deep_hidden_dims": (64, 0)}, "deep_hidden_dims=0 is not a positive integer"),
        ({"deep_hidden_dims": 64}, "deep_hidden_dims=64 is not a list"),
        ({"n_genes": 0}, "n_genes=0 is not a positive integer"),
    ],
)
def test_config_rejects_bad_values_in_one_line(params, start):
    with pytest.raises(SpecError) as err:
        MLPConfig(**{"n_genes": N_GENES, **params})
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


@pytest.mark.parametrize("pca", [0, 5])
@pytest.mark.parametrize("use_coords,use_distance", COORD_OPTIONS)
def test_forward_equals_forward_naive(region_pairs, pca, use_coords, use_distance):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(fit=expression, pca_components=pca, use_coords=use_coords, use_distance=use_distance).eval()
    with torch.no_grad():
        out = model(expression, coords, pair_i, pair_j)
        naive = model.forward_naive(expression[pair_i], expression[pair_j], coords[pair_i], coords[pair_j])
    assert out.shape == (len(pair_i),) and torch.isfinite(out).all()
    torch.testing.assert_close(out, naive, atol=1e-6, rtol=1e-5)


def test_each_unique_region_is_featurised_once(region_pairs, monkeypatch):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(fit=expression).eval()
    rows = []
    original = model.region_features
    monkeypatch.setattr(model, "region_features", lambda x: rows.append(len(x)) or original(x))
    model(expression, coords, pair_i, pair_j)
    assert rows == [len(torch.unique(torch.cat([pair_i, pair_j])))]


def test_unfitted_statistics_are_the_identity(region_pairs):
    expression = region_pairs[0]
    assert torch.equal(make_model().region_features(expression), expression)
    assert torch.equal(make_model(pca_components=3).region_features(expression), expression[:, :3])


@pytest.mark.parametrize("pca", [0, 5])
def test_fitted_statistics_come_from_the_training_rows_only(mirror_free_experiment, pca):
    from xattn.experiment import build_trial_model

    experiment = mirror_free_experiment
    train = experiment.split.train
    held_out = [r for r in range(experiment.data.n_regions) if r not in set(train.tolist())]
    params = {"pca_components": pca}

    def buffers(expression):
        data = dataclasses.replace(experiment.data, expression=expression)
        model = build_trial_model(dataclasses.replace(experiment, data=data), "mlp", params, seed=0)
        return dict(model.named_buffers())

    expression = experiment.data.expression
    fitted, unfitted = buffers(expression), dict(make_model(pca_components=pca).named_buffers())
    assert not torch.equal(fitted["projection"], torch.eye(*fitted["projection"].shape))  # it did fit
    changed_held_out = expression.copy()
    changed_held_out[held_out] = 1.0 - changed_held_out[held_out]
    for name, value in buffers(changed_held_out).items():
        torch.testing.assert_close(value, fitted[name], atol=0, rtol=0)
    changed_train = expression.copy()
    changed_train[train[:3]] = 1.0 - changed_train[train[:3]]
    assert not torch.equal(buffers(changed_train)["projection"], fitted["projection"])  # the check can fail
    assert fitted.keys() == unfitted.keys()


@pytest.mark.parametrize("pca", [0, 5])
def test_training_features_have_zero_mean_and_unit_variance(region_pairs, pca):
    expression = region_pairs[0].clone()
    expression[:, 2] = 0.25  # a constant gene: scale 1, not a division by zero
    model = make_model(fit=expression, pca_components=pca)
    z = model.region_features(expression[TRAIN])
    assert z.shape == (len(TRAIN), pca or N_GENES) and torch.isfinite(model.projection).all()
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    expected_var = torch.ones(z.shape[1])
    if pca == 0:
        assert model.projection[2, 2] == 1.0
        expected_var[2] = 0.0
    torch.testing.assert_close(z.var(dim=0), expected_var, atol=1e-4, rtol=0)
    if pca:  # principal components are uncorrelated
        torch.testing.assert_close(torch.cov(z.T), torch.eye(pca), atol=1e-4, rtol=0)


def test_components_beyond_what_the_training_regions_give_are_zero(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    n_train = len(TRAIN)  # 8 regions: 7 components after centring
    model = make_model(fit=expression, pca_components=n_train + 3).eval()
    norms = model.projection.norm(dim=0)
    assert (norms[: n_train - 1] > 0).all() and (norms[n_train - 1 :] == 0).all()
    out = model(expression, coords, pair_i, pair_j)
    assert torch.isfinite(out).all()
    # More components than genes: the extra columns are zero too.
    wide = make_model(pca_components=N_GENES + 2)
    wide.fit_to_training_regions(torch.rand(40, N_GENES, generator=torch.Generator().manual_seed(3)))
    assert (wide.projection[:, N_GENES:] == 0).all() and (wide.projection.norm(dim=0)[:N_GENES] > 0).all()


@pytest.mark.parametrize("use_coords,use_distance", COORD_OPTIONS)
def test_coords_matter_only_when_asked(region_pairs, use_coords, use_distance):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(fit=expression, use_coords=use_coords, use_distance=use_distance).eval()
    with torch.no_grad():
        out = model(expression, coords, pair_i, pair_j)
        moved = model(
            expression, coords + torch.randn(coords.shape, generator=torch.Generator().manual_seed(2)), pair_i, pair_j
        )
        shifted = model(expression, coords + torch.tensor([1.0, -2.0, 0.5]), pair_i, pair_j)
    assert (not torch.allclose(out, moved)) == (use_coords or use_distance)
    # A common shift keeps every distance: it matters only through the coords themselves.
    assert (not torch.allclose(out, shifted)) == use_coords


@pytest.mark.parametrize("pca", [0, 5])
def test_both_regions_expression_changes_the_output(region_pairs, pca):
    expression, coords, _, _ = region_pairs
    model = make_model(fit=expression, pca_components=pca).eval()
    pair_i, pair_j = torch.tensor([0, 4]), torch.tensor([1, 6])
    with torch.no_grad():
        out = model(expression, coords, pair_i, pair_j)
        for region in (0, 1):  # region i of the first pair, then its region j
            changed = expression.clone()
            changed[region] = 1.0 - changed[region]
            new = model(changed, coords, pair_i, pair_j)
            assert not torch.isclose(new[0], out[0]) and new[1] == out[1]
        # Ordered pairs: (i, j) and (j, i) are different inputs.
        assert not torch.allclose(model(expression, coords, pair_j, pair_i), out)


@pytest.mark.parametrize("params", [{}, {"pca_components": 5, "use_coords": True, "use_distance": True}])
def test_every_parameter_gets_a_gradient(region_pairs, params):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(fit=expression, **params).train()
    model(expression, coords, pair_i, pair_j).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert not any(name in dict(model.named_parameters()) for name in ("input_mean", "projection"))


@pytest.mark.parametrize("pca", [0, 5])
def test_checkpoint_round_trip_rebuilds_an_identical_model(tmp_path, region_pairs, pca):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(fit=expression, pca_components=pca, use_coords=True, use_distance=True)
    with torch.no_grad():
        for _ in range(3):  # train mode: moves the BatchNorm running statistics
            model(expression, coords, pair_i, pair_j)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(model_to_dict(model)))

    torch.manual_seed(99)
    rebuilt = model_from_dict(json.loads((tmp_path / "model.json").read_text())).eval()
    with torch.no_grad():
        expected = model(expression, coords, pair_i, pair_j)
        assert not torch.allclose(rebuilt(expression, coords, pair_i, pair_j), expected)  # weights not loaded yet
        rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
        assert type(rebuilt) is MLPModel and rebuilt.config == model.config
        torch.testing.assert_close(rebuilt(expression, coords, pair_i, pair_j), expected, atol=0, rtol=0)


# --- fitted on synthetic data ----------------------------------------------------------


def _synthetic_experiment(seed):
    from xattn.data.spec import DataSpec
    from xattn.experiment import prepare_experiment

    spec = DataSpec(
        dataset="synthetic",
        synthetic={"regions": 64, "genes": 32, "seed": seed},
        split={"method": "random", "folds": 5, "fold": 0},
    )
    return prepare_experiment(spec, {}, seed=seed)


@pytest.fixture(scope="module")
def mirror_free_experiment():
    return _synthetic_experiment(0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pca", [0, 8])
def test_it_learns_on_held_out_regions(seed, pca):
    # 64 regions, 32 genes; 13 test regions whose pairs the fit never sees. Measured test r
    # after 12 epochs (about 1 s each fit): pca 0: 0.853, 0.926; pca 8: 0.851, 0.919.
    from xattn.experiment import build_trial_model
    from xattn.training import TrainConfig, fit

    experiment = _synthetic_experiment(seed)
    model = build_trial_model(experiment, "mlp", {"pca_components": pca}, seed=seed)
    result = fit(model, experiment.pairs, TrainConfig(learning_rate=1e-3, batch_size=64, max_epochs=12, seed=seed))
    assert result.test["test_pearson"] > 0.6, result.test
