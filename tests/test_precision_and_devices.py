"""The same function on every device and precision: CUDA against CPU, bf16 against fp32.

The CUDA tests skip on machines without a GPU; CI has none, so they run wherever one is at
hand (see docs/benchmarks.md).
"""

import pytest
import torch

from xattn.data.spec import DataSpec
from xattn.experiment import build_trial_model, prepare_experiment
from xattn.models import CrossAttentionConfig, CrossAttentionGene2VecModel
from xattn.models.attention import alibi_bias, alibi_slopes, attention, explicit_attention
from xattn.training import TrainConfig, evaluate, fit

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@needs_cuda
@pytest.mark.parametrize("use_alibi", [False, True])
def test_sdpa_on_cuda_in_bf16_matches_explicit_fp32_attention(use_alibi):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(3, 4, length, 32, device="cuda", generator=g) for length in (129, 128, 128))
    slopes = alibi_slopes(4).cuda() if use_alibi else None
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), alibi_slopes=slopes, backend="sdpa")
    bias = alibi_bias(slopes, 129, 128) if use_alibi else None
    torch.testing.assert_close(out.float(), explicit_attention(q, k, v, bias), atol=3e-2, rtol=3e-2)


@needs_cuda
def test_cross_attention_on_cuda_matches_cpu_and_its_per_pair_forward():
    torch.manual_seed(0)
    config = CrossAttentionConfig(n_genes=64, gene_vector_dim=16, d_model=32, nhead=4, num_layers=2,
                                  cls_init="spatial", pooling_mode="attention", use_alibi=True)  # fmt: skip
    model = CrossAttentionGene2VecModel(config, torch.randn(64, 16)).eval()
    expression, coords = torch.rand(10, 64), torch.randn(10, 3)
    pair_i, pair_j = torch.tensor([0, 1, 2, 3, 3, 9]), torch.tensor([1, 0, 3, 2, 5, 3])
    with torch.no_grad():
        on_cpu = model(expression, coords, pair_i, pair_j)
        model.cuda()
        cuda_inputs = (expression.cuda(), coords.cuda(), pair_i.cuda(), pair_j.cuda())
        on_cuda = model(*cuda_inputs)
        naive = model.forward_naive(
            expression[pair_i].cuda(), expression[pair_j].cuda(), coords[pair_i].cuda(), coords[pair_j].cuda()
        )
    torch.testing.assert_close(on_cuda, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_reaches_the_fp32_validation_loss(device):
    """Autocast keeps fp32 master weights: on a fixed seed bf16 ends within 5% of fp32."""
    spec = DataSpec(synthetic={"regions": 48, "genes": 8, "noise": 0.05, "seed": 0})
    params = {"d_model": 16, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [16], "dropout_rate": 0.0,
              "transformer_dropout": 0.0, "genevec": "coexpression", "expression_encoding": "continuous"}  # fmt: skip
    experiment = prepare_experiment(spec, params, seed=0, device=device)
    untrained = evaluate(build_trial_model(experiment, "cross_attention", params, seed=0).to(device), experiment.pairs,
                         experiment.pairs.val_pairs, prefix="val_")["val_mse"]  # fmt: skip
    losses = {}
    for precision in ("fp32", "bf16"):
        model = build_trial_model(experiment, "cross_attention", params, seed=0)
        config = TrainConfig(learning_rate=1e-2, batch_size=128, max_epochs=12, device=device, precision=precision)
        losses[precision] = fit(model, experiment.pairs, config).best_val_loss
    assert losses["fp32"] < 0.8 * untrained  # it learned, so the comparison means something
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.05 * losses["fp32"], losses
