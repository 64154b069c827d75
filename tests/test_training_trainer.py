"""fit / predict / evaluate on a small synthetic pair problem with a stand-in model."""

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from data_fixtures import ordered_pairs
from torch import nn

from xattn.errors import DataError, SpecError
from xattn.training import (
    PairData,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    fit,
    learning_rate_at,
    predict,
)

N_REGIONS, N_GENES = 30, 8


@dataclass
class PairMLPConfig:
    n_genes: int = N_GENES
    hidden: int = 32
    dropout: float = 0.1


class PairMLP(nn.Module):
    """Stand-in with the model contract: MLP on the concatenated features of i and j."""

    family = "test_pair_mlp"

    def __init__(self, config: PairMLPConfig = PairMLPConfig()):
        super().__init__()
        self.config = config
        width = 2 * (config.n_genes + 3)
        self.net = nn.Sequential(
            nn.Linear(width, config.hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 1)
        )

    def forward(self, expression, coords, pair_i, pair_j):
        regions = torch.cat([expression, coords], dim=1)
        return self.net(torch.cat([regions[pair_i], regions[pair_j]], dim=1)).squeeze(-1)


class NaNModel(PairMLP):
    def forward(self, expression, coords, pair_i, pair_j):
        return super().forward(expression, coords, pair_i, pair_j) * float("nan")


@pytest.fixture(scope="module")
def data() -> PairData:
    """Regions split 18/6/6; connectivity is a smooth function of both regions' expression."""
    rng = np.random.default_rng(0)
    expression = rng.random((N_REGIONS, N_GENES))
    score = (expression - expression.mean(0)) @ rng.normal(size=N_GENES)
    score /= score.std()
    connectivity = np.tanh(0.5 * (score[:, None] + score[None, :]) + 0.5 * np.outer(score, score))
    regions = rng.permutation(N_REGIONS)
    return PairData.from_numpy(
        expression, rng.normal(size=(N_REGIONS, 3)), connectivity,
        ordered_pairs(regions[:18]), ordered_pairs(regions[18:24]), ordered_pairs(regions[24:]),
    )  # fmt: skip


def new_model(seed: int = 0, cls=PairMLP) -> PairMLP:
    torch.manual_seed(seed)
    return cls()


FAST = dict(learning_rate=1e-2, batch_size=64, max_epochs=20, patience_steps=1000, warmup_steps=0)
STEPS_PER_EPOCH = 5  # 18 training regions: 306 pairs in batches of 64


def test_validation_loss_decreases(data):
    result = fit(new_model(), data, TrainConfig(**FAST))
    first = result.history[0]
    assert result.best_val_loss < 0.7 * first["val_loss"]
    assert result.history[-1]["train_loss"] < 0.7 * first["train_loss"]
    assert result.epochs_run == 20 and not result.stopped_early
    assert set(result.test) == {"test_mse", "test_pearson", "test_spearman", "test_r2"}
    assert result.test["test_pearson"] > 0.3


def test_early_stopping_counts_optimizer_steps(data):
    # lr 0: epoch 1 is the only improvement over "no model yet", then nothing changes.
    patience = 2 * STEPS_PER_EPOCH
    result = fit(new_model(), data, TrainConfig(learning_rate=0.0, max_epochs=50, patience_steps=patience))
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert [h["stop"] for h in result.history] == [False, False, True]
    assert [h["improved"] for h in result.history] == [True, False, False]
    assert [h["step"] for h in result.history] == [5, 10, 15] and result.steps_run == 15


def test_min_steps_keeps_a_run_going_past_its_patience(data):
    config = TrainConfig(learning_rate=0.0, max_epochs=50, patience_steps=STEPS_PER_EPOCH, min_steps=40)
    result = fit(new_model(), data, config)
    assert result.stopped_early and result.steps_run == 40 and result.epochs_run == 8


def test_warm_up_rises_linearly_over_steps():
    config = TrainConfig(learning_rate=0.1, warmup_steps=10, lr_schedule="constant")
    assert [learning_rate_at(config, step, 5) for step in (1, 5, 10, 11, 500)] == pytest.approx(
        [0.01, 0.05, 0.1, 0.1, 0.1]
    )


def test_plateau_halves_the_rate_after_a_third_of_the_patience(data):
    # lr 0: only epoch 1 improves, so every later epoch counts towards the plateau.
    config = TrainConfig(learning_rate=0.0, max_epochs=12, patience_steps=30, warmup_steps=0, lr_schedule="plateau")
    scales = []
    fit(
        new_model(),
        data,
        config,
        on_epoch=lambda r: scales.append(r.optimizer.param_groups[0].get("plateau_scale", 1.0)),
    )
    # patience 30 steps = 6 epochs; a third of it, 10 steps = 2 epochs without improvement
    assert scales[:7] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_the_monitor_decides_which_epoch_is_best(data):
    results = {}
    for monitor in ("val_loss", "val_pearson"):
        results[monitor] = fit(new_model(), data, TrainConfig(**{**FAST, "max_epochs": 12, "monitor": monitor}))
    by_pearson = results["val_pearson"]
    pearsons = [h["val_pearson"] for h in by_pearson.history]
    assert by_pearson.best_epoch == 1 + int(np.argmax(pearsons))
    by_loss = results["val_loss"]
    assert by_loss.best_epoch == 1 + int(np.argmin([h["val_loss"] for h in by_loss.history]))


