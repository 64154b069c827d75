"""Self-attention baselines: shapes, gradients, dedup == per-pair, one encoder pass per region,
checkpoints, validation, and that each family learns a synthetic target."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from xattn.errors import SpecError
from xattn.models import CrossAttentionConfig, CrossAttentionGene2VecModel, family_of, make_config
from xattn.models.registry import MODEL_FAMILIES, build_model, model_from_dict, model_to_dict
from xattn.models.self_attention import (
    SharedSelfAttentionGene2VecModel,
    SharedSelfAttentionModel,
    SharedSelfAttentionPoolingModel,
)

FAMILIES = ["shared_self_attention", "shared_self_attention_pooling", "shared_self_attention_gene2vec"]
CHUNK_FAMILIES = FAMILIES[:2]
N_REGIONS, N_GENES, VEC_DIM, D = 12, 16, 8, 16  # the shape of conftest.py's `region_pairs`
# token_encoder_dim 5 does not divide 16 genes: 4 tokens, the last one padded with 4 zeros.
PARAMS = dict(d_model=D, nhead=2, num_layers=1, deep_hidden_dims=(16, 8), token_encoder_dim=5)


def make_model(family, seed=0, learn=False, **overrides):
    torch.manual_seed(seed)
    return build_model(
        family, {**PARAMS, **overrides}, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, VEC_DIM),
        learn_gene_vectors=learn,
    )  # fmt: skip


def test_families_are_registered_with_their_classes():
    classes = [SharedSelfAttentionModel, SharedSelfAttentionPoolingModel, SharedSelfAttentionGene2VecModel]
    for family, cls in zip(FAMILIES, classes):
        assert MODEL_FAMILIES[family].model_cls is cls and MODEL_FAMILIES[family].description
        model = make_model(family)
        # Sibling classes, so neither the model nor its config is mistaken for another family.
        assert family_of(model).name == family and family_of(model.config).name == family


@pytest.mark.parametrize(
    "family,region_dim,head_width", [(FAMILIES[0], 4 * D, 8 * D), (FAMILIES[1], D, 4 * D), (FAMILIES[2], D, 4 * D)]
)  # fmt: skip
def test_output_region_encoding_and_head_shapes(region_pairs, family, region_dim, head_width):
    # Flattened: [h_i, h_j]; pooled: [h_i, h_j, h_i * h_j, |h_i - h_j|].
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family)
    assert model(expression, coords, pair_i, pair_j).shape == (len(pair_i),)
    assert model.encode_regions(expression[:5]).shape == (5, region_dim)
    assert model.head.net[0].in_features == head_width


def test_gene_chunks_are_consecutive_and_the_last_is_zero_padded():
    model = make_model("shared_self_attention")
    seen = {}
    model.chunk_tokens.proj.register_forward_hook(lambda m, inp, out: seen.update(chunks=inp[0]))
    expression = torch.arange(1, N_GENES + 1, dtype=torch.float32)[None] / 100
    tokens = model.tokens(expression)
    assert tokens.shape == (1, math.ceil(N_GENES / 5), D)
    assert seen["chunks"][0, 0].tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert seen["chunks"][0, 3].tolist() == pytest.approx([0.16, 0, 0, 0, 0])


def test_gene2vec_tokens_are_the_cross_attention_models_tokens(region_pairs):
    expression = region_pairs[0]
    model = make_model("shared_self_attention_gene2vec", expression_bins=4)
    cross = CrossAttentionGene2VecModel(
        CrossAttentionConfig(
            n_genes=N_GENES, gene_vector_dim=VEC_DIM, expression_bins=4, d_model=D, nhead=2, num_layers=1
        )
    )
    # The gene-token weights under the same state-dict keys in both families.
    token_keys = [k for k in cross.state_dict() if k.startswith("gene_tokens.")]
    assert len(token_keys) == 8
    cross.load_state_dict({k: model.state_dict()[k] for k in token_keys}, strict=False)
    torch.testing.assert_close(model.tokens(expression), cross.encode_genes(expression), atol=0, rtol=0)


@pytest.mark.parametrize("family,learn", [(f, False) for f in FAMILIES] + [(FAMILIES[2], True)])
def test_forward_backward_reaches_every_parameter(region_pairs, family, learn):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family, learn=learn)
    out = model(expression, coords, pair_i, pair_j)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    # The pooling score's bias shifts every token's score equally, which softmax ignores: its
    # gradient is zero up to rounding (exactly zero here for the gene2vec family).
    exempt = {"pool.score.bias"}
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert set(missing) <= exempt, missing


def test_gene_vectors_are_a_buffer_when_fixed_and_a_parameter_when_learned(region_pairs):
    fixed = make_model("shared_self_attention_gene2vec", learn=False)
    learned = make_model("shared_self_attention_gene2vec", learn=True)
    key = "gene_tokens.gene_vectors"
    assert key in fixed.state_dict() and key not in dict(fixed.named_parameters())
    assert key in dict(learned.named_parameters())
    assert learned.num_parameters() == fixed.num_parameters() + N_GENES * VEC_DIM
    with pytest.raises(SpecError, match="gene vectors have shape"):
        SharedSelfAttentionGene2VecModel(fixed.config, torch.randn(N_GENES, VEC_DIM + 1))
    # The gene-chunk families ignore gene vectors: nothing of them in the state dict.
    assert not any("gene_vectors" in k for k in make_model("shared_self_attention").state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_deduplicated_forward_equals_per_pair_forward(region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family).eval()
    with torch.no_grad():
        fast = model(expression, coords, pair_i, pair_j)
        naive = model.forward_naive(expression[pair_i], expression[pair_j], coords[pair_i], coords[pair_j])
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_unique_region_is_encoded_once(region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family)
    rows = []
    model.encoder.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    model(expression, coords, pair_i, pair_j)
    assert rows == [len(torch.unique(torch.cat([pair_i, pair_j])))]


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_order_matters(region_pairs, family):
    expression, coords, _, _ = region_pairs
    model = make_model(family).eval()
    a = model(expression, coords, torch.tensor([0]), torch.tensor([1]))
    b = model(expression, coords, torch.tensor([1]), torch.tensor([0]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("family,learn", [(f, False) for f in FAMILIES] + [(FAMILIES[2], True)])
def test_safetensors_round_trip_rebuilds_an_identical_model(tmp_path, region_pairs, family, learn):
    expression, coords, pair_i, pair_j = region_pairs
    model = make_model(family, learn=learn).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(model_to_dict(model)))

    torch.manual_seed(99)  # a different init, so equality comes from the loaded weights
    rebuilt = model_from_dict(json.loads((tmp_path / "model.json").read_text())).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    with torch.no_grad():
        expected = model(expression, coords, pair_i, pair_j)
        torch.testing.assert_close(rebuilt(expression, coords, pair_i, pair_j), expected, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_make_config_rejects_d_model_not_divisible_by_nhead(family):
    with pytest.raises(SpecError) as err:
        make_config(family, {"d_model": 100, "nhead": 3}, n_genes=N_GENES)
    assert str(err.value) == "d_model=100 is not divisible by nhead=3: choose d_model a multiple of nhead"


@pytest.mark.parametrize("family", CHUNK_FAMILIES)
@pytest.mark.parametrize("value", [0, -2, 2.5, True])
def test_make_config_rejects_bad_token_encoder_dim(family, value):
    with pytest.raises(SpecError) as err:
        make_config(family, {"token_encoder_dim": value}, n_genes=N_GENES)
    assert str(err.value).startswith(f"token_encoder_dim={value!r} is not a positive integer")
    assert "\n" not in str(err.value)


def test_config_defaults_mirror_the_cross_attention_model():
    for family in FAMILIES:
        c = make_config(family, {}, n_genes=810)
        assert (c.d_model, c.nhead, c.num_layers, c.deep_hidden_dims) == (128, 4, 4, (512, 256, 128))
        assert (c.transformer_dropout, c.dropout_rate) == (0.1, 0.1)
        assert (c.gene_vector_dim, c.learn_gene_vectors) == (200, False)
    assert make_config("shared_self_attention", {}, n_genes=810).token_encoder_dim == 32
    assert make_config("shared_self_attention", {}, n_genes=810).n_tokens == 26
    assert make_config("shared_self_attention_gene2vec", {}, n_genes=810).expression_bins == 5
    with pytest.raises(SpecError, match="expression_bins=1 is too few"):
        make_config("shared_self_attention_gene2vec", {"expression_bins": 1}, n_genes=8)


@pytest.fixture(scope="module")
def experiment():
    from xattn.data.spec import DataSpec, SplitSpec, SyntheticSpec
    from xattn.experiment import prepare_experiment

    # 64 regions, 30% of the non-test ones for validation: ~200 validation pairs, enough
    # that the validation loss is not dominated by which few regions were drawn.
    spec = DataSpec(synthetic=SyntheticSpec(regions=64, genes=16, seed=0), split=SplitSpec(val_fraction=0.3))
    return prepare_experiment(spec, {}, seed=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_learns_the_synthetic_target(experiment, family):
    from xattn.experiment import build_trial_model
    from xattn.training import TrainConfig, fit

    params = dict(d_model=16, nhead=2, num_layers=1, deep_hidden_dims=(32,), token_encoder_dim=4, dropout_rate=0.0)
    model = build_trial_model(experiment, family, params, seed=0)
    config = TrainConfig(
        learning_rate=1e-3, batch_size=32, max_epochs=5, seed=0, warmup_steps=0, lr_schedule="constant", grad_clip=0.0
    )
    result = fit(model, experiment.pairs, config)
    losses = [epoch["val_loss"] for epoch in result.history]
    # Measured: 0.150 -> 0.040, 0.127 -> 0.053, 0.135 -> 0.052; the mean predictor scores ~0.13.
    assert losses[-1] < 0.8 * losses[0], losses


# --- Options for upstream's SMT: ALiBi, no positional embedding, token projection, BatchNorm
# head, output clamp (module docstring, "Upstream's SMT"). ---

ALL_OPTIONS = {
    "shared_self_attention": dict(
        use_alibi=True, positional_embedding=False, token_output_dim=3, head_batchnorm=True, output_clamp=True
    ),
    "shared_self_attention_pooling": dict(
        use_alibi=True, positional_embedding=False, head_batchnorm=True, output_clamp=True
    ),
    "shared_self_attention_gene2vec": dict(use_alibi=True, head_batchnorm=True, output_clamp=True),
}
NO_DROPOUT = dict(transformer_dropout=0.0, dropout_rate=0.0)

# GeneEx2Conn's best SMT, on 120 genes (2 chunks of 60). Trainer: learning_rate 1e-4, weight_decay 1e-4.
UPSTREAM_SMT = dict(
    token_encoder_dim=60, use_alibi=True, positional_embedding=False, token_output_dim=10,
    head_batchnorm=True, output_clamp=True, deep_hidden_dims=[256, 128], d_model=128, nhead=2,
    num_layers=2, dropout_rate=0.2,
)  # fmt: skip


def warm_up_batchnorm(model, expression, coords, steps=3):
    """A few train-mode forwards, so BatchNorm's running statistics are not the initial 0 / 1."""
    model.train()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(steps):
            pairs = torch.randint(0, len(expression), (2, 10), generator=g)
            model(expression, coords, pairs[0], pairs[1])
    return model.eval()


