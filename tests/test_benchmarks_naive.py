"""The naive reference trainer of benchmarks/ computes what xattn's model computes.

benchmarks.throughput times xattn's trainer against benchmarks.naive; the comparison means
something only if both train the same function with the same weights. Small configs on
synthetic data, so this runs in a few seconds.
"""

import copy
import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xattn.data import make_synthetic
from xattn.models.registry import build_model
from xattn.training import PairData, TrainConfig, train_epoch
from xattn.training.trainer import batch_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
naive_module = importlib.import_module("benchmarks.naive")
NaiveTrainer, PairDataset = naive_module.NaiveTrainer, naive_module.PairDataset
naive_forward, naive_loader = naive_module.naive_forward, naive_module.naive_loader
cross_attention_flops_per_pair = importlib.import_module("benchmarks.flops").cross_attention_flops_per_pair

ATTENTION_FAMILIES = [
    "cross_attention",
    "shared_self_attention",
    "shared_self_attention_pooling",
    "shared_self_attention_gene2vec",
]
N_REGIONS, N_GENES, VECTOR_DIM = 12, 10, 6
TINY = {
    "d_model": 8, "nhead": 2, "num_layers": 2, "deep_hidden_dims": [8], "token_encoder_dim": 4,
    "expression_bins": 3, "transformer_dropout": 0.0, "dropout_rate": 0.0, "cls_init": "spatial",
}  # fmt: skip


@pytest.fixture(scope="module")
def data():
    synthetic = make_synthetic(n_regions=N_REGIONS, n_genes=N_GENES, seed=3)
    generator = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, N_REGIONS, (24, 2), generator=generator)  # repeated regions, so dedup matters
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return PairData.from_numpy(
        synthetic.expression,
        synthetic.coords,
        synthetic.connectivity,
        pairs.numpy(),
        pairs[:4].numpy(),
        pairs[:4].numpy(),
    )


def tiny_model(family, **overrides):
    torch.manual_seed(0)
    vectors = torch.randn(N_GENES, VECTOR_DIM)
    return build_model(family, {**TINY, **overrides}, n_genes=N_GENES, gene_vectors=vectors)