def test_gradients_are_clipped_to_grad_clip(data):
    norms = []
    model = new_model()
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        norms.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item())
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        fit(model, data, TrainConfig(**{**FAST, "max_epochs": 1, "learning_rate": 1.0, "grad_clip": 0.01}))
    finally:
        torch.optim.AdamW.step = original_step
    assert len(norms) == STEPS_PER_EPOCH and max(norms) <= 0.01 * (1 + 1e-5)


def test_nan_loss_raises_training_diverged(data):
    with pytest.raises(TrainingDiverged, match=r"epoch 1: batch loss is nan"):
        fit(new_model(cls=NaNModel), data, TrainConfig(max_epochs=3))


def test_same_seed_same_history(data):
    config = TrainConfig(**{**FAST, "max_epochs": 6})
    first, second = new_model(), new_model()
    history_a = fit(first, data, config).history
    history_b = fit(second, data, config).history
    assert history_a == history_b
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    other = fit(new_model(), data, TrainConfig(**{**FAST, "max_epochs": 6, "seed": 1})).history
    assert other[0]["train_loss"] != history_a[0]["train_loss"]  # seed drives the shuffle


def test_a_last_batch_of_one_pair_joins_the_batch_before_it(random_pair_data):
    from xattn.training.trainer import batch_sizes

    assert batch_sizes(129, 64) == [64, 65]
    assert batch_sizes(130, 64) == [64, 64, 2]
    assert batch_sizes(128, 64) == [64, 64]
    assert batch_sizes(1, 64) == [1]
    # so a BatchNorm head trains on any number of pairs (306 pairs = 5 x 61 + 1)
    bn = new_model()
    bn.net.insert(2, nn.BatchNorm1d(32))
    pairs = ordered_pairs(np.arange(18))
    data = random_pair_data(seed=3, n_regions=N_REGIONS, n_genes=N_GENES, splits=(pairs, pairs[:10], pairs[:10]),
                            connectivity="uniform")  # fmt: skip
    result = fit(bn, data, TrainConfig(**{**FAST, "max_epochs": 1, "batch_size": 61}))
    assert result.steps_run == 5


def test_passes_of_at_most_max_pairs_make_the_same_steps_as_whole_batches(data):
    """Gradients of a batch split into passes (uneven ones too) sum to the whole batch's."""
    config = TrainConfig(**{**FAST, "max_epochs": 3})
    whole, split = new_model(), new_model()
    for model in (whole, split):
        model.net[2].p = 0.0  # dropout draws differ between pass shapes; the step must not
    history_whole = fit(whole, data, config).history
    history_split = fit(split, data, dataclasses.replace(config, max_pairs_per_pass=10)).history
    for a, b in zip(history_whole, history_split):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for a, b in zip(whole.state_dict().values(), split.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.equal(whole.net[0].weight, new_model().net[0].weight)  # it did train


def test_cosine_schedule_matches_torch_per_step(data):
    config = TrainConfig(learning_rate=0.1, max_epochs=5, patience_steps=1000, cosine_lr=True, warmup_steps=0)
    assert config.lr_schedule == "cosine"
    seen = []
    fit(new_model(), data, config, on_epoch=lambda r: seen.append((r.lr, r.optimizer.param_groups[0]["lr"])))
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5 * STEPS_PER_EPOCH)
    per_step = []
    for _ in range(5 * STEPS_PER_EPOCH):
        per_step.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = per_step[STEPS_PER_EPOCH - 1 :: STEPS_PER_EPOCH]  # the last step of each epoch
    assert [a for a, _ in seen] == [b for _, b in seen]
    assert [a for a, _ in seen] == pytest.approx(expected)
    assert len(set(expected)) == 5
    assert learning_rate_at(TrainConfig(learning_rate=0.1, lr_schedule="constant", warmup_steps=0), 7, 5) == 0.1


def test_reported_test_metrics_belong_to_best_weights(data):
    config = TrainConfig(**{**FAST, "max_epochs": 15})
    reports, own = [], {}

    def on_epoch(report):
        reports.append(report)
        if report.improved:  # the model holds the new best weights right now
            own[report.epoch] = evaluate(model, data, data.test_pairs)

    model = new_model()
    result = fit(model, data, config, on_epoch=on_epoch)
    assert any(not r.improved for r in reports), "want a non-improving epoch in this test"
    for report in reports:
        assert report.test == own[report.best_epoch]
    assert result.test == reports[-1].test == evaluate(model, data, data.test_pairs)
    best = result.history[result.best_epoch - 1]
    assert result.best_val_pearson == reports[-1].best_val_pearson == best["val_pearson"]
    assert set(reports[-1].optimizer_state) == {"state", "param_groups"}
    assert result.best_val_loss == evaluate(model, data, data.val_pairs, prefix="val_")["val_mse"]


