"""The cross-attention model's planned extensions: bidirectional, multiple CLS tokens, mixed
attention, learned bin edges and attention maps (xattn/models/cross_attention.py)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from xattn.errors import SpecError
from xattn.models import CrossAttentionConfig, CrossAttentionGene2VecModel, model_from_dict, model_to_dict
from xattn.models.gene_tokens import GeneTokens
from xattn.models.registry import blind_spot

N_REGIONS, N_GENES, VEC_DIM = 12, 16, 8  # the shape of conftest.py's `region_pairs`

OPTIONS = {
    "reference": {},
    "bidirectional-sum": {"bidirectional": True, "direction_combine": "sum"},
    "bidirectional-product": {"bidirectional": True, "direction_combine": "product"},
    "bidirectional-concat": {"bidirectional": True, "direction_combine": "concat"},
    "n_cls-3": {"n_cls": 3, "cls_init": "random+spatial+expression"},
    "expression-cls": {"cls_init": "expression"},
    "mixed": {"query_self_attention": True},
    "mixed-cls-pooling": {"query_self_attention": True, "pooling_mode": "cls", "n_cls": 2},
    "mixed-alibi": {"query_self_attention": True, "use_alibi": True, "pooling_mode": "attention"},
    "learned_bins": {"expression_encoding": "learned_bins", "expression_bins": 4},
    "everything": {
        "bidirectional": True, "n_cls": 2, "cls_init": "spatial+expression", "query_self_attention": True,
        "expression_encoding": "learned_bins", "pooling_mode": "cls",
    },
}  # fmt: skip


def make_model(seed=0, **overrides) -> CrossAttentionGene2VecModel:
    torch.manual_seed(seed)
    base = dict(n_genes=N_GENES, gene_vector_dim=VEC_DIM, d_model=32, nhead=4, num_layers=2, deep_hidden_dims=(16, 8))
    model = CrossAttentionGene2VecModel(CrossAttentionConfig(**{**base, **overrides}), torch.randn(N_GENES, VEC_DIM))
    return model


@pytest.mark.parametrize("option", list(OPTIONS))
def test_deduplicated_forward_equals_the_per_pair_reference(option, region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(**OPTIONS[option]).eval()
    model.fit_to_training_regions(expression[:8])
    fast = model(expression, coords, pair_i, pair_j)
    naive = model.forward_naive(expression[pair_i], expression[pair_j], coords[pair_i], coords[pair_j])
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_learns_and_survives_a_checkpoint(option, region_pairs, tmp_path):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(**OPTIONS[option])
    model.fit_to_training_regions(expression[:8])
    target = torch.linspace(-1, 1, len(pair_i))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(expression, coords, pair_i, pair_j), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]

    save_file(model.state_dict(), tmp_path / "model.safetensors")
    rebuilt = model_from_dict(model_to_dict(model))
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(expression, coords, pair_i, pair_j), model(expression, coords, pair_i, pair_j))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("option", ["everything", "mixed-alibi"])
def test_options_agree_on_cuda(option, region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(**OPTIONS[option]).eval()
    cpu = model(expression, coords, pair_i, pair_j)
    cuda = model.cuda()(*(t.cuda() for t in region_pairs)).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=2e-2, atol=2e-2)  # flash-attn runs in bf16


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_symmetric_bidirectional_predicts_the_same_for_both_orders(combine, region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(bidirectional=True, direction_combine=combine, cls_init="spatial+expression", n_cls=2).eval()
    forward, backward = model(expression, coords, pair_i, pair_j), model(expression, coords, pair_j, pair_i)
    assert torch.allclose(forward, backward, atol=1e-6)


def test_concatenated_directions_keep_the_pair_ordered(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(bidirectional=True, direction_combine="concat").eval()
    forward, backward = model(expression, coords, pair_i, pair_j), model(expression, coords, pair_j, pair_i)
    assert (forward - backward).abs().max() > 1e-4


def test_with_mixed_attention_cls_pooling_depends_on_region_i(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    changed = expression.clone()
    changed[pair_i[0]] = torch.rand(N_GENES)  # region i of the first pair only; it is never a j here
    assert pair_i[0] not in pair_j[:1]

    def first_prediction(model, x):
        return model(x, coords, pair_i[:1], pair_j[:1])

    blind = make_model(pooling_mode="cls").eval()
    assert blind_spot("cross_attention", blind.config) is not None
    torch.testing.assert_close(first_prediction(blind, changed), first_prediction(blind, expression))
    mixed = make_model(pooling_mode="cls", query_self_attention=True).eval()
    assert blind_spot("cross_attention", mixed.config) is None
    assert (first_prediction(mixed, changed) - first_prediction(mixed, expression)).abs().item() > 1e-5


def test_cls_kinds_repeat_in_turn_and_each_token_has_its_own_projection():
    config = CrossAttentionConfig(n_genes=4, d_model=8, nhead=2, n_cls=5, cls_init="random+expression")
    assert config.cls_kinds == ("random", "expression", "random", "expression", "random")
    model = CrossAttentionGene2VecModel(config)
    assert [p.in_features for p in model.cls_tokens.proj] == [6, 2, 6, 2, 6]


def test_expression_cls_reads_the_correlation_of_the_two_profiles(region_pairs):
    expression, coords, _, _ = region_pairs
    model = make_model(cls_init="expression").eval()
    profile = torch.rand(1, N_GENES)
    same = model.cls_tokens(profile, profile, coords[:1], coords[:1])
    opposite = model.cls_tokens(profile, 1 - profile, coords[:1], coords[:1])
    weight, bias = model.cls_tokens.proj[0].weight, model.cls_tokens.proj[0].bias
    torch.testing.assert_close(same[0, 0], weight[:, 0] * 1.0 + bias)  # corr 1, distance 0
    torch.testing.assert_close(opposite[0, 0], weight[:, 0] * -1.0 + bias)


def test_learned_bin_edges_move_during_training_and_stay_sorted(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(expression_encoding="learned_bins", expression_bins=5, bin_temperature=0.3)
    model.fit_to_training_regions(expression)
    start = model.gene_tokens.edges().detach().clone()
    quantiles = torch.quantile(expression, torch.tensor([0.2, 0.4, 0.6, 0.8]), dim=0).T
    torch.testing.assert_close(start, quantiles, atol=1e-4, rtol=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    target = torch.linspace(-1, 1, len(pair_i))
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(expression, coords, pair_i, pair_j), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    edges = model.gene_tokens.edges().detach()
    assert (edges - start).abs().max() > 1e-2
    assert (edges.diff(dim=1) > 0).all()


def test_soft_bins_are_memberships_that_harden_as_the_temperature_falls():
    torch.manual_seed(0)
    x = torch.rand(40, 6)
    soft = GeneTokens(6, 4, 8, encoding="learned_bins", bins=4, temperature=0.5)
    soft.fit_to_training_regions(x)
    memberships = soft.soft_bins(x)
    assert (memberships >= 0).all()
    torch.testing.assert_close(memberships.sum(-1), torch.ones(40, 6))
    hard = GeneTokens(6, 4, 8, encoding="learned_bins", bins=4, temperature=1e-4)
    hard.fit_to_training_regions(x)
    quantile = GeneTokens(6, 4, 8, encoding="quantile_bins", bins=4)
    quantile.fit_to_training_regions(x)
    y = x + 1e-3  # off the edges, which are training values themselves
    agree = hard.soft_bins(y).argmax(-1) == quantile.bins(y)
    assert agree.float().mean() > 0.99


def test_attention_maps_are_each_layers_weights_and_rows_sum_to_one(region_pairs):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(n_cls=2, use_alibi=True, query_self_attention=True).eval()
    maps = model.attention_maps(expression, coords, pair_i, pair_j)
    assert len(maps) == 2 and maps[0].shape == (len(pair_i), 4, 2 + N_GENES, N_GENES)
    for layer in maps:
        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))


def test_explicit_weights_are_what_the_fused_kernel_applies():
    torch.manual_seed(0)
    model = make_model(use_alibi=True).eval()
    attn = model.blocks[0].attn
    x, memory = torch.randn(3, N_GENES + 1, 32), torch.randn(3, N_GENES, 32)
    q, k, v = attn.heads(x, memory, None)
    from xattn.models.attention import attention

    fused = attention(q, k, v, alibi_slopes=attn.alibi_slopes)
    torch.testing.assert_close(attn.weights(x, memory) @ v, fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"cls_init": "random+nowhere"}, "cls_init='nowhere'"),
        ({"direction_combine": "mean"}, "direction_combine='mean'"),
        ({"bin_temperature": 0}, "bin_temperature=0"),
        ({"n_cls": 0}, "n_cls=0"),
        ({"expression_encoding": "learnt_bins"}, "expression_encoding='learnt_bins'"),
    ],
)
def test_bad_option_values_get_one_line_errors(overrides, message):
    with pytest.raises(SpecError, match=message.replace("+", r"\+")):
        CrossAttentionConfig(n_genes=4, d_model=8, nhead=2, **overrides)
