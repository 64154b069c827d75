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
    # Every arm is summarised over the paired runs: seeds, then folds, averaged as Fisher's z.
    assert by_family["base"]["n_paired_runs"] == 12
    assert by_family["cross"]["test_pearson_mean"] == pytest.approx(
        np.tanh(np.arctanh(list(reference.values())).mean())
    )
    assert by_family["base"]["test_pearson_mean"] == pytest.approx(np.tanh(np.arctanh(list(baseline.values())).mean()))
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


def checkpoint_split(client, run) -> dict:
    from xattn.tracking.runs import read_artifact_json

    return read_artifact_json(client, run.info.run_id, "checkpoint/config.json")["split"]


def assert_nested_selection(client, runs, folds: int) -> None:
    """No outer test region takes part in choosing its fold's configuration: each fold's final
    runs retrain the best search trial of that fold's own search (by validation), and every
    trial of that search trained and validated on regions outside the fold's test regions."""
    search = [r for r in runs if r.data.tags["xattn.role"] == "search" and r.info.status == "FINISHED"]
    finals = [r for r in runs if r.data.tags["xattn.role"] == "final" and "xattn.null_index" not in r.data.tags]
    for family in {r.data.tags["xattn.family"] for r in search}:
        for fold in map(str, range(folds)):
            fold_finals = [
                r for r in finals if r.data.tags["xattn.arm"] == family and r.data.tags["xattn.fold"] == fold
            ]
            test = set(checkpoint_split(client, fold_finals[0])["test"])
            trials = [r for r in search if r.data.tags["xattn.family"] == family and r.data.tags["xattn.fold"] == fold]
            assert trials, f"{family} fold {fold}: no search of its own"
            for trial in trials:
                split = checkpoint_split(client, trial)
                assert set(split["test"]) == test and not (set(split["train"]) | set(split["val"])) & test
            best = min(trials, key=lambda r: r.data.metrics["best_val_loss"])  # the spec selects on val_loss
            searched = [key for key in best.data.params if any(key in t.data.params for t in trials)]
            for final in fold_finals:
                assert {k: final.data.params[k] for k in searched} == {k: best.data.params[k] for k in searched}


def assert_winners_are_finals(client, runs, spec, mirror, folds: int, seeds: int) -> None:
    """A fold's search winner trained exactly its first-seed final (same split, seed, configuration
    and budget): it is recorded as that final, with its metrics and checkpoint, and retraining the
    final's config reproduces it. Other seeds are trained."""
    import json

    from xattn.training.trainer import fit
    from xattn.tuning.phases import outer_fold
    from xattn.tuning.trial import SELECTED, prepare_trial

    by_id = {r.info.run_id: r for r in runs}
    finals = [r for r in runs if r.data.tags["xattn.role"] == "final" and r.data.tags["xattn.arm"] == "cross_attention"]
    copied = {r.data.tags["xattn.fold"]: r for r in finals if "xattn.trained_as" in r.data.tags}
    assert set(copied) == set(map(str, range(folds)))
    assert all(r.data.tags["xattn.seed"] == "0" for r in copied.values())
    assert sum("xattn.trained_as" not in r.data.tags for r in finals) == folds * (seeds - 1)
    for fold, final in copied.items():
        winner = by_id[final.data.tags["xattn.trained_as"]]
        assert winner.data.tags["xattn.role"] == "search" and winner.data.tags["xattn.fold"] == fold
        assert final.data.metrics == winner.data.metrics and final.data.params == winner.data.params
        assert {a.path for a in client.list_artifacts(final.info.run_id, "checkpoint")} == {
            a.path for a in client.list_artifacts(winner.info.run_id, "checkpoint")
        }
    # Retrained as a final run would be, fold 0's winner gives the same result.
    selected = {k: json.loads(copied["0"].data.params[k]) for k in spec.search.space}
    trial = prepare_trial(
        outer_fold(spec, 0, folds), {SELECTED: {"0": selected}, "_fold": 0, "_seed": 0}, mirror=mirror
    )
    last = []
    fit(trial.model, trial.experiment.pairs, trial.train_config, on_epoch=last.append)
    assert last[-1].test["test_pearson"] == pytest.approx(copied["0"].data.metrics["test_pearson"], abs=1e-6)


