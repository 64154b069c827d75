"""No shipped search space trains a model that cannot see both regions' expression.

Checked on the models themselves: every combination of the choices that wire a model a shipped
study (and each family it compares) can draw is built, with each token encoding beside the
first wiring, and the prediction of a pair must change when only region i's expression
changes, and when only region j's does.
"""

import itertools
from pathlib import Path

import pytest
import torch

from xattn.errors import SpecError
from xattn.models.registry import build_model, fit_to_training_regions, get_family, model_param_names
from xattn.tuning.spec_file import load_spec, parse_spec

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))
N_REGIONS, N_GENES = 6, 12
# Sizes, rates and the head's normalisation change a model's capacity, not what it is wired to see.
SIZES = {
    "d_model", "nhead", "num_layers", "deep_hidden_dims", "expression_bins", "transformer_dropout",
    "dropout_rate", "token_encoder_dim", "token_output_dim", "rank", "pca_components", "head_batchnorm",
}  # fmt: skip
# How one gene's value becomes its token: the same for every region and every wiring, so each
# choice is checked once, beside the first wiring, not multiplied with every wiring.
ENCODINGS = {"expression_encoding", "bin_temperature"}


def family_specs(spec):
    yield spec
    for family in spec.compare_with:
        yield spec.for_family(family)


def model_combinations(spec):
    """Every combination of the categorical choices that wire the family's model (pooling, CLS
    tokens, directions, query mixing), then each token encoding once; sizes at their first
    choice and ranges at their low end."""
    names = model_param_names(spec.model.family)
    choices = {k: p.candidate_values() for k, p in spec.searched.items() if k in names and p.type == "choice"}
    wiring = {k: v for k, v in choices.items() if k not in SIZES | ENCODINGS}
    first = {k: v[0] for k, v in choices.items()}
    variations = [dict(zip(wiring, values)) for values in itertools.product(*wiring.values())]
    variations += [{name: value} for name in ENCODINGS & choices.keys() for value in choices[name][1:]]
    for variation in variations:
        params = spec.trial_params({**first, **variation})
        for name, p in spec.searched.items():
            if p.type != "choice":
                params[name] = int(p.low) if p.type in ("int", "logint") else p.low
        yield params


def sees_both_regions(family: str, params: dict) -> tuple[bool, bool]:
    torch.manual_seed(0)
    model = build_model(family, params, n_genes=N_GENES, gene_vectors=torch.randn(N_GENES, 16)).eval()
    g = torch.Generator().manual_seed(1)
    expression = torch.rand(N_REGIONS, N_GENES, generator=g)
    fit_to_training_regions(model, expression)
    coords = torch.randn(N_REGIONS, 3, generator=g)
    i, j = torch.tensor([0, 1]), torch.tensor([2, 3])

    def predict(x):
        with torch.no_grad():
            return model(x, coords, i, j)

    before = predict(expression)
    changed = {}
    for side, rows in (("i", [0, 1]), ("j", [2, 3])):
        other = expression.clone()
        other[rows] = torch.rand(2, N_GENES, generator=g)
        changed[side] = not torch.allclose(predict(other), before, atol=1e-7)
    return changed["i"], changed["j"]


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_configuration_of_a_shipped_space_sees_both_regions(path):
    spec = load_spec(path)
    checked = 0
    for family_spec in family_specs(spec):
        family = family_spec.model.family
        if not get_family(family).uses_expression:
            continue
        seen = set()
        for params in model_combinations(family_spec):
            key = tuple(sorted((k, str(v)) for k, v in params.items() if k in model_param_names(family)))
            if key in seen:
                continue
            seen.add(key)
            sees_i, sees_j = sees_both_regions(family, params)
            assert sees_i and sees_j, f"{path.name}: {family} with {params} ignores region {'i' if not sees_i else 'j'}"
            checked += 1
    assert checked > 0


def test_the_check_itself_catches_a_blind_model():
    """CLS pooling without query mixing is the known blind configuration: the model check finds
    it, and a spec that could draw it is refused in one line naming the field."""
    sees_i, sees_j = sees_both_regions(
        "cross_attention", {"d_model": 16, "nhead": 2, "num_layers": 1, "pooling_mode": "cls"}
    )
    assert (sees_i, sees_j) == (False, True)
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "x", "search": {"space": {"pooling_mode": ["mean", "cls"], "d_model": [16, 32]}}})
    assert (
        "search.space.pooling_mode: cross_attention with pooling_mode=cls: the prediction cannot depend on region i's"
        in str(error.value)
    )
    assert "\n" not in str(error.value)
    with pytest.raises(SpecError, match="model.fixed.pooling_mode"):
        parse_spec({"name": "x", "model": {"fixed": {"pooling_mode": "cls"}}, "search": {"space": {"d_model": [16]}}})
    with pytest.raises(SpecError, match="comparison of cross_attention: search.space.pooling_mode"):
        parse_spec({
            "name": "x", "model": {"family": "mlp"}, "search": {"space": {"dropout_rate": [0.1]}},
            "compare_with": ["cross_attention"],
            "comparison": {"baselines": {"cross_attention": {"space": {"pooling_mode": ["cls"]}}}},
        })  # fmt: skip
