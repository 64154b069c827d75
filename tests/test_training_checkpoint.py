"""Checkpoints: exact round trip, shared tensors, optimizer state, errors, atomic writes."""

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import safetensors
import torch
from data_fixtures import ordered_pairs
from torch import nn

from xattn.errors import DataError
from xattn.training import PairData, TrainConfig, fit, predict
from xattn.training import checkpoint as ckpt
from xattn.training.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint

N_REGIONS, N_GENES = 12, 5


@dataclass
class TiedConfig:
    n_genes: int = N_GENES
    hidden: int = 16


class TiedPairModel(nn.Module):
    """Stand-in with the model contract and a shared (tied) weight, like tied embeddings."""

    family = "test_tied"

    def __init__(self, config: TiedConfig):
        super().__init__()
        self.config = config
        self.encode = nn.Linear(config.n_genes + 3, config.hidden)
        self.decode = nn.Linear(config.hidden, config.n_genes + 3, bias=False)
        self.decode.weight = self.encode.weight  # one tensor under two state_dict keys
        self.head = nn.Linear(config.hidden, 1)
        self.register_buffer("mix", torch.eye(config.hidden, 2 * config.hidden)[:, ::2])  # non-contiguous

    def forward(self, expression, coords, pair_i, pair_j):
        h = torch.tanh(self.encode(torch.cat([expression, coords], dim=1)))
        back = h @ self.decode.weight  # uses the shared tensor a second time
        h = h + torch.tanh(back @ self.encode.weight.t())
        return self.head(h[pair_i] * h[pair_j] @ self.mix).squeeze(-1)


def build(spec: dict) -> nn.Module:
    assert spec["family"] == TiedPairModel.family
    return TiedPairModel(TiedConfig(**spec["config"]))


def describe(model: nn.Module) -> dict:
    return {"family": model.family, "config": dataclasses.asdict(model.config)}


def save(directory, model, **kwargs):
    return save_checkpoint(directory, model, describe=describe, **kwargs)


@pytest.fixture(scope="module")
def data(random_pair_data) -> PairData:
    pairs = ordered_pairs(range(N_REGIONS))
    splits = (pairs[:80], pairs[80:110], pairs[110:])
    return random_pair_data(seed=1, n_regions=N_REGIONS, n_genes=N_GENES, splits=splits)


@pytest.fixture
def trained(data):
    """A briefly trained model and its optimizer state."""
    torch.manual_seed(0)
    model = TiedPairModel(TiedConfig())
    state = {}
    fit(model, data, TrainConfig(max_epochs=2, batch_size=16),
        on_epoch=lambda r: state.update(optimizer=r.optimizer.state_dict()))  # fmt: skip
    return model, state["optimizer"]


def test_round_trip_reproduces_predictions_exactly(tmp_path, data, trained):
    model, optimizer_state = trained
    extra = {"epoch": 2, "split": {"seed": np.int64(3)}, "coord_mean": np.array([1.5, 2.0, 0.0], dtype=np.float32)}
    path = save(tmp_path / "ckpt", model, extra=extra, optimizer_state=optimizer_state)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "optimizer.pt", "weights.safetensors"]

    loaded, document = load_checkpoint(path, build=build)
    assert not loaded.training
    assert loaded.decode.weight is loaded.encode.weight
    assert not model.mix.is_contiguous() and torch.equal(loaded.mix, model.mix)
    with safetensors.safe_open(path / "weights.safetensors", framework="pt") as file:
        assert "decode.weight" not in file.keys()  # the tied weight is stored once
    assert np.array_equal(predict(loaded, data, data.test_pairs), predict(model, data, data.test_pairs))
    assert document["family"] == "test_tied" and document["config"] == {"n_genes": N_GENES, "hidden": 16}
    assert document["epoch"] == 2 and document["split"] == {"seed": 3}
    assert document["coord_mean"] == [1.5, 2.0, 0.0]

    restored = load_optimizer_state(path)
    optimizer = torch.optim.AdamW(loaded.parameters())
    optimizer.load_state_dict(restored)  # fits a fresh optimizer of the rebuilt model
    for key, value in optimizer_state["state"][0].items():
        assert torch.equal(restored["state"][0][key], value)


