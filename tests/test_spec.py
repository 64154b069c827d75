"""Spec validation: every bad spec is one line naming the field, before anything starts."""

from pathlib import Path

import pytest
import yaml

from xattn.errors import SpecError
from xattn.tuning.spec_file import load_spec, parse_spec

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def minimal(**changes):
    raw = {
        "name": "t",
        "data": {"dataset": "synthetic"},
        "search": {"space": {"d_model": [16, 32], "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
        "model": {"fixed": {"nhead": 2}},
    }
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.searched


def test_list_shorthand_is_a_choice():
    spec = parse_spec(minimal())
    assert spec.searched["d_model"].type == "choice"
    assert spec.searched["d_model"].candidate_values() == [16, 32]
    assert spec.search.mode == "min"


def test_trial_params_merge_fixed_and_sampled_and_decode_lists():
    spec = parse_spec(minimal(**{"search.space.deep_hidden_dims": [[64, 32], [32]]}))
    params = spec.trial_params({"d_model": 32, "deep_hidden_dims": spec.searched["deep_hidden_dims"].values[0]})
    assert params["deep_hidden_dims"] == [64, 32]
    assert params["nhead"] == 2 and params["d_model"] == 32 and params["genevec"] == "coexpression"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"serach": {}}, "unknown key (did you mean 'search'?)"),
        ({"budget.trails": 3}, "budget.trails: unknown key (did you mean 'trials'?)"),
        ({"budget.trials": "many"}, "budget.trials"),
        ({"budget.trials": 0}, "budget.trials"),
        ({"model.fixed.nhead": 3}, "not divisible by nhead"),
        ({"model.fixed.d_modle": 3}, "did you mean 'd_model'?"),
        ({"model.family": "cross_atention"}, "did you mean 'cross_attention'?"),
        ({"search.space": {}}, "search.space is empty"),
        ({"search.space.learning_rate": {"type": "loguniform", "low": 0, "high": 1}}, "low > 0"),
        ({"data.split.fold": 7}, "fold=7"),
        ({"data.genevec": "gene2vec"}, "gene2vec_file"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_bad_specs_give_one_line(changes, expected):
    raw = minimal()
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, source="s.yaml")
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message and message.startswith("s.yaml: ")


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_spec(path)


def test_overrides_use_dotted_paths(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    spec = load_spec(path, {"budget.trials": 3, "data.split.method": "spatial"})
    assert spec.budget.trials == 3 and spec.data.split.method == "spatial"


def test_relative_data_paths_resolve_against_the_spec(tmp_path):
    (tmp_path / "x.csv").write_text("label,A\nr,0.5\n")
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            minimal(**{"data.dataset": None, "data.files": {"expression": "x.csv", "connectivity": "c.csv"}})
        )
    )
    spec = load_spec(path)
    assert spec.data.files.expression == (tmp_path / "x.csv").resolve()


@pytest.mark.parametrize(
    "changes,noted",
    [
        ({}, False),
        ({"data.split.inner_folds": 3}, True),
    ],
)
def test_a_study_with_inner_folds_notes_the_trials_it_will_train(changes, noted):
    notes = parse_spec(minimal(**changes)).notes()
    assert any("inner folds" in note and "ASHA is off" in note for note in notes) == noted


def test_inner_folds_of_one_are_refused():
    with pytest.raises(SpecError, match="inner_folds=1 is not cross-validation"):
        parse_spec(minimal(**{"data.split.inner_folds": 1}))


def test_max_pairs_per_pass_is_a_trainer_setting_a_spec_can_fix():
    from xattn.training.trainer import TrainConfig

    spec = parse_spec(minimal(**{"model.fixed.max_pairs_per_pass": 32}))
    assert TrainConfig.from_params(spec.trial_params({"d_model": 16})).max_pairs_per_pass == 32


@pytest.mark.parametrize(
    "variants,reference,message",
    [
        ({"bad name": {"bidirectional": True}}, None, "variant name 'bad name'"),
        ({"empty": {}}, None, "variant 'empty' needs a mapping"),
        (
            {"typo": {"bidirectonal": True}},
            None,
            r"comparison.variants.typo: override.bidirectonal: "
            r"unknown hyperparameter \(did you mean 'bidirectional'\?\)",
        ),
        ({"blind": {"pooling_mode": "cls"}}, None, "comparison.variants.blind: model.fixed.pooling_mode"),
        (
            {"ok": {"bidirectional": True}},
            "cross_attention:nope",
            r"comparison.reference: 'cross_attention:nope' is not an arm",
        ),
    ],
)
def test_bad_variants_are_refused_before_anything_starts(variants, reference, message):
    raw = minimal(**{"comparison.variants": variants})
    if reference:
        raw["comparison"]["reference"] = reference
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_a_variant_fixes_its_overrides_and_stops_searching_them():
    spec = parse_spec(minimal(**{"comparison.variants": {"wide": {"d_model": 64, "bidirectional": True}}}))
    assert spec.compares and spec.comparison_arms == ["cross_attention", "cross_attention:wide"]
    variant = spec.for_variant("wide")
    assert variant.model.fixed == {"nhead": 2, "d_model": 64, "bidirectional": True}
    assert set(variant.searched) == {"learning_rate"}
    assert spec.comparison_reference == "cross_attention"


def test_nulls_can_draw_fewer_for_named_families_and_only_for_compared_ones():
    raw = minimal(compare_with=["mlp", "shared_self_attention"])
    raw["comparison"] = {"folds": 2, "seeds": 1, "nulls": {"n": 99, "n_by_family": {"shared_self_attention": 19}}}
    spec = parse_spec(raw)
    assert [spec.comparison.nulls.n_for(f) for f in ("cross_attention", "mlp", "shared_self_attention")] == [99, 99, 19]
    assert "on 99 or 19 msr nulls x 2 folds x 1 seeds: 434 runs" in " ".join(spec.notes())
    raw["comparison"]["nulls"]["n_by_family"] = {"cge": 19}
    with pytest.raises(SpecError, match="n_by_family names cge, which the study does not compare"):
        parse_spec(raw)


def test_a_baseline_override_adds_to_the_family_defaults_instead_of_replacing_them():
    """`comparison.baselines.<family>.fixed: {num_layers: 1}` keeps the family's default width and
    token encoding (a replaced default once trained gene2vec at the model's own d_model, 5x slower)."""
    from xattn.tuning.search_space import DEFAULT_FIXED, DEFAULT_SPACES

    baselines = {
        "shared_self_attention_gene2vec": {"fixed": {"num_layers": 1, "batch_size": 256}},
        "mlp": {"space": {"learning_rate": [1.0e-3, 3.0e-3], "head_batchnorm": [True, False]}},
    }
    spec = parse_spec(minimal(compare_with=list(baselines), **{"comparison.baselines": baselines}))
    gene2vec = spec.for_family("shared_self_attention_gene2vec")
    defaults = DEFAULT_FIXED["shared_self_attention_gene2vec"]
    assert gene2vec.model.fixed == {**defaults, "num_layers": 1, "batch_size": 256}
    assert gene2vec.model.fixed["d_model"] == defaults["d_model"] == 32
    assert "num_layers" not in gene2vec.search.space  # fixed now, searched by default
    assert set(gene2vec.search.space) == set(DEFAULT_SPACES["shared_self_attention_gene2vec"]) - {"num_layers"}
    mlp = spec.for_family("mlp")
    assert set(mlp.search.space) == {"learning_rate", "head_batchnorm"}  # the spec's space replaces the default
    assert "head_batchnorm" not in mlp.model.fixed and mlp.model.fixed["deep_hidden_dims"] == [256, 128]
