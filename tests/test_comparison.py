"""Comparing families: paired statistics on matched (fold, seed) runs, and a real small study."""

from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from xattn.studies import run_study
from xattn.tracking.store import Workspace
from xattn.tuning.comparison import compare_runs, load_comparison
from xattn.tuning.spec_file import parse_spec


def fake_run(family, fold, seed, pearson, status="FINISHED"):
    return SimpleNamespace(
        info=SimpleNamespace(status=status),
        data=SimpleNamespace(
            tags={"xattn.family": family, "xattn.fold": str(fold), "xattn.seed": str(seed)},
            metrics={"test_pearson": pearson, "test_mse": 1 - pearson, "test_r2": pearson / 2},
        ),
    )


def test_differences_are_paired_on_fold_and_seed():
    rng = np.random.default_rng(0)
    keys = [(fold, seed) for fold in range(4) for seed in range(3)]
    reference = {key: 0.3 + 0.1 * key[0] + rng.normal(0, 0.01) for key in keys}
    baseline = {key: value - 0.05 + rng.normal(0, 0.01) for key, value in reference.items()}
    runs = [fake_run("cross", *k, v) for k, v in reference.items()] + [
        fake_run("base", *k, v) for k, v in baseline.items()
    ]
    runs.append(fake_run("base", 9, 9, 0.99))  # no partner: must not enter the paired difference
    runs.append(fake_run("cross", 0, 0, -5.0, status="FAILED"))  # failed runs are not counted
    result = compare_runs(runs, reference="cross")
    by_family = {entry["family"]: entry for entry in result["families"]}
    assert by_family["cross"]["n_runs"] == 12 and by_family["base"]["n_runs"] == 13
    assert by_family["cross"]["test_pearson_mean"] == pytest.approx(np.mean(list(reference.values())))
    diff = by_family["base"]["vs_reference"]
    # The fold is the unit: seeds averaged within a fold (r through Fisher's z), then K = 4 differences.
    fold_diffs = np.array([
        np.tanh(np.mean(np.arctanh([reference[(f, s)] for s in range(3)])))
        - np.tanh(np.mean(np.arctanh([baseline[(f, s)] for s in range(3)])))
        for f in range(4)
    ])  # fmt: skip
    assert diff["n_pairs"] == 12 and diff["n_folds"] == 4
    assert diff["mean_difference"] == pytest.approx(fold_diffs.mean())
    half_width = stats.t.ppf(0.975, 3) * np.sqrt((1 / 4 + 1 / 3) * fold_diffs.var(ddof=1))
    assert diff["ci95_high"] - diff["mean_difference"] == pytest.approx(half_width)
    assert diff["naive_ci95_high"] - diff["naive_ci95_low"] < diff["ci95_high"] - diff["ci95_low"]
    assert diff["p_value"] == pytest.approx(2 * stats.t.sf(fold_diffs.mean() / (half_width / stats.t.ppf(0.975, 3)), 3))
    assert diff["p_holm"] == diff["p_value"]  # one baseline: nothing to adjust
    assert "Nadeau-Bengio" in diff["p_method"] and diff["mdd80"] > half_width
    # Pairing removes the fold effect: the paired CI is far narrower than the unpaired spread.
    assert diff["ci95_high"] - diff["ci95_low"] < 0.05 < np.std(list(reference.values()))


