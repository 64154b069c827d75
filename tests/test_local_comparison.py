"""`xattn compare-local`: the comparison grid without Ray or MLflow, on identical folds and seeds."""

import json
import re

import numpy as np
import pytest
from test_cli import write_spec, xattn

from xattn.data import RegionSplit
from xattn.tuning.spec_file import load_spec
from xattn.tuning.trial import prepare_trial

TINY_CROSS = {"d_model": 8, "nhead": 1, "num_layers": 1, "deep_hidden_dims": [8], "batch_size": 256}


def tiny_spec(tmp_path):
    return write_spec(
        tmp_path,
        **{
            "data.synthetic": {"regions": 24, "genes": 6, "noise": 0.05, "seed": 0},
            "model.fixed": TINY_CROSS,
            "search.space": {"learning_rate": [0.003]},
            "compare_with": ["distance_decay", "cge"],
            "comparison": {"folds": 3, "seeds": 2, "tune": False},
            "budget.max_epochs": 2,
        },
    )


def test_every_family_runs_on_every_fold_and_seed_and_is_paired(tmp_path):
    out = tmp_path / "comparison.json"
    process = xattn("compare-local", tiny_spec(tmp_path), "--json-out", out, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "| cge | 6 |" in process.stdout
    saved = json.loads(out.read_text())
    families = {entry["family"]: entry for entry in saved["comparison"]["families"]}
    assert list(families) == ["cross_attention", "cge", "distance_decay"]
    for name, entry in families.items():
        assert entry["n_runs"] == 6
        assert np.isfinite(entry["test_pearson_mean"]) and np.isfinite(entry["test_pearson_sd"])
        if name != "cross_attention":
            assert entry["vs_reference"]["n_pairs"] == 6
    keys = {(run["family"], run["fold"], run["seed"]) for run in saved["runs"]}
    assert len(keys) == 18


def test_every_family_and_seed_sees_the_same_test_regions_in_a_fold(tmp_path):
    spec = load_spec(tiny_spec(tmp_path))
    spec.data.split = spec.data.split.model_copy(update={"folds": 3})
    test_sets = {}
    for family in ("cross_attention", "cge"):
        for fold in range(3):
            for seed in (0, 1):
                trial = prepare_trial(
                    spec.for_family(family), {"_fold": fold, "_seed": seed}, mirror=None, device="cpu"
                )
                assert isinstance(trial.experiment.split, RegionSplit)
                test_sets.setdefault(fold, set()).add(tuple(sorted(trial.experiment.split.test)))
    assert all(len(sets) == 1 for sets in test_sets.values())
    folds = [set(next(iter(sets))) for sets in test_sets.values()]
    assert set.union(*folds) == set(range(24)) and sum(map(len, folds)) == 24


def test_a_spec_without_baselines_is_a_one_line_error(tmp_path):
    spec = write_spec(tmp_path)
    process = xattn("compare-local", spec, cwd=tmp_path)
    assert process.returncode == 2
    assert "no compare_with" in process.stderr.strip()


# --- the library under the command: checks before any training, the JSON file written whole


def test_the_library_refuses_a_spec_without_baselines_before_any_training(tmp_path):
    from xattn.errors import SpecError
    from xattn.tuning.local_comparison import run_local_comparison

    with pytest.raises(SpecError, match="^my.yaml: the spec has no compare_with"):
        run_local_comparison(
            load_spec(write_spec(tmp_path)), source="my.yaml", on_run=lambda *_: pytest.fail("trained")
        )


def test_a_json_out_that_cannot_be_written_stops_before_any_training(tmp_path):
    from xattn.errors import PathError
    from xattn.tuning.local_comparison import run_local_comparison

    spec = load_spec(tiny_spec(tmp_path))
    with pytest.raises(PathError, match="folder .*nowhere does not exist"):
        run_local_comparison(spec, json_out=tmp_path / "nowhere" / "c.json", on_run=lambda *_: pytest.fail("trained"))


def test_json_out_must_name_a_file_in_a_folder_that_exists(tmp_path):
    from xattn.errors import PathError
    from xattn.tuning.local_comparison import check_json_out

    with pytest.raises(
        PathError,
        match=re.escape(f"--json-out {tmp_path} is a folder: name a file, e.g. {tmp_path / 'comparison.json'}"),
    ):
        check_json_out(tmp_path)
    with pytest.raises(PathError, match="does not exist"):
        check_json_out(tmp_path / "missing" / "c.json")
    check_json_out(tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind


def test_the_json_file_is_replaced_whole_and_lists_every_run(tmp_path):
    from xattn.tuning.comparison import FinalResult
    from xattn.tuning.local_comparison import LocalRun, write_json_out

    out = tmp_path / "c.json"
    runs = [LocalRun(FinalResult("cge", "0", "7", {"test_pearson": 0.5}), epochs=3, seconds=1.5)]
    write_json_out(out, None, runs)
    assert json.loads(out.read_text()) == {
        "comparison": None,
        "runs": [
            {"family": "cge", "fold": "0", "seed": "7", "metrics": {"test_pearson": 0.5}, "epochs": 3, "seconds": 1.5}
        ],
    }
    write_json_out(out, {"reference": "cge"}, runs * 2)
    saved = json.loads(out.read_text())
    assert saved["comparison"] == {"reference": "cge"} and len(saved["runs"]) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["c.json"]  # no .partial left
