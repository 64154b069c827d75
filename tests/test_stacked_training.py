"""fit_stacked trains M models together exactly as M separate `fit` calls would.

Three models per family, each on its own split of a small synthetic connectome (training sets
of different sizes, so different numbers of batches per epoch), with its own seed and, in
some tests, its own patience; the stacked run must give every model `fit`'s weights,
history and test metrics to float32 rounding.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from data_fixtures import ordered_pairs

from xattn.data.synthetic import make_synthetic
from xattn.errors import SpecError
from xattn.models.registry import build_model, fit_to_training_regions
from xattn.training import PairData, TrainConfig, TrainingDiverged, fit, predict
from xattn.training.stacked import fit_stacked

N_REGIONS, N_GENES = 24, 8
TRAIN_SIZES = (11, 12, 10)  # training regions of the three models: 110, 132 and 90 pairs
FAMILIES = {
    "mlp": {"deep_hidden_dims": [32, 16], "head_batchnorm": True, "dropout_rate": 0.3, "use_distance": True},
    "cross_attention": {
        "d_model": 8, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [16], "head_batchnorm": True,
        "cls_init": "spatial", "transformer_dropout": 0.2, "dropout_rate": 0.2,
    },
    "distance_decay": {},
    "cge": {},
    "bilinear_lowrank": {"rank": 4},
}  # fmt: skip
BASE = dict(learning_rate=3e-3, batch_size=32, max_epochs=4, warmup_steps=4, patience_steps=1000)


def split_data(seed: int, n_train: int) -> tuple[PairData, np.ndarray]:
    """The synthetic connectome with its own region split (train, 5 val, the rest test)."""
    data = make_synthetic(N_REGIONS, N_GENES, seed=0)
    regions = np.random.default_rng(seed).permutation(N_REGIONS)
    train, val, test = regions[:n_train], regions[n_train : n_train + 5], regions[n_train + 5 :]
    coords = (data.coords - data.coords[train].mean(0)) / data.coords[train].std(0)
    pairs = PairData.from_numpy(
        data.expression, coords, data.connectivity, ordered_pairs(train), ordered_pairs(val), ordered_pairs(test)
    )
    return pairs, train


def setup(family: str, *, same_data: bool = False, **overrides) -> tuple[list, list, list]:
    """Three (model, data, config) of `family`: own split (unless same_data), init and seed."""
    models, datas, configs = [], [], []
    for m, n_train in enumerate(TRAIN_SIZES):
        data, train = split_data(0 if same_data else m, TRAIN_SIZES[0] if same_data else n_train)
        torch.manual_seed(100 + m)
        vectors = torch.randn(N_GENES, 4)
        model = build_model(family, FAMILIES[family], n_genes=N_GENES, gene_vectors=vectors)
        fit_to_training_regions(model, data.expression[train])
        models.append(model)
        datas.append(data)
        configs.append(TrainConfig(**{**BASE, "seed": 7 + m, **overrides}))
    return models, datas, configs


def null_space(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The part of a parameter the loss has no gradient for in exact arithmetic, cut out: the key
    bias of attention (softmax ignores a shift shared by all keys). Adam turns its rounding-noise
    gradients into steps of full size, so it differs between any two summation orders."""
    if name.endswith("kv_proj.bias"):
        return tensor[len(tensor) // 2 :]  # the value half; the key half is the null space
    return tensor


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, data: PairData) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(null_space(name, y), null_space(name, x), rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(x, y), name
    every_pair = torch.cartesian_prod(torch.arange(N_REGIONS), torch.arange(N_REGIONS))
    np.testing.assert_allclose(predict(b, data, every_pair), predict(a, data, every_pair), rtol=1e-4, atol=1e-5)


def assert_same_result(alone, stacked) -> None:
    assert (stacked.best_epoch, stacked.epochs_run, stacked.steps_run, stacked.stopped_early) == (
        alone.best_epoch, alone.epochs_run, alone.steps_run, alone.stopped_early,
    )  # fmt: skip
    assert len(stacked.history) == len(alone.history)
    for h_stacked, h_alone in zip(stacked.history, alone.history):
        for key, value in h_alone.items():
            assert h_stacked[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value)
    assert stacked.test == pytest.approx(alone.test, rel=1e-4, abs=1e-6)


def fit_alone(models, datas, configs) -> tuple[list, list]:
    copies = [copy.deepcopy(model) for model in models]
    return copies, [fit(model, data, config) for model, data, config in zip(copies, datas, configs)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stacked_models_equal_separate_fits(family):
    models, datas, configs = setup(family)
    alone_models, alone_results = fit_alone(models, datas, configs)
    results = fit_stacked(models, datas, configs)
    for m in range(3):
        assert_same_result(alone_results[m], results[m])
        assert_same_model(alone_models[m], models[m], datas[m])


def test_passes_of_fewer_models_or_pairs_change_nothing():
    """models_per_pass splits the stack, max_pairs_per_pass the batches (as `fit` does); models
    0 and 2 have as many pairs, so their last batches share a pass that model 1 is not in."""
    models, datas, configs = setup("mlp", max_pairs_per_pass=12)
    data, train = split_data(3, TRAIN_SIZES[0])
    fit_to_training_regions(models[2], data.expression[train])
    datas[2] = data
    alone_models, alone_results = fit_alone(models, datas, configs)
    results = fit_stacked(models, datas, configs, models_per_pass=2)
    for m in range(3):
        assert_same_result(alone_results[m], results[m])
        assert_same_model(alone_models[m], models[m], datas[m])


def test_each_model_stops_early_on_its_own_patience():
    # Patience of one, two and twenty epochs' steps (4, 5 and 3 batches per epoch): the first
    # two stop at different epochs, the third trains to max_epochs.
    models, datas, configs = setup("mlp", max_epochs=8, learning_rate=2e-2, monitor="val_pearson")
    configs = [dataclasses.replace(c, patience_steps=p) for c, p in zip(configs, (4, 10, 100))]
    alone_models, alone_results = fit_alone(models, datas, configs)
    results = fit_stacked(models, datas, configs)
    assert len({r.epochs_run for r in alone_results}) > 1 and alone_results[0].stopped_early
    for m in range(3):
        assert_same_result(alone_results[m], results[m])
        assert_same_model(alone_models[m], models[m], datas[m])


def test_models_do_not_share_batches_or_dropout_masks():
    """Same data and initial weights, different seeds: had the models shared model 0's batch order
    or dropout masks, they would end equal to each other instead of each to its own fit."""
    models, datas, configs = setup("mlp", same_data=True)
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    alone_models, _ = fit_alone(models, datas, configs)
    fit_stacked(models, datas, configs)
    for m in range(3):
        assert_same_model(alone_models[m], models[m], datas[m])
    assert not torch.allclose(models[1].head.net[0].weight, models[0].head.net[0].weight, atol=1e-3)
    # ...and with one seed the three are the same model, batch for batch and mask for mask (up to
    # rounding: rows of one batched matmul need not round alike)
    fresh, _, _ = setup("mlp", same_data=True)
    twins = [copy.deepcopy(fresh[0]) for _ in range(3)]
    fit_stacked(twins, datas, configs[0])
    for twin in twins[1:]:
        torch.testing.assert_close(twin.state_dict(), twins[0].state_dict(), rtol=1e-5, atol=1e-6)


def test_a_diverged_model_stops_and_the_others_train_on():
    models, datas, configs = setup("mlp")
    i, j = datas[1].train_pairs[0].tolist()
    connectivity = datas[1].connectivity.clone()
    connectivity[i, j] = math.nan
    datas[1] = dataclasses.replace(datas[1], connectivity=connectivity)
    with pytest.raises(TrainingDiverged) as raised:
        fit(copy.deepcopy(models[1]), datas[1], configs[1])
    alone_models, alone_results = fit_alone([models[0], models[2]], [datas[0], datas[2]], [configs[0], configs[2]])
    results = fit_stacked(models, datas, configs)
    assert isinstance(results[1], TrainingDiverged) and str(results[1]) == str(raised.value)
    for m, alone_model, alone_result in (
        (0, alone_models[0], alone_results[0]),
        (2, alone_models[1], alone_results[1]),
    ):
        assert_same_result(alone_result, results[m])
        assert_same_model(alone_model, models[m], datas[m])


def test_epoch_reports_match_fit_and_their_optimizer_state_resumes_fit():
    models, datas, configs = setup("mlp", max_epochs=3)
    alone = copy.deepcopy(models[0])
    alone_reports, stacked_reports = [], []

    def keep_alone(report):
        alone_reports.append((report, copy.deepcopy(report.optimizer_state), copy.deepcopy(alone.state_dict())))

    def keep_stacked(m, report):
        stacked_reports.append((m, report.epoch))
        if m == 0:  # models[m] holds the epoch's weights during the callback, as in fit
            stacked_reports.append((report, report.optimizer_state, copy.deepcopy(models[0].state_dict())))

    ends = []
    fit(alone, datas[0], configs[0], on_epoch=keep_alone)
    fit_stacked(models, datas, configs, on_epoch=keep_stacked, on_epoch_end=lambda e, r: ends.append((e, sorted(r))))
    assert [r for r in stacked_reports if isinstance(r[0], int)] == [(m, e) for e in (1, 2, 3) for m in range(3)]
    assert ends == [(e, [0, 1, 2]) for e in (1, 2, 3)]
    stacked_zero = [r for r in stacked_reports if not isinstance(r[0], int)]
    for (report, state, weights), (stacked, stacked_state, stacked_weights) in zip(alone_reports, stacked_zero):
        assert stacked.metrics() == pytest.approx(report.metrics(), rel=1e-4, abs=1e-6)
        torch.testing.assert_close(stacked_weights, weights, rtol=1e-4, atol=1e-5)
        assert stacked_state["param_groups"][0]["lr"] == pytest.approx(state["param_groups"][0]["lr"])
        for key, value in state["state"].items():
            torch.testing.assert_close(stacked_state["state"][key], value, rtol=1e-4, atol=1e-6)
        torch.optim.AdamW(alone.parameters()).load_state_dict(stacked_state)


def test_what_cannot_be_stacked_is_refused():
    models, datas, configs = setup("mlp")
    with pytest.raises(SpecError, match="batch_size"):
        fit_stacked(models, datas, [configs[0], dataclasses.replace(configs[1], batch_size=16), configs[2]])
    other, _, _ = setup("cge")
    with pytest.raises(SpecError, match="model 1"):
        fit_stacked([models[0], other[1]], datas[:2], configs[:2])