def test_resume_continues_like_uninterrupted_run(data):
    config = TrainConfig(**{**FAST, "max_epochs": 6, "cosine_lr": True, "warmup_steps": 12})
    saved = {}

    def keep_epoch_3(report):
        if report.epoch == 3:
            saved["model"] = copy.deepcopy(model.state_dict())
            saved["optimizer"] = copy.deepcopy(report.optimizer.state_dict())

    model = new_model()
    full = fit(model, data, config, on_epoch=keep_epoch_3)
    resumed_model = new_model(seed=99)
    resumed_model.load_state_dict(saved["model"])
    resumed = fit(resumed_model, data, config, start_epoch=3, optimizer_state=saved["optimizer"])
    keys = ("epoch", "train_loss", "val_loss", "val_pearson", "lr")

    def pick(history):
        return [{k: h[k] for k in keys} for h in history]

    assert pick(resumed.history) == pick(full.history[3:])
    assert resumed.epochs_run == 6


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU:RuntimeWarning")
def test_bf16_trains(data):
    config = TrainConfig(**{**FAST, "max_epochs": 10, "precision": "bf16"})
    result = fit(new_model(), data, config)
    assert math.isfinite(result.best_val_loss)
    assert result.best_val_loss < result.history[0]["val_loss"]


class AutocastProbe(PairMLP):
    """Records whether each forward (training and evaluation) ran under CPU autocast."""

    def forward(self, expression, coords, pair_i, pair_j):
        self.seen.append((self.training, torch.is_autocast_enabled("cpu")))
        return super().forward(expression, coords, pair_i, pair_j)


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU:RuntimeWarning")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_applies_to_training_and_evaluation(data, precision):
    model = new_model(cls=AutocastProbe)
    model.seen = []
    fit(model, data, TrainConfig(max_epochs=1, precision=precision))
    assert {training for training, _ in model.seen} == {True, False}
    assert {autocast for _, autocast in model.seen} == {precision == "bf16"}


def test_predict_and_evaluate(data):
    model = new_model().train()
    prediction = predict(model, data, data.val_pairs, batch_size=7)
    assert prediction.shape == (len(data.val_pairs),) and prediction.dtype == np.float32
    assert model.training  # mode restored
    assert np.array_equal(prediction, predict(model, data, data.val_pairs, batch_size=7))  # eval: no dropout
    assert np.allclose(prediction, predict(model, data, data.val_pairs), atol=1e-6)  # batching is invisible
    metrics = evaluate(model, data, data.val_pairs, prefix="val_")
    assert set(metrics) == {"val_mse", "val_pearson", "val_spearman", "val_r2"}


def test_train_config_from_params():
    params = {"learning_rate": np.float64(3e-4), "batch_size": 256.0, "cosine_lr": np.bool_(True), "d_model": 64}
    config = TrainConfig.from_params(params, device="cpu", batch_size=128)
    assert (config.learning_rate, config.batch_size, config.cosine_lr) == (3e-4, 128, True)
    assert type(config.batch_size) is int and type(config.learning_rate) is float
    with pytest.raises(SpecError, match="batch_size must be an integer"):
        TrainConfig.from_params({"batch_size": 12.5})
    with pytest.raises(SpecError, match="precision must be one of fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(SpecError, match="patience_steps must be >= 1, got 0"):
        TrainConfig(patience_steps=0)
    with pytest.raises(SpecError, match="lr_schedule must be one of constant, cosine, plateau, got 'step'"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(SpecError, match="monitor must be one of val_loss, val_pearson"):
        TrainConfig(monitor="val_r2")
    with pytest.raises(SpecError, match="max_pairs_per_pass must be >= 0, got -1"):
        TrainConfig(max_pairs_per_pass=-1)


def test_pair_data_validation(data):
    with pytest.raises(DataError, match="val_pairs index regions outside"):
        dataclasses.replace(data, val_pairs=data.val_pairs + 100)
    empty = dataclasses.replace(data, train_pairs=data.train_pairs[:0])
    with pytest.raises(DataError, match="train_pairs is empty"):
        fit(new_model(), empty, TrainConfig(max_epochs=1))


def test_a_refit_without_validation_or_test_pairs_trains_its_epochs_and_keeps_the_last_weights(data):
    """A refit on every region has nothing to validate or test on: it trains max_epochs (no
    early stopping, whatever the patience) and the model ends with the last epoch's weights."""
    refit = dataclasses.replace(data, val_pairs=data.val_pairs[:0], test_pairs=data.test_pairs[:0])
    model = new_model()
    seen = []
    result = fit(model, refit, TrainConfig(max_epochs=4, patience_steps=1), on_epoch=lambda e: seen.append(e))
    assert result.epochs_run == 4 and result.best_epoch == 4 and not result.stopped_early
    assert result.test == {} and all(e.improved for e in seen)
    last = {k: v.clone() for k, v in model.state_dict().items()}
    again = new_model()
    fit(again, refit, TrainConfig(max_epochs=4, patience_steps=1))
    assert all(torch.equal(last[k], v) for k, v in again.state_dict().items())  # seeded: the same last weights