def assert_deployed_refit(client, result, runs, folds: int) -> None:
    """The registered model is the configuration selected on all regions, refit on all regions,
    with the nested estimate (the study family's fold means) on its run and its card."""
    from xattn.tracking.model_registry import resolve

    refit = next(r for r in runs if r.data.tags["xattn.role"] == "refit")
    version = resolve(client, result.best["model_uri"])
    assert version.run_id == refit.info.run_id and "nested estimate" in version.description
    split = checkpoint_split(client, refit)
    assert split["val"] == [] and split["test"] == [] and len(split["train"]) == 100  # every region of hcp-s100
    selection = [r for r in runs if r.data.tags["xattn.role"] == "search" and r.data.tags["xattn.fold"] == "all"]
    best = min(selection, key=lambda r: r.data.metrics["best_val_loss"])
    assert refit.data.params["learning_rate"] == best.data.params["learning_rate"]
    assert result.best["run_id"] == best.info.run_id
    estimate = client.get_run(refit.info.run_id).data.metrics
    assert estimate["nested_folds"] == folds
    assert estimate["nested_test_pearson_ci95_low"] < estimate["nested_test_pearson"]
    assert "test_pearson" not in estimate  # the refit has no held-out regions of its own


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
    # Nested: each family searches every outer fold; the study's family also searches all
    # regions once more, for the configuration it refits and deploys.
    assert roles == {
        ("cross_attention", "search"): folds * trials + trials,
        ("shared_self_attention_pooling", "search"): folds * trials,
        ("cross_attention", "final"): folds * seeds,
        ("shared_self_attention_pooling", "final"): folds * seeds,
        ("cross_attention:both-ways", "final"): folds * seeds,
        ("cross_attention", "refit"): 1,
    }
    finals = [r for r in runs if r.data.tags["xattn.role"] == "final"]
    for arm in ("cross_attention", "shared_self_attention_pooling", "cross_attention:both-ways"):
        keys = {
            (r.data.tags["xattn.fold"], r.data.tags["xattn.seed"]) for r in finals if r.data.tags["xattn.arm"] == arm
        }
        assert keys == {(str(f), str(s)) for f in range(folds) for s in range(seeds)}
    assert_nested_selection(client, runs, folds)
    assert_winners_are_finals(client, runs, spec, str(mirror), folds, seeds)
    assert_deployed_refit(client, result, runs, folds)
    # the variant is its fold's selected configuration with its overrides, and says so in its params
    selected = {
        r.data.tags["xattn.fold"]: r.data.params["learning_rate"]
        for r in finals
        if r.data.tags["xattn.arm"] == "cross_attention"
    }
    for run in finals:
        if run.data.tags["xattn.arm"] == "cross_attention:both-ways":
            assert run.data.tags["xattn.family"] == "cross_attention"
            assert run.data.params["bidirectional"] == "True" and run.data.params["direction_combine"] == "product"
            assert run.data.params["learning_rate"] == selected[run.data.tags["xattn.fold"]]
            assert run.data.tags["mlflow.runName"].startswith("cross_attention:both-ways-final-fold")

    comparison = load_comparison(client, spec.name)
    assert comparison["reference"] == "cross_attention:both-ways"
    assert [e["family"] for e in comparison["families"]] == [
        "cross_attention:both-ways",
        "cross_attention",
        "shared_self_attention_pooling",
    ]
    # the search's agreement with test r, per family and over both families' trials (a variant has no search)
    assert [e["search_trials"] for e in comparison["families"]] == [0, folds * trials, folds * trials]
    assert comparison["search_agreement"]["n_trials"] == 2 * folds * trials
    assert result.agreement["all"]["n_trials"] == 2 * folds * trials
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


def test_within_fold_agreement_removes_what_fold_difficulty_adds_to_the_pooled_one():
    from xattn.tuning.comparison import GROUP, validation_test_agreement

    # Two folds, one easy: pooled, validation "predicts" test; within each fold it ranks them backwards.
    trials = [
        {"best_val_pearson": val, "test_pearson": test, GROUP: fold}
        for fold, offset in (("a", 0.0), ("b", 0.5))
        for val, test in ((0.1 + offset, 0.3 + offset), (0.2 + offset, 0.2 + offset), (0.3 + offset, 0.1 + offset))
    ]
    agreement = validation_test_agreement(trials, "val_pearson", "max")
    assert agreement["spearman"] > 0.5
    assert agreement["spearman_within_folds"] == pytest.approx(-1.0) and agreement["n_folds"] == 2
    # one search only: nothing to centre on
    assert "spearman_within_folds" not in validation_test_agreement(trials[:3], "val_pearson", "max")
