"""Gene tokens: balanced identity and value parts, bins fitted on training regions, continuous values."""

import numpy as np
import pytest
import torch

from xattn.data import build_gene_vectors, load_dataset
from xattn.errors import SpecError
from xattn.models.gene_tokens import GeneTokens

N_REGIONS, N_GENES, D = 60, 40, 32


def expression(seed=0, n=N_REGIONS):
    g = torch.Generator().manual_seed(seed)
    # Genes with different means and spreads, as real expression scaled to [0, 1].
    centre = torch.rand(N_GENES, generator=g) * 0.6 + 0.2
    spread = torch.rand(N_GENES, generator=g) * 0.15 + 0.02
    return (centre + spread * torch.randn(n, N_GENES, generator=g)).clamp(0, 1)


def gene_vector_kinds():
    g = torch.Generator().manual_seed(1)
    low_rank = torch.zeros(N_GENES, 200)
    low_rank[:, :20] = torch.randn(N_GENES, 20, generator=g) / np.sqrt(20)  # like co-expression: rank < 200, norm ~1
    return {
        "coexpression-like": low_rank,
        "gene2vec-like": torch.randn(N_GENES, 200, generator=g) * 3.0,  # published vectors of another scale
        "onehot (learned)": torch.randn(N_GENES, 200, generator=g) * 0.02,
    }


def part_variances(tokens: GeneTokens, x: torch.Tensor) -> tuple[float, float]:
    """Variance across genes of the identity part; across regions of the value part."""
    with torch.no_grad():
        identity = tokens.identities()  # (G, d), the same for every region
        values = tokens.values(x)  # (N, G, d)
        torch.testing.assert_close(tokens(x), identity + values)
    return identity.var(dim=0).mean().item(), values.var(dim=0).mean().item()


@pytest.mark.parametrize("encoding", ["continuous", "quantile_bins", "equal_bins"])
@pytest.mark.parametrize("kind", list(gene_vector_kinds()))
def test_identity_and_value_parts_have_the_same_scale_at_initialisation(encoding, kind):
    """Neither part drowns the other, whatever the scale of the gene vectors: the part that
    tells genes apart and the part that tells regions apart vary about equally."""
    torch.manual_seed(0)
    tokens = GeneTokens(N_GENES, 200, D, encoding=encoding, bins=5, gene_vectors=gene_vector_kinds()[kind])
    x = expression()
    tokens.fit_to_training_regions(x)
    identity, value = part_variances(tokens, x)
    # equal-width bins on genes that span a fraction of [0, 1] use few bins: their value part
    # varies less, which is why quantile bins exist; it must still not vanish.
    low = 0.15 if encoding == "equal_bins" else 0.5
    assert low < value / identity < 2.0, (identity, value)


def test_the_reference_tokens_were_dominated_by_the_bin_embedding():
    """Why the balance matters: the reference design (bins one-hot through a default Linear,
    added to co-expression vectors) on real data made tokens differ mostly by bin."""
    data = load_dataset("synthetic", synthetic={"n_regions": 60, "n_genes": 40, "seed": 0})
    vectors = build_gene_vectors(data, "coexpression", np.arange(40), dim=200)
    torch.manual_seed(0)
    bin_proj = torch.nn.Linear(5, 200)
    gene_part = torch.as_tensor(vectors.vectors).var(dim=0).sum().item()
    bins = torch.nn.functional.one_hot(torch.arange(5), 5).float()
    bin_part = bin_proj(bins).var(dim=0).sum().item()
    assert bin_part > 5 * gene_part


def test_quantile_bins_come_from_the_training_regions_and_fill_evenly():
    x = expression()
    train = x[:40]
    tokens = GeneTokens(N_GENES, 8, D, encoding="quantile_bins", bins=4)
    tokens.fit_to_training_regions(train)
    counts = torch.stack([torch.bincount(column, minlength=4) for column in tokens.bins(train).T])
    assert (counts.min(dim=1).values >= 8).all() and (counts.max(dim=1).values <= 12).all()  # 10 each
    before = tokens.bin_edges.clone()
    other = GeneTokens(N_GENES, 8, D, encoding="quantile_bins", bins=4)
    other.fit_to_training_regions(torch.cat([train, torch.rand(20, N_GENES)]))  # more regions: other edges
    assert not torch.allclose(before, other.bin_edges)


def test_equal_bins_are_fixed_and_not_fitted():
    tokens = GeneTokens(N_GENES, 8, D, encoding="equal_bins", bins=4)
    tokens.fit_to_training_regions(expression())
    assert torch.allclose(tokens.bin_edges[0], torch.tensor([0.25, 0.5, 0.75]))
    values = torch.tensor([[0.0, 0.24, 0.25, 0.5, 0.99, 1.0, -0.3, 1.7] * 5])
    assert tokens.bins(values)[0, :8].tolist() == [0, 0, 1, 2, 3, 3, 0, 3]


def test_continuous_values_stay_distinct_beyond_the_training_range():
    """A held-out region above every training region keeps a token of its own: the value part
    grows linearly with the standardised value, where a bin would saturate."""
    x = expression()
    train = x[:40]
    tokens = GeneTokens(N_GENES, 8, D, encoding="continuous")
    tokens.fit_to_training_regions(train)
    top = train.max(dim=0).values
    above = torch.stack([top + 0.05, top + 0.10]).clamp(max=1.0)
    values = tokens.values(above)
    moved = (values[1] - values[0]).norm(dim=-1)
    distinct = above[1] > above[0]
    assert (moved[distinct] > 0).all() and distinct.sum() > N_GENES // 2
    z = (train - tokens.expression_mean) / tokens.expression_std
    assert torch.allclose(z.mean(dim=0), torch.zeros(N_GENES), atol=1e-5)


def test_unknown_encoding_is_a_one_line_error():
    with pytest.raises(SpecError, match="expression_encoding='log' is not known"):
        GeneTokens(N_GENES, 8, D, encoding="log")


@pytest.mark.parametrize("encoding", ["continuous", "quantile_bins"])
def test_fitted_statistics_travel_in_the_state_dict(encoding):
    x = expression()
    tokens = GeneTokens(N_GENES, 8, D, encoding=encoding, bins=4)
    tokens.fit_to_training_regions(x[:30])
    rebuilt = GeneTokens(N_GENES, 8, D, encoding=encoding, bins=4)
    rebuilt.load_state_dict(tokens.state_dict())
    torch.testing.assert_close(rebuilt(x), tokens(x), atol=0, rtol=0)