@pytest.mark.e2e
def test_small_comparison_study(tmp_path, mirror, ray_local):
    folds, seeds, trials = 2, 2, 2
    spec = parse_spec(
        {
            "name": "compare-e2e",
            "data": {"dataset": "hcp-s100-r08"},
            "model": {"fixed": {"num_layers": 1, "deep_hidden_dims": [16], "batch_size": 512}},
            "search": {
                "space": {
                    "d_model": [8],
                    "nhead": [2],
                    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                }
            },
            "budget": {"trials": trials, "max_epochs": 2},
            "compare_with": ["shared_self_attention_pooling"],
            "comparison": {
                "folds": folds,
                "seeds": seeds,
                "baselines": {
                    "shared_self_attention_pooling": {
                        "space": {"d_model": [8], "nhead": [2], "num_layers": [1], "token_encoder_dim": [8]}
                    }
                },
                # a variant of the study's family, and the arm the differences are taken from
                "variants": {"both-ways": {"bidirectional": True, "direction_combine": "product"}},
                "reference": "cross_attention:both-ways",
            },
        }
    )
    workspace = Workspace.open(tmp_path / "ws")
    result = run_study(spec, workspace, mirror=str(mirror))
    client = MlflowClient(workspace.tracking_uri)
    runs = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    roles = {}
    for run in runs:
        key = (run.data.tags["xattn.arm"], run.data.tags["xattn.role"])
        roles[key] = roles.get(key, 0) + 1
    assert roles == {
        ("cross_attention", "search"): trials,
        ("shared_self_attention_pooling", "search"): trials,
        ("cross_attention", "final"): folds * seeds,
        ("shared_self_attention_pooling", "final"): folds * seeds,
        ("cross_attention:both-ways", "final"): folds * seeds,
    }
    finals = [r for r in runs if r.data.tags["xattn.role"] == "final"]
    for arm in ("cross_attention", "shared_self_attention_pooling", "cross_attention:both-ways"):
        keys = {
            (r.data.tags["xattn.fold"], r.data.tags["xattn.seed"]) for r in finals if r.data.tags["xattn.arm"] == arm
        }
        assert keys == {(str(f), str(s)) for f in range(folds) for s in range(seeds)}
    # the variant is the study's best configuration with its overrides, and says so in its params
    best = client.get_run(result.best["run_id"]).data.params
    for run in finals:
        if run.data.tags["xattn.arm"] == "cross_attention:both-ways":
            assert run.data.tags["xattn.family"] == "cross_attention"
            assert run.data.params["bidirectional"] == "True" and run.data.params["direction_combine"] == "product"
            assert run.data.params["learning_rate"] == best["learning_rate"]
            assert run.data.tags["mlflow.runName"].startswith("cross_attention:both-ways-final-fold")

    comparison = load_comparison(client, spec.name)
    assert comparison["reference"] == "cross_attention:both-ways"
    assert [e["family"] for e in comparison["families"]] == [
        "cross_attention:both-ways",
        "cross_attention",
        "shared_self_attention_pooling",
    ]
    # the search's agreement with test r, per family and over both families' trials (a variant has no search)
    assert [e["search_trials"] for e in comparison["families"]] == [0, trials, trials]
    assert comparison["search_agreement"]["n_trials"] == 2 * trials
    assert result.agreement["all"]["n_trials"] == 2 * trials
    baseline = comparison["families"][2]
    assert baseline["n_runs"] == folds * seeds and baseline["vs_reference"]["n_pairs"] == folds * seeds
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "compare.shared_self_attention_pooling.test_pearson_mean" in parent.data.metrics
    assert {"comparison.csv", "comparison.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    # The same comparison as a user prints it.
    import json
    import subprocess
    import sys

    def cli(*args):
        process = subprocess.run(
            [sys.executable, "-m", "xattn.cli", "compare", spec.name, "--workspace", str(tmp_path / "ws"), *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert process.returncode == 0, process.stderr
        return process.stdout

    printed = json.loads(cli("--format", "json").strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(comparison))
    markdown = cli("--format", "markdown")
    assert markdown.startswith("| family |") and "shared_self_attention_pooling" in markdown
    assert cli("--format", "csv").splitlines()[0].startswith("family,n_runs,")


def test_validation_test_agreement_is_the_rank_correlation_of_selection_metric_and_test_r():
    from xattn.tuning.comparison import validation_test_agreement

    trials = [
        {"best_val_loss": loss, "test_pearson": r} for loss, r in [(0.1, 0.5), (0.2, 0.4), (0.3, 0.1), (0.4, 0.2)]
    ]
    agreement = validation_test_agreement(trials, "val_loss", "min")
    # lower loss is better: loss ranks 1-4 against test r ranks 1, 2, 4, 3
    assert agreement["spearman"] == pytest.approx(stats.spearmanr([1, 2, 3, 4], [1, 2, 4, 3])[0])
    assert agreement["n_trials"] == 4 and agreement["metric"] == "val_loss"
    flipped = [{"best_val_pearson": -t["best_val_loss"], "test_pearson": t["test_pearson"]} for t in trials]
    assert validation_test_agreement(flipped, "val_pearson", "max")["spearman"] == pytest.approx(agreement["spearman"])
    # too few trials, or trials the metric cannot tell apart: no number, not a crash
    assert np.isnan(validation_test_agreement(trials[:2], "val_loss", "min")["spearman"])
    same = [{"best_val_loss": 0.1, "test_pearson": r} for r in (0.1, 0.2, 0.3)]
    assert np.isnan(validation_test_agreement(same, "val_loss", "min")["spearman"])
    assert (
        validation_test_agreement(trials + [{"best_val_loss": float("nan"), "test_pearson": 0.9}], "val_loss", "min")[
            "n_trials"
        ]
        == 4
    )


def test_few_trials_get_an_exact_agreement_p_that_states_its_floor():
    from xattn.tuning.comparison import validation_test_agreement

    three = [{"best_val_pearson": v, "test_pearson": r} for v, r in [(0.1, 0.2), (0.2, 0.3), (0.3, 0.4)]]
    agreement = validation_test_agreement(three, "val_pearson", "max")
    # A perfect ranking of 3: 2 of the 6 orderings are as extreme, so p = 1/3, not the t approximation's 0.
    assert agreement["spearman"] == pytest.approx(1.0)
    assert agreement["p_value"] == pytest.approx(1 / 3) == agreement["p_floor"]
    assert agreement["p_method"] == "Spearman, exact"
    rng = np.random.default_rng(1)
    seven = [{"best_val_pearson": v, "test_pearson": v + rng.normal(0, 0.2)} for v in rng.random(7)]
    x = [t["best_val_pearson"] for t in seven]
    y = [t["test_pearson"] for t in seven]
    import itertools

    rhos = [stats.spearmanr(x, ordering)[0] for ordering in itertools.permutations(y)]
    observed = stats.spearmanr(x, y)[0]
    expected = np.mean([abs(rho) >= abs(observed) - 1e-12 for rho in rhos])
    assert validation_test_agreement(seven, "val_pearson", "max")["p_value"] == pytest.approx(expected)
