"""No family ever learns from a test region: its weights are the same whatever the test
regions' connectivity is (every model family, the trainer, and the gene embedding together)."""

import dataclasses

import pytest
import torch

from xattn.data.spec import DataSpec
from xattn.experiment import build_trial_model, prepare_experiment
from xattn.models.registry import MODEL_FAMILIES
from xattn.training.trainer import TrainConfig, fit

TINY = {
    "d_model": 8, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [8], "token_encoder_dim": 8, "rank": 4,
    "transformer_dropout": 0.0, "dropout_rate": 0.0, "genevec": "coexpression",
}  # fmt: skip


@pytest.fixture(scope="module")
def experiment(mirror):
    spec = DataSpec(dataset="hcp-s100-r08", split={"method": "spatial", "folds": 4, "fold": 1})
    return prepare_experiment(spec, TINY, seed=0, mirror=str(mirror))


def with_noise_on_test_regions(experiment):
    pairs = experiment.pairs
    test = torch.as_tensor(experiment.split.test)
    connectivity = pairs.connectivity.clone()
    generator = torch.Generator().manual_seed(1)
    connectivity[test, :] = torch.rand(len(test), connectivity.shape[1], generator=generator)
    connectivity[:, test] = torch.rand(connectivity.shape[0], len(test), generator=generator)
    return dataclasses.replace(pairs, connectivity=connectivity)


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_weights_do_not_depend_on_test_regions(experiment, family):
    config = TrainConfig(learning_rate=3e-3, batch_size=256, max_epochs=2)
    fitted = []
    for pairs in (experiment.pairs, with_noise_on_test_regions(experiment)):
        model = build_trial_model(experiment, family, TINY, seed=0)
        result = fit(model, pairs, config)
        fitted.append((model.state_dict(), result))
    (state, result), (state_noisy, result_noisy) = fitted
    for name in state:
        torch.testing.assert_close(state_noisy[name], state[name], atol=0, rtol=0)
    assert result_noisy.best_val_loss == result.best_val_loss
    assert result_noisy.test["test_mse"] != result.test["test_mse"]  # the noise did reach the test pairs
