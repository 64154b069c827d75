"""Spatial nulls: they keep expression's spatial autocorrelation, the default method holds its
false-positive rate in worlds where connectivity does not read expression (tests/null_worlds.py),
and a model trained on them tells an expression effect from geography."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from null_worlds import Connectivity, Expression, draw_expression, rates_text, rejection_rate, schaefer100, world
from scipy.spatial.distance import cdist
from scipy.special import expit

from xattn.data.fingerprint import data_fingerprint
from xattn.data.nulls import (
    fitted_covariance,
    morans_i,
    null_data,
    null_seed,
    region_distances,
    spectral_basis,
    sphere_coordinates,
)
from xattn.errors import DataError, SpecError
from xattn.tracking import tags
from xattn.training.trainer import fit
from xattn.tuning.comparison import null_comparison, null_test
from xattn.tuning.spec import NullSpec
from xattn.tuning.spec_file import parse_spec
from xattn.tuning.trial import null_of_trial, prepare_trial

DEFAULT = NullSpec().method


@pytest.mark.realdata
def test_null_expression_keeps_spatial_autocorrelation_and_a_shuffle_destroys_it(hcp_s100):
    distance = region_distances(hcp_s100)
    moran = np.array([morans_i(hcp_s100.expression[:, g], distance) for g in range(hcp_s100.n_genes)])
    data = hcp_s100.select_genes(np.argsort(moran)[::-1][:8])  # the most spatially structured genes
    real = np.sort(moran)[::-1][:8]
    assert real.min() > 0.1  # AHBA expression is smooth over the cortex

    def mean_moran(method: str, index: int) -> float:
        null = null_data(data, method, seed=null_seed(0, method, index))
        np.testing.assert_array_equal(null.connectivity, data.connectivity)
        np.testing.assert_array_equal(null.coords, data.coords)
        assert not np.allclose(null.expression, data.expression)
        return float(np.mean([morans_i(null.expression[:, g], distance) for g in range(data.n_genes)]))

    for method in ("spin", "variogram", "msr"):
        kept = np.mean([mean_moran(method, index) for index in range(3)])
        assert 0.5 * real.mean() < kept < 1.5 * real.mean(), (method, real.mean(), kept)
    assert abs(mean_moran("shuffle", 0)) < 0.15 * real.mean()
    # A spin moves whole regions: every region's expression is used exactly once.
    spun = null_data(data, "spin", seed=3).expression
    assert sorted(map(tuple, spun)) == sorted(map(tuple, data.expression))


@pytest.mark.realdata
def test_sphere_coordinates_are_unit_vectors_per_hemisphere(hcp_s100):
    sphere, hemi = sphere_coordinates(hcp_s100)
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0, atol=1e-9)
    assert [hemi[k] for k in (0, 99)] == [0, 1] and np.bincount(hemi).tolist() == [50, 50]


def test_p_value_counts_nulls_at_least_as_good_with_the_plus_one_correction():
    result = null_test(
        [0.5, 0.7], {0: [0.1, 0.2], 1: [0.6, 0.6], 2: [0.7, 0.7], 3: [0.9]}, runs_per_null=2, method="spin"
    )
    assert result["n"] == 3  # null 3 lacks a run: left out, not counted as a draw
    assert result["real_r"] == pytest.approx(0.6)
    assert result["p"] == pytest.approx((1 + 2) / (1 + 3))  # nulls 1 (0.6 = real) and 2 (0.7)
    assert result["mean"] == pytest.approx(np.mean([0.15, 0.6, 0.7]))


def test_a_null_within_rounding_of_the_real_r_is_a_tie_that_counts_against_the_model():
    """distance_decay ignores expression: its nulls score its real r, give or take the summation
    order of stacked training (hcp-s100: 0.31015 real, nulls 1e-9 below it gave p = 0.05)."""
    real = 0.31014977690044626
    below = {i: [real - 5e-10] for i in range(19)}
    assert null_test([real], below, runs_per_null=1, method="msr")["p"] == 1.0
    assert null_test([real], {0: [real - 1e-3]}, runs_per_null=1, method="msr")["p"] == 0.5


def test_null_i_is_one_map_for_every_fold_and_a_new_map_for_every_index():
    def seed_of(index, fold):
        return null_of_trial({"_null_method": "msr", "_null_index": index}, 0, fold)["seed"]

    assert seed_of(3, 0) == seed_of(3, 1) == seed_of(3, 7) == null_seed(0, "msr", 3)
    assert len({seed_of(index, 0) for index in range(20)}) == 20
    assert null_of_trial({"_null_method": "msr", "_null_index": 3}, 0, 2)["fold"] == 2  # recorded, not drawn from
    assert null_seed(0, "spin", 3) != null_seed(0, "msr", 3) != null_seed(1, "msr", 3)


def _run(arm: str, family: str, r: float, status: str = "FINISHED", null: int | None = None, method: str = "msr"):
    run_tags = {tags.FAMILY: family, tags.ARM: arm}
    if null is not None:
        run_tags |= {tags.NULL_METHOD: method, tags.NULL_INDEX: str(null)}
    return SimpleNamespace(
        info=SimpleNamespace(status=status), data=SimpleNamespace(tags=run_tags, metrics={"test_pearson": r})
    )


def test_the_null_test_sets_each_arm_against_its_own_runs_and_a_variant_does_not_pool_into_its_family():
    finals = [
        _run("cge", "cge", 0.4),
        _run("cge", "cge", 0.6),
        _run("cge:wide", "cge", 0.9),
        _run("cge:wide", "cge", 0.9),
    ]
    finals += [_run("distance_decay", "distance_decay", 0.3), _run("distance_decay", "distance_decay", 0.3)]
    nulls = [_run("cge", "cge", r, null=i) for i, r in [(0, 0.45), (0, 0.45), (1, 0.55), (2, 0.6), (2, 0.6)]]
    nulls += [_run("distance_decay", "distance_decay", 0.3, null=i) for i in (0, 0, 1, 1)]
    nulls += [_run("cge", "cge", 0.9, null=0, method="spin"), _run("cge", "cge", 0.9, null=1, status="FAILED")]
    tests = null_comparison(finals, nulls, "msr", runs_per_null=2)
    assert set(tests) == {"cge", "distance_decay"}  # the variant was not retrained on nulls: no test
    assert tests["cge"]["real_r"] == pytest.approx(0.5)  # the family's own runs, not its variant's 0.9
    # null 0: 0.45, 0.45 (the spin run is another method's); null 1 lacks a finished run; null 2: 0.6, 0.6
    assert tests["cge"]["n"] == 2 and tests["cge"]["r"] == pytest.approx([0.45, 0.6])
    assert tests["cge"]["p"] == pytest.approx((1 + 1) / (1 + 2))
    assert tests["distance_decay"]["p"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def regions(data_mirror):
    return schaefer100(data_mirror)


@pytest.mark.realdata
def test_msr_fits_the_covariance_a_world_was_drawn_from_and_its_flips_keep_each_genes_mean_and_power(regions):
    rng = np.random.default_rng(0)
    smooth = world(regions, draw_expression(regions, Expression(genes=40, kernel="gaussian", length=40.0), rng),
                   regions.data.connectivity)  # fmt: skip
    fitted = fitted_covariance(smooth)
    assert fitted.kernel in ("gaussian", "matern52") and 30 < fitted.length < 50 and fitted.mirror == 0, fitted
    symmetric = Expression(genes=40, kernel="matern32", length=40.0, symmetric=True, noise=0.3)
    tied = fitted_covariance(world(regions, draw_expression(regions, symmetric, rng), regions.data.connectivity))
    assert tied.mirror == 1 and tied.kernel == "matern32" and 30 < tied.length < 55 and 0.03 < tied.nugget < 0.15, tied

    null = null_data(smooth, "msr", seed=5)
    np.testing.assert_array_equal(null.expression, null_data(smooth, "msr", seed=5).expression)
    assert null.metadata["null"]["covariance"]["kernel"] == fitted.kernel
    weights, _ = spectral_basis(fitted.matrix(regions.distance, regions.mirrored))
    real, drawn = smooth.expression.astype(np.float64), null.expression.astype(np.float64)
    # A flip is orthogonal on the residual: each gene keeps its GLS mean and its residual's norm.
    np.testing.assert_allclose(weights @ drawn, weights @ real, atol=1e-4)
    np.testing.assert_allclose(
        np.linalg.norm(drawn - weights @ drawn, axis=0), np.linalg.norm(real - weights @ real, axis=0), rtol=1e-4
    )
    assert np.corrcoef(drawn.ravel(), real.ravel())[0, 1] < 0.9


# Calibration in simulated worlds on the real Schaefer-100 regions (tests/null_worlds.py): cge's
# statistic, 4 spatial folds, N = 19 nulls, so a calibrated null rejects at p <= 0.05 in 5% of
# worlds. Bounds are loose for the few worlds a test affords (P(X >= 5) = 0.03 for X ~ Bin(30,
# 0.05)); benchmarks/null_calibration.py measures the rates on hundreds of worlds.
WORLDS, NULLS = 30, 19


@pytest.mark.realdata
def test_the_default_null_holds_its_false_positive_rate_where_connectivity_depends_on_distance_only(regions):
    results = rejection_rate(regions, Expression(kernel="exponential", length=20.0), Connectivity(kind="distance"),
                             (DEFAULT, "spin", "shuffle"), WORLDS, NULLS)  # fmt: skip
    message = (
        f"false-positive rates at alpha 0.05 over {WORLDS} distance-only worlds: {rates_text(results)}; variogram is "
        "not run here (~15 s a world), benchmarks/null_calibration.py measured 5/30"
    )
    assert results[DEFAULT]["rejected"] <= 4, message
    # The check can fail: spins blur distances (a spun parcel's partner lies up to a parcel away),
    # so an expression statistic drops under them even here, and a shuffle drops it further.
    assert results["spin"]["rate"] >= 0.5 and results["shuffle"]["rate"] >= 0.9, message


@pytest.mark.realdata
def test_the_default_null_holds_its_false_positive_rate_for_co_expressed_symmetric_genes_and_independent_fields(
    regions,
):
    """Genes mixed from 3 latent fields tied across the hemispheres (as AHBA expression is) against
    connectivity drawn from an independent spatial field."""
    expression = Expression(kernel="matern32", length=40.0, latent=3, noise=0.3, symmetric=True, sigmoid=True)
    results = rejection_rate(regions, expression, Connectivity(kind="field"), (DEFAULT,), WORLDS, NULLS, seed=1)
    assert results[DEFAULT]["rejected"] <= 4, f"false-positive rate over {WORLDS} worlds: {rates_text(results)}"


@pytest.mark.realdata
def test_the_default_null_finds_an_expression_effect_beside_a_distance_one(regions):
    worlds = 10
    connectivity = Connectivity(kind="expression", effect=0.15)
    results = rejection_rate(regions, Expression(kernel="exponential", length=20.0), connectivity, (DEFAULT,), worlds,
                             NULLS, seed=2)  # fmt: skip
    assert results[DEFAULT]["rate"] >= 0.8, f"power over {worlds} worlds: {rates_text(results)}"


@pytest.mark.realdata
def test_the_calibration_benchmark_runs_and_reports_a_rate_per_method(data_mirror, capsys):
    from benchmarks.null_calibration import main

    main(["--mirror", str(data_mirror), "--worlds", "2", "--methods", "msr,shuffle", "--only", "field / exponential"])
    table = capsys.readouterr().out
    assert "| field / exponential 20 mm | msr |" in table and "| field / exponential 20 mm | shuffle |" in table


def two_hemisphere_files(folder, *, similarity: float, n_per_hemisphere: int = 60, genes: int = 12, seed: int = 0):
    """User files of a world where spinning is exact: two mirror-image spheres of regions,
    smooth expression fields, connectivity = exp(-d / 60) + similarity * corr(x_i, x_j) + noise."""
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n_per_hemisphere, 3))
    left = 40.0 * left / np.linalg.norm(left, axis=1, keepdims=True) + [-50.0, 0.0, 0.0]
    coords = np.vstack([left, left * [-1.0, 1.0, 1.0]])
    # Fields mirror-symmetric across hemispheres, as cortical expression roughly is and as the
    # spin (one rotation, mirrored for the other hemisphere) assumes.
    folded = coords.copy()
    folded[:, 0] = -np.abs(coords[:, 0])  # every region at its left-hemisphere position
    centres = left[rng.choice(len(left), size=(genes, 3))]  # three bumps per gene
    weights = rng.standard_normal((genes, 3))
    fields = np.stack(
        [(weights[g] * np.exp(-(cdist(folded, centres[g]) ** 2) / (2 * 60.0**2))).sum(axis=1) for g in range(genes)],
        axis=1,
    )
    expression = expit(1.5 * (fields - fields.mean(0)) / fields.std(0))
    noise = rng.standard_normal((len(coords), len(coords)))
    connectivity = (
        np.exp(-cdist(coords, coords) / 60.0) + similarity * np.corrcoef(expression) + 0.05 * (noise + noise.T)
    )
    np.fill_diagonal(connectivity, 0.0)
    labels = [f"{side}_region{k:02d}" for side in ("LH", "RH") for k in range(n_per_hemisphere)]
    paths = {name: folder / f"{name}.csv" for name in ("expression", "connectivity", "coords")}
    pd.DataFrame(expression, index=pd.Index(labels, name="label"), columns=[f"g{g}" for g in range(genes)]).to_csv(
        paths["expression"]
    )
    pd.DataFrame(connectivity, index=labels, columns=labels).to_csv(paths["connectivity"])
    pd.DataFrame(coords, index=pd.Index(labels, name="label"), columns=["x", "y", "z"]).to_csv(paths["coords"])
    return {name: str(path) for name, path in paths.items()}


def null_p_value(files: dict[str, str], n_nulls: int, folds: int = 2, method: str = DEFAULT) -> dict:
    """A cge model's real test r against its nulls, through the trainable's own preparation."""
    spec = parse_spec({
        "name": "nulls", "data": {"dataset": None, "files": files, "split": {"method": "spatial", "folds": folds}},
        "model": {"family": "cge", "fixed": {"batch_size": 256}},
        "search": {"space": {"learning_rate": [0.02]}},
        "budget": {"max_epochs": 15, "patience_steps": 100000},
        "compare_with": ["distance_decay"],
        "comparison": {"folds": folds, "seeds": 1, "nulls": {"method": method, "n": n_nulls}},
    })  # fmt: skip

    def test_r(config):
        trial = prepare_trial(spec, {"learning_rate": 0.02, **config}, mirror=None)
        return fit(trial.model, trial.experiment.pairs, trial.train_config).test["test_pearson"]

    real = [test_r({"_fold": fold}) for fold in range(folds)]
    nulls = {
        i: [test_r({"_fold": f, "_null_method": method, "_null_index": i}) for f in range(folds)]
        for i in range(n_nulls)
    }
    return null_test(real, nulls, runs_per_null=folds, method=method)


def test_an_expression_model_beats_its_nulls_when_connectivity_depends_on_expression(tmp_path):
    genes = null_p_value(two_hemisphere_files(tmp_path, similarity=0.5), n_nulls=19)
    assert genes["n"] == 19
    # 1 / (1 + 19) = 0.05 is the smallest p 19 nulls can give: every null is below the real r.
    # (The nulls keep expression's spatial structure, so they keep much of cge's r: measured
    # 0.97 real against 0.84 +- 0.08; spins, which lose structure, gave 0.58.)
    assert genes["p"] == pytest.approx(1 / 20), genes


def test_an_expression_model_does_not_beat_its_nulls_when_connectivity_depends_on_distance_only(tmp_path):
    """Spins failed this (cge 0.76 real, 0.58 +- 0.04 spun, p = 0.05): a spun parcel's partner
    lies up to a parcel away, so expression similarity stops tracking distance under spins."""
    space_only = null_p_value(two_hemisphere_files(tmp_path, similarity=0.0), n_nulls=19)
    assert space_only["p"] > 0.05, space_only
    assert abs(space_only["real_r"] - space_only["mean"]) < 2 * space_only["sd"], space_only


def test_nulls_need_a_comparison_and_spatial_nulls_need_coordinates(tmp_path):
    with pytest.raises(SpecError, match="comparison.nulls retrains the compared families"):
        parse_spec(
            {"name": "x", "search": {"space": {"learning_rate": [0.01]}}, "comparison": {"nulls": {"method": "spin"}}}
        )
    with pytest.raises(SpecError, match="comparison.nulls.method"):
        parse_spec({"name": "x", "compare_with": ["cge"], "comparison": {"nulls": {"method": "spun"}}})
    files = two_hemisphere_files(tmp_path, similarity=0.0, n_per_hemisphere=5, genes=3)
    from xattn.data import load_user_files

    no_coords = load_user_files(files["expression"], files["connectivity"])
    with pytest.raises(DataError, match="spin nulls need region coordinates"):
        null_data(no_coords, "spin", seed=0)
    assert null_data(no_coords, "shuffle", seed=0).n_regions == 10


NULL_STUDY = {
    "name": "nulls-e2e",
    "seed": 0,
    "data": {"dataset": "synthetic", "synthetic": {"regions": 40, "genes": 8, "noise": 0.05, "seed": 0}},
    "model": {"family": "cge", "fixed": {"batch_size": 64}},
    "search": {"space": {"learning_rate": [0.02]}, "scheduler": "none"},
    "budget": {"trials": 1, "max_epochs": 10, "patience_steps": 100000, "max_concurrent": 1},
    "compare_with": ["distance_decay"],
    "comparison": {"folds": 2, "seeds": 1, "tune": False, "nulls": {"method": "shuffle", "n": 2}},
}


@pytest.mark.e2e
def test_null_runs_are_tagged_child_runs_that_resume_after_a_crash(tmp_path):
    """A real study killed with SIGKILL inside its null phase: resumed, it keeps the null runs
    that had finished, runs the rest once, and reports each family's null test. The reference
    families train their nulls stacked, several to a Ray trial (xattn.tuning.null_bundle): each
    null is still its own run, with every epoch's metrics and its checkpoint, and the test r it
    would have had trained alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    from xattn.tuning.comparison import load_comparison

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(NULL_STUDY))
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "xattn.cli", "study", "run", str(spec), "--workspace", str(workspace)]
    process = subprocess.Popen(
        command, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    client = None

    def null_runs():
        nonlocal client
        if client is None:
            # The study creates the store's tables holding this lock (xattn.studies.open_stores);
            # a reader that made them too at the same moment would fail one of the two migrations.
            with FileLock(workspace / ".stores.lock"):
                client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(NULL_STUDY["name"])
        return client.search_runs([experiment.experiment_id], "tags.`xattn.role` = 'null'") if experiment else []

    deadline = time.monotonic() + 240
    finished_before = []
    while time.monotonic() < deadline and not finished_before:
        assert process.poll() is None, process.stdout.read()
        try:
            finished_before = [run.info.run_id for run in null_runs() if run.info.status == "FINISHED"]
        except Exception:  # noqa: BLE001 - the store is not there yet, or briefly locked
            pass
        time.sleep(0.3)
    assert finished_before, "no null run finished in time"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    expected = 2 * 2 * 2  # families x nulls x folds (one seed)
    assert len([run for run in null_runs() if run.info.status == "FINISHED"]) < expected

    resumed = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "resume", NULL_STUDY["name"], "--workspace", str(workspace)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = [run for run in null_runs() if "xattn.orphaned" not in run.data.tags]
    assert all(run.info.status == "FINISHED" for run in runs)
    cells = sorted(
        (r.data.tags["xattn.family"], r.data.tags["xattn.null_index"], r.data.tags["xattn.fold"]) for r in runs
    )
    assert cells == sorted((f, str(i), str(k)) for f in ("cge", "distance_decay") for i in range(2) for k in range(2))
    assert {r.data.tags["xattn.null_method"] for r in runs} == {"shuffle"}
    assert set(finished_before) <= {run.info.run_id for run in runs}, "a null run that had finished ran again"
    assert {run.data.tags[tags.STACKED] for run in runs} == {"2"}  # both nulls of a fold in one trial
    # stacked or not, each null run says what produced it: the data of the study's spec
    assert {run.data.tags[tags.DATA_HASH] for run in runs} == {data_fingerprint(parse_spec(NULL_STUDY).data).hash}
    run = min(
        runs, key=lambda r: (r.data.tags["xattn.family"], r.data.tags["xattn.fold"], r.data.tags["xattn.null_index"])
    )
    epochs = int(run.data.tags[tags.EPOCHS_RUN])
    for key in ("val_pearson", "test_pearson"):  # the kept checkpoint's test r at every epoch too: a line, not a dot
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1)), key
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {
        "checkpoint/config.json", "checkpoint/weights.safetensors",
    }  # fmt: skip
    alone = parse_spec(NULL_STUDY).for_family(run.data.tags["xattn.family"])
    alone.data.split = alone.data.split.model_copy(update={"folds": 2})
    trial = prepare_trial(alone, {
        "_fold": int(run.data.tags["xattn.fold"]), "_seed": 0,
        "_null_method": "shuffle", "_null_index": int(run.data.tags["xattn.null_index"]),
    }, mirror=None)  # fmt: skip
    trained_alone = fit(trial.model, trial.experiment.pairs, trial.train_config)
    assert run.data.metrics["test_pearson"] == pytest.approx(trained_alone.test["test_pearson"], abs=1e-5)

    comparison = load_comparison(client, NULL_STUDY["name"])
    finals = client.search_runs(
        [client.get_experiment_by_name(NULL_STUDY["name"]).experiment_id], "tags.`xattn.role` = 'final'"
    )
    for entry in comparison["families"]:
        family, nulls = entry["family"], entry["nulls"]
        real = np.mean([r.data.metrics["test_pearson"] for r in finals if r.data.tags["xattn.family"] == family])
        drawn = [np.mean([r.data.metrics["test_pearson"] for r in runs if r.data.tags["xattn.family"] == family
                          and r.data.tags["xattn.null_index"] == str(i)]) for i in range(2)]  # fmt: skip
        assert nulls["n"] == 2 and nulls["real_r"] == pytest.approx(real)
        assert nulls["mean"] == pytest.approx(np.mean(drawn)) and nulls["sd"] == pytest.approx(np.std(drawn, ddof=1))
        assert nulls["p"] == pytest.approx((1 + sum(d >= real for d in drawn)) / 3)
    compare = [sys.executable, "-m", "xattn.cli", "compare", NULL_STUDY["name"], "--workspace", str(workspace)]
    shown = subprocess.run(compare, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "null" in shown.stdout, shown.stdout + shown.stderr