def test_optimizer_state_is_optional(tmp_path, trained):
    model, optimizer_state = trained
    save(tmp_path, model, optimizer_state=optimizer_state)
    save(tmp_path, model)  # overwrite without optimizer: the stale one must go
    assert not (tmp_path / "optimizer.pt").exists()
    assert load_optimizer_state(tmp_path) is None


def test_missing_files_are_data_errors(tmp_path, trained):
    model, _ = trained
    save(tmp_path, model)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(DataError, match=r"weights\.safetensors: checkpoint file is missing"):
        load_checkpoint(tmp_path, build=build)
    with pytest.raises(DataError, match=r"config\.json: checkpoint config is missing"):
        load_checkpoint(tmp_path / "nowhere", build=build)


def test_corrupt_files_are_data_errors(tmp_path, trained):
    model, optimizer_state = trained
    save(tmp_path, model, optimizer_state=optimizer_state)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"weights\.safetensors: does not match config\.json"):
        load_checkpoint(tmp_path, build=build)

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config\.json: not readable JSON"):
        load_checkpoint(tmp_path, build=build)


def test_weights_for_a_different_model_are_a_data_error(tmp_path, trained):
    model, _ = trained
    save(tmp_path, model)
    document = json.loads((tmp_path / "config.json").read_text())
    document["config"]["hidden"] = 8
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"weights\.safetensors: cannot load into a test_tied model.*mismatch"):
        load_checkpoint(tmp_path, build=build)


class Payload:
    """Not a tensor or plain container: weights_only loading must refuse it."""


def test_optimizer_state_is_never_unpickled(tmp_path, trained):
    model, _ = trained
    save(tmp_path, model, optimizer_state={"state": {}, "payload": Payload()})
    with pytest.raises(DataError, match=r"optimizer\.pt: not a readable optimizer state"):
        load_optimizer_state(tmp_path)


@pytest.mark.parametrize("failing", ["weights", "optimizer", "config"])
def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, data, trained, monkeypatch, failing):
    model, optimizer_state = trained
    save(tmp_path, model, optimizer_state=optimizer_state)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    expected = predict(model, data, data.test_pairs)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    target = {"weights": (ckpt.safetensors.torch, "save_file"), "optimizer": (ckpt.torch, "save"),
              "config": (ckpt.Path, "write_text")}[failing]  # fmt: skip
    monkeypatch.setattr(*target, boom)
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the failed save would have written different weights
    try:
        with pytest.raises(OSError, match="disk full"):
            save(tmp_path, model, optimizer_state=optimizer_state, extra={"epoch": 99})
    finally:
        with torch.no_grad():
            model.head.bias.sub_(1.0)
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, nothing replaced
    loaded, document = load_checkpoint(tmp_path, build=build)
    assert "epoch" not in document
    assert np.array_equal(predict(loaded, data, data.test_pairs), expected)


def test_reserved_extra_keys_are_refused(tmp_path, trained):
    model, _ = trained
    with pytest.raises(ValueError, match="reserved key"):
        save(tmp_path, model, extra={"family": "other"})


def test_load_checkpoint_weights_into_a_built_model(tmp_path, data, trained):
    model, _ = trained
    save(tmp_path, model, extra={"epoch": 7})
    torch.manual_seed(123)
    fresh = TiedPairModel(TiedConfig())
    assert ckpt.load_checkpoint_weights(tmp_path, fresh) == 7
    assert np.array_equal(predict(fresh, data, data.test_pairs), predict(model, data, data.test_pairs))


def test_round_trip_through_the_model_registry(tmp_path, data):
    registry = pytest.importorskip("xattn.models.registry")
    torch.manual_seed(0)
    params = {"d_model": 16, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [16]}
    model = registry.build_model("cross_attention", params, n_genes=N_GENES)
    save_checkpoint(tmp_path, model, extra={"epoch": 1})  # registry's model_to_dict
    loaded, document = load_checkpoint(tmp_path)  # registry's model_from_dict
    assert document["family"] == "cross_attention" and document["config"]["d_model"] == 16
    assert np.array_equal(predict(loaded, data, data.test_pairs), predict(model, data, data.test_pairs))