def naive_inputs(data, pairs):
    i, j = pairs[:, 0], pairs[:, 1]
    return data.expression[i], data.expression[j], data.coords[i], data.coords[j]


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_naive_forward_equals_xattn_forward(data, family):
    model = tiny_model(family).eval()
    naive = copy.deepcopy(model)  # as the benchmark builds it: same state_dict, separate modules
    pairs = data.train_pairs
    with torch.no_grad():
        expected = model(data.expression, data.coords, pairs[:, 0], pairs[:, 1])
        got = naive_forward(naive, *naive_inputs(data, pairs))
    assert got.shape == expected.shape == (len(pairs),)
    assert expected.std() > 1e-4  # not a constant output that would match anything
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_naive_training_step_equals_xattn_step(data, family):
    """Same loss and same gradients as the trainer's `batch_loss`, in train mode."""
    model = tiny_model(family).train()
    naive = copy.deepcopy(model)
    batch = data.train_pairs[:8]
    batch_loss(model, data, batch, "fp32").backward()
    dataset = PairDataset(data.expression, data.coords, data.connectivity, batch)
    items = [dataset[k] for k in range(len(dataset))]
    expression_i, expression_j, coords_i, coords_j, target = (torch.stack(t) for t in zip(*items))
    F.mse_loss(naive_forward(naive, expression_i, expression_j, coords_i, coords_j), target).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    naive_grads = {name: p.grad for name, p in naive.named_parameters() if p.grad is not None}
    assert grads.keys() == naive_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(naive_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_comparison_can_fail(data):
    """A naive forward that swapped the sides of each pair would be caught."""
    model = tiny_model("cross_attention").eval()
    pairs = data.train_pairs
    expression_i, expression_j, coords_i, coords_j = naive_inputs(data, pairs)
    with torch.no_grad():
        expected = model(data.expression, data.coords, pairs[:, 0], pairs[:, 1])
        swapped = naive_forward(model, expression_j, expression_i, coords_j, coords_i)
    assert not torch.allclose(swapped, expected, rtol=1e-5, atol=1e-6)


def test_naive_trainer_trains_like_the_trainer(data):
    """One epoch, full batch, no dropout: the naive trainer and `train_epoch` reach the same
    weights (the batch order does not matter when the batch is the whole set)."""
    model = tiny_model("cross_attention").train()
    naive_model = copy.deepcopy(model)
    n = len(data.train_pairs)
    # The naive trainer is plain AdamW: no warm-up, schedule or clipping.
    config = TrainConfig(batch_size=n, learning_rate=1e-2, warmup_steps=0, lr_schedule="constant", grad_clip=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss = train_epoch(model, data, optimizer, config, epoch=1)
    dataset = PairDataset(data.expression, data.coords, data.connectivity, data.train_pairs)
    trainer = NaiveTrainer(naive_model, dataset, batch_size=n, learning_rate=1e-2)
    naive_loss = trainer.train_batches(1)
    assert naive_loss == pytest.approx(loss, rel=1e-5)
    # The key half of kv_proj.bias has an exactly zero gradient in theory (softmax ignores a
    # shift shared by all keys); Adam turns its rounding noise into full-size steps, so it is
    # left out here and the trained models are compared by their predictions instead. Other
    # elements whose gradient happens to be near Adam's eps move by a fraction of a step that
    # rounding decides: the tolerance is a tenth of one step (lr), far below a wrong gradient.
    for (name, p), q in zip(model.named_parameters(), naive_model.parameters()):
        if not name.endswith("kv_proj.bias"):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=config.learning_rate / 10, msg=name)
    pairs = data.train_pairs
    with torch.no_grad():
        expected = model.eval()(data.expression, data.coords, pairs[:, 0], pairs[:, 1])
        got = naive_forward(naive_model.eval(), *naive_inputs(data, pairs))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_pair_dataset_items_and_loader(data):
    dataset = PairDataset(data.expression, data.coords, data.connectivity, data.train_pairs)
    i, j = (int(v) for v in data.train_pairs[3])
    expression_i, expression_j, coords_i, coords_j, target = dataset[3]
    assert torch.equal(expression_i, data.expression[i]) and torch.equal(expression_j, data.expression[j])
    assert torch.equal(coords_i, data.coords[i]) and torch.equal(coords_j, data.coords[j])
    assert float(target) == float(data.connectivity[i, j])
    batches = list(naive_loader(dataset, batch_size=5, seed=1))
    assert len(batches) == len(dataset) // 5 and all(len(b[0]) == 5 for b in batches)


def test_naive_forward_rejects_other_families():
    model = build_model("cge", {}, n_genes=N_GENES)
    x = torch.rand(2, N_GENES)
    with pytest.raises(TypeError):
        naive_forward(model, x, x, torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("pooling_mode", ["mean", "attention"])
def test_flop_formula_matches_torch_flop_counter(data, pooling_mode):
    """The analytic forward FLOPs equal what torch's FlopCounterMode counts on the naive
    forward (math attention backend, so the attention products are visible as bmm)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model("cross_attention", pooling_mode=pooling_mode).eval()

    def counted(pairs) -> int:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
            naive_forward(model, *naive_inputs(data, pairs))
        return counter.get_total_flops()

    # Per pair: the difference of two batch sizes, so the gene identities (projected once per
    # forward, whatever the batch) drop out.
    small, large = data.train_pairs[:3], data.train_pairs[:9]
    formula = cross_attention_flops_per_pair(model.config, training=False)
    assert (counted(large) - counted(small)) / (len(large) - len(small)) == pytest.approx(formula, rel=1e-9)
    assert cross_attention_flops_per_pair(model.config) == pytest.approx(3 * formula)
    # more genes cost more, and the default model is several GFLOP per training pair
    assert cross_attention_flops_per_pair(model.config, 2 * N_GENES) > cross_attention_flops_per_pair(model.config)


SELF_ATTENTION_OPTIONS = {
    "shared_self_attention": {
        "use_alibi": True, "positional_embedding": False, "token_output_dim": 3,
        "head_batchnorm": True, "output_clamp": True,
    },
    "shared_self_attention_pooling": {
        "use_alibi": True, "positional_embedding": False, "head_batchnorm": True, "output_clamp": True,
    },
    "shared_self_attention_gene2vec": {"use_alibi": True, "head_batchnorm": True, "output_clamp": True},
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(SELF_ATTENTION_OPTIONS))
def test_naive_forward_equals_xattn_forward_with_upstream_options(data, family):
    """ALiBi, no positional embedding, token projection, BatchNorm head and clamp: the naive
    forward still computes the model's function, in train mode (batch statistics) and in eval
    mode (running statistics, after that train-mode pass), with the clamp acting on some pairs."""
    model = tiny_model(family, **SELF_ATTENTION_OPTIONS[family]).train()
    naive = copy.deepcopy(model)
    pairs = data.train_pairs
    expected = model(data.expression, data.coords, pairs[:, 0], pairs[:, 1])
    torch.testing.assert_close(naive_forward(naive, *naive_inputs(data, pairs)), expected, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():  # outputs -> 1000 * (output - median): most beyond [-1, 1]
        last = model.head.net[-1]
        last.bias.sub_(model(data.expression, data.coords, pairs[:, 0], pairs[:, 1]).median())
        last.weight.mul_(1000.0)
        last.bias.mul_(1000.0)
        naive = copy.deepcopy(model)
        expected = model(data.expression, data.coords, pairs[:, 0], pairs[:, 1])
        got = naive_forward(naive, *naive_inputs(data, pairs))
    assert (expected.abs() == 1).any() and (expected.abs() < 1).any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