def spread_outputs(model, expression, coords, pair_i, pair_j):
    """Rescale the head's last layer: outputs become 1000 * (output - median), far beyond
    [-1, 1] on both sides except the median pair (0). Call under no_grad, with outputs
    inside [-1, 1] before (as at init), so a clamp does not bias the median."""
    last = model.head.net[-1]
    last.bias.sub_(model(expression, coords, pair_i, pair_j).median())
    last.weight.mul_(1000.0)
    last.bias.mul_(1000.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_option_fields_default_to_todays_model(family):
    from xattn.models.registry import model_param_names

    assert set(ALL_OPTIONS[family]) <= model_param_names(family)  # no option silently ignored
    c = make_config(family, {}, n_genes=N_GENES)
    assert (c.use_alibi, c.head_batchnorm, c.output_clamp) == (False, False, False)
    model = make_model(family)
    assert model.encoder.blocks[0].attn.alibi_slopes is None
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    if family in CHUNK_FAMILIES:
        assert c.positional_embedding is True and isinstance(model.chunk_tokens.pos_emb, torch.nn.Parameter)
    if family == "shared_self_attention":
        assert c.token_output_dim == 0 and model.token_out is None
    else:
        assert "token_output_dim" not in model_param_names(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_deduplicated_forward_equals_per_pair_forward_with_every_option(region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    model = warm_up_batchnorm(make_model(family, **ALL_OPTIONS[family]), expression, coords)
    with torch.no_grad():
        spread_outputs(model, expression, coords, pair_i, pair_j)  # the clamp acts on some pairs
        fast = model(expression, coords, pair_i, pair_j)
        naive = model.forward_naive(expression[pair_i], expression[pair_j], coords[pair_i], coords[pair_j])
    assert (fast.abs() == 1).any() and (fast.abs() < 1).any()
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    # In train mode too (no dropout): BatchNorm sees the same batch of pairs on both paths.
    model = make_model(family, **ALL_OPTIONS[family], **NO_DROPOUT).train()
    fast = model(expression, coords, pair_i, pair_j)
    naive = model.forward_naive(expression[pair_i], expression[pair_j], coords[pair_i], coords[pair_j])
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_alibi_changes_the_output_and_its_slopes_are_not_saved(region_pairs, family):
    from xattn.models.attention import alibi_slopes

    expression, coords, pair_i, pair_j = region_pairs
    plain = make_model(family).eval()
    alibi = make_model(family, use_alibi=True).eval()
    assert alibi.state_dict().keys() == plain.state_dict().keys()  # slopes: a non-persistent buffer
    alibi.load_state_dict(plain.state_dict())  # the same weights, strict
    for block in alibi.encoder.blocks:
        torch.testing.assert_close(block.attn.alibi_slopes, alibi_slopes(2), atol=0, rtol=0)
    with torch.no_grad():
        # Encodings change clearly; at init the head damps it (gene2vec: ~6e-5 on the output),
        # still far above rounding (identical weights without ALiBi give identical outputs).
        assert (plain.encode_regions(expression) - alibi.encode_regions(expression)).abs().max() > 1e-3
        a, b = plain(expression, coords, pair_i, pair_j), alibi(expression, coords, pair_i, pair_j)
    assert (a - b).abs().max() > 1e-6


def test_no_positional_embedding_leaves_only_alibi_to_tell_chunks_apart(region_pairs):
    """Without a positional embedding, self-attention is permutation-equivariant over tokens
    and attention pooling is invariant: permuting whole gene chunks leaves the pooled model's
    output unchanged. ALiBi (or the positional embedding) makes it change."""
    expression, coords, pair_i, pair_j = region_pairs
    chunk = 4  # divides the 16 genes: 4 whole chunks, no padding
    permuted = expression.view(N_REGIONS, N_GENES // chunk, chunk)[:, [2, 0, 3, 1]].reshape(N_REGIONS, N_GENES)
    assert not torch.equal(permuted, expression)

    def change(**options):
        model = make_model("shared_self_attention_pooling", token_encoder_dim=chunk, **options).eval()
        with torch.no_grad():
            a, b = model(expression, coords, pair_i, pair_j), model(permuted, coords, pair_i, pair_j)
        return model, (a - b).abs().max().item()

    model, delta = change(positional_embedding=False)
    assert model.chunk_tokens.pos_emb is None
    assert not any("pos_emb" in name for name in model.state_dict())
    assert delta < 1e-5
    assert change(positional_embedding=False, use_alibi=True)[1] > 1e-4
    assert change()[1] > 1e-4  # the learned positional embedding, today's default


def test_token_output_dim_projects_each_token_before_flattening(region_pairs):
    expression = region_pairs[0]
    n_tokens = math.ceil(N_GENES / 5)
    default = make_model("shared_self_attention")
    projected = make_model("shared_self_attention", token_output_dim=3)
    assert default.head.net[0].in_features == 2 * n_tokens * D
    assert projected.head.net[0].in_features == 2 * n_tokens * 3
    assert projected.encode_regions(expression[:5]).shape == (5, n_tokens * 3)
    assert (projected.token_out.in_features, projected.token_out.out_features) == (D, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_clamp_keeps_predictions_in_minus_one_one(region_pairs, family):
    expression, coords, pair_i, pair_j = region_pairs
    free = make_model(family).eval()
    clamped = make_model(family, output_clamp=True).eval()
    with torch.no_grad():
        spread_outputs(free, expression, coords, pair_i, pair_j)
    clamped.load_state_dict(free.state_dict())
    raw = free(expression, coords, pair_i, pair_j).detach()
    assert raw.max() > 1 and raw.min() < -1
    out = clamped(expression, coords, pair_i, pair_j)
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out.detach(), raw.clamp(-1, 1), atol=0, rtol=0)
    # The clamp's gradient is zero outside [-1, 1] (predict_pair's docstring).
    out.sum().backward()
    assert clamped.head.net[-1].bias.grad.item() == (raw.abs() <= 1).sum().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_head_batchnorm_modules_and_eval_independence_of_the_batch(region_pairs, family):
    expression, coords, _, _ = region_pairs
    count = lambda m: sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules())  # noqa: E731
    assert count(make_model(family)) == 0
    model = make_model(family, head_batchnorm=True, **NO_DROPOUT)
    assert count(model) == len(PARAMS["deep_hidden_dims"])
    i, j = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    other_i, other_j = torch.tensor([0, 8, 9]), torch.tensor([4, 10, 11])  # pair (0, 4) among others

    def first_pair_twice():
        a = model(expression, coords, i, j)[0]
        b = model(expression, coords, other_i, other_j)[0]
        return a.item(), b.item()

    a, b = first_pair_twice()
    assert abs(a - b) > 1e-4  # train mode: batch statistics, so the rest of the batch matters
    warm_up_batchnorm(model, expression, coords)
    with torch.no_grad():
        a, b = first_pair_twice()
    assert a == pytest.approx(b, abs=1e-6)  # eval mode: running statistics


def test_upstream_smt_configuration_trains_and_round_trips():
    n_genes, n_regions = 120, 10
    g = torch.Generator().manual_seed(2)
    expression = torch.rand(n_regions, n_genes, generator=g)
    coords = torch.randn(n_regions, 3, generator=g)
    pair_i, pair_j = torch.randint(0, n_regions, (2, 16), generator=g)
    target = torch.rand(16, generator=g) * 2 - 1
    torch.manual_seed(0)
    model = build_model("shared_self_attention", UPSTREAM_SMT, n_genes=n_genes)
    c = model.config
    assert (c.n_tokens, c.token_output_dim, c.deep_hidden_dims) == (2, 10, (256, 128))
    assert model.head.net[0].in_features == 2 * 2 * 10
    assert model.chunk_tokens.pos_emb is None and model.encoder.blocks[0].attn.alibi_slopes is not None

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.mse_loss(model(expression, coords, pair_i, pair_j), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())

    model.eval()
    description = json.loads(json.dumps(model_to_dict(model)))
    assert description["config"]["token_output_dim"] == 10 and description["config"]["use_alibi"] is True
    torch.manual_seed(99)
    rebuilt = model_from_dict(description).eval()
    rebuilt.load_state_dict(model.state_dict())  # BatchNorm running statistics included
    assert rebuilt.config == model.config
    with torch.no_grad():
        expected = model(expression, coords, pair_i, pair_j)
        torch.testing.assert_close(rebuilt(expression, coords, pair_i, pair_j), expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "family,name,value",
    [(f, "use_alibi", "yes") for f in FAMILIES]
    + [(f, "head_batchnorm", 1) for f in FAMILIES]
    + [(f, "output_clamp", "true") for f in FAMILIES]
    + [(f, "positional_embedding", 0) for f in CHUNK_FAMILIES]
    + [("shared_self_attention", "token_output_dim", v) for v in (-1, 2.5, True, "10")],
)  # fmt: skip
def test_make_config_rejects_bad_option_values(family, name, value):
    with pytest.raises(SpecError) as err:
        make_config(family, {name: value}, n_genes=N_GENES)
    assert str(err.value).startswith(f"{name}={value!r} is not a")
    assert "\n" not in str(err.value)
