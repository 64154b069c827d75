"""The plot builders of a study's figures, each drawn from a small hand-made input: no MLflow
store, no study, no browser.

Each test checks what a reader of the figure relies on: one trace per thing drawn, the order
things are shown in, the numbers behind a title, and that a figure fits the report's 1280 px.
"""

import math
import subprocess
import sys
from itertools import permutations
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from xattn.reporting.plots import (
    CannotDraw,
    TrialCurve,
    binned_mean,
    comparison_forest_figure,
    comparison_runs_figure,
    connectivity_matrices_figure,
    error_vs_distance_figure,
    learning_curves_figure,
    network_of,
    network_order,
    null_distribution_figure,
    optuna_figure,
    predicted_vs_observed_figure,
)
from xattn.reporting.render import PNG_SIZES, figure_div, png_size

REPORT_WIDTH = 1280  # px: the viewport the report tests open the page in

LABELS = ["7Networks_LH_Vis_1", "7Networks_LH_Default_1", "7Networks_LH_Vis_2", "7Networks_RH_Default_2"]


def predictions(observed_offset: float = 0.0) -> pd.DataFrame:
    """Every ordered pair of 4 regions, two networks interleaved, as checkpoint_test_predictions returns."""
    pairs = list(permutations(range(4), 2))
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    observed = 0.1 * i + 0.01 * j + observed_offset
    return pd.DataFrame({
        "i": i, "j": j, "label_i": [LABELS[k] for k in i], "label_j": [LABELS[k] for k in j],
        # |error| grows with distance; its sign tells (i, j) from (j, i)
        "observed": observed, "predicted": observed + np.where(i > j, 1, -1) * 0.001 * np.abs(i - j) * 10,
        "distance": np.abs(i - j) * 10.0,
    })  # fmt: skip


def comparison(nulls: bool = False) -> dict:
    families = [
        {"family": "cross_attention"},
        {"family": "cge", "vs_reference": {"n_pairs": 4, "n_folds": 4, "mean_difference": -0.2, "ci95_low": -0.3,
                                           "ci95_high": -0.1, "p_value": 0.01, "p_holm": 0.02}},
        {"family": "mlp", "vs_reference": {"n_pairs": 1, "n_folds": 1, "mean_difference": 0.1, "ci95_low": math.nan,
                                           "ci95_high": math.nan, "p_value": math.nan, "p_holm": math.nan}},
    ]  # fmt: skip
    if nulls:
        families[0]["nulls"] = {"method": "spin", "r": [0.1, 0.2, 0.15], "real_r": 0.4, "p": 0.25, "n": 3}
        families[1]["nulls"] = {"method": "spin", "r": [], "real_r": 0.3, "p": math.nan, "n": 0}  # none finished
    return {"reference": "cross_attention", "metric": "test_pearson", "families": families}


def assert_fits_the_report(figure, name: str = "") -> None:
    assert figure.layout.width is None or figure.layout.width <= REPORT_WIDTH
    assert png_size(name, figure)["width"] <= REPORT_WIDTH


# -- the search ----------------------------------------------------------------------------------


def test_learning_curves_mark_trials_that_stopped_before_the_budget():
    curves = [
        TrialCurve("full", [1, 2, 3], [0.1, 0.2, 0.3], "FINISHED", 3),
        TrialCurve("asha", [1], [0.05], "FINISHED", 1),
        TrialCurve("failed", [1, 2], [0.1, 0.0], "FAILED", 2),
    ]
    figure = learning_curves_figure(curves, "val_pearson", max_epochs=3)
    assert [trace.meta["trial"] for trace in figure.data] == ["full", "asha", "failed"]
    assert [list(trace.x) for trace in figure.data] == [[1, 2, 3], [1], [1, 2]]
    assert [trace.meta["stopped_early"] for trace in figure.data] == [False, True, False]
    assert [trace.line.dash for trace in figure.data] == ["solid", "dot", "dash"]
    assert list(figure.data[1].marker.symbol) == ["x"]
    assert "1 stopped early" in figure.layout.title.text and "budget 3 epochs" in figure.layout.title.text
    assert_fits_the_report(figure, "learning_curves")
    # without a known budget nothing can be called early
    assert not any(t.meta["stopped_early"] for t in learning_curves_figure(curves, "val_pearson", None).data)
    with pytest.raises(CannotDraw):
        learning_curves_figure([], "val_pearson", 3)


def optuna_study(values: list[tuple[int, float]]) -> optuna.Study:
    study = optuna.create_study(study_name="plots", direction="minimize")
    for d_model, value in values:
        study.add_trial(optuna.trial.create_trial(
            params={"d_model": d_model},
            distributions={"d_model": optuna.distributions.CategoricalDistribution([8, 16])},
            value=value,
        ))  # fmt: skip
    return study


def test_optuna_figures_name_the_objective_and_refuse_importances_they_cannot_estimate():
    study = optuna_study([(8, 0.5), (16, 0.3), (8, 0.4)])
    history = optuna_figure("optimization_history", study, "best_val_loss")
    assert history.layout.yaxis.title.text == "best_val_loss"
    assert sorted(history.data[0].y) == [0.3, 0.4, 0.5]
    assert_fits_the_report(history, "optimization_history")
    assert list(optuna_figure("param_importances", study, "best_val_loss").data[0].y) == ["d_model"]
    with pytest.raises(CannotDraw, match="2 completed trials"):
        optuna_figure("param_importances", optuna_study([(8, 0.5)]), "best_val_loss")
    with pytest.raises(CannotDraw, match="0 parameters varied"):
        optuna_figure("param_importances", optuna_study([(8, 0.5), (8, 0.4)]), "best_val_loss")
    with pytest.raises(CannotDraw, match="no completed trial"):
        optuna_figure("slice", optuna_study([]), "best_val_loss")


# -- the comparison of families ------------------------------------------------------------------


def test_the_slice_plot_of_many_parameters_wraps_into_rows_that_fit_the_report():
    """Optuna draws one 300 px subplot per parameter side by side: the quickstart's seven were 2100 px."""
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
        **{f"choice_{k}": optuna.distributions.CategoricalDistribution(["a", "b"]) for k in range(4)},
        "layers": optuna.distributions.IntDistribution(1, 4),
    }
    study = optuna.create_study(direction="maximize")
    for number in range(6):
        params = {"learning_rate": 10 ** (-4 + number * 0.4), "dropout": number / 10, "layers": 1 + number % 4,
                  **{f"choice_{k}": "ab"[(number + k) % 2] for k in range(4)}}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=number / 6))
    unwrapped = optuna.visualization.plot_slice(study, target_name="best_val_pearson")
    assert unwrapped.layout.width > REPORT_WIDTH  # what this guards against

    figure = optuna_figure("slice", study, "best_val_pearson")
    assert_fits_the_report(figure, "slice")
    axes = {key: figure.layout[key] for key in figure.layout.to_plotly_json() if key.startswith("xaxis")}
    assert sorted(axis.title.text for axis in axes.values()) == sorted(distributions)
    assert len({round(axis.domain[0], 3) for axis in axes.values()}) == 3  # three to a row, three rows
    assert len({round(figure.layout["y" + key[1:]].domain[0], 3) for key in axes}) == 3
    by_title = {axis.title.text: axis for axis in axes.values()}
    assert by_title["learning_rate"].type == "log" and by_title["choice_0"].type == "category"
    # every trace stays on its parameter's axis, with the same points
    for before, after in zip(unwrapped.data, figure.data, strict=True):
        assert (after.xaxis, after.yaxis, list(after.x), list(after.y)) == (
            before.xaxis, before.yaxis, list(before.x), list(before.y)
        )  # fmt: skip
    assert figure.layout.height > 2 * 300


def test_comparison_runs_join_each_fold_and_seed_across_families_in_numeric_order():
    def result(family, fold, seed, r):
        return SimpleNamespace(family=family, fold=fold, seed=seed, metrics={"test_pearson": r})

    results = [
        result("cge", "10", "0", 0.2), result("cross_attention", "10", "0", 0.5),
        result("cross_attention", "2", "0", 0.4), result("cge", "2", "0", 0.1),
        result("cross_attention", "2", "1", 0.45),  # its cge run failed: no point for cge
    ]  # fmt: skip
    figure = comparison_runs_figure(results, ["cross_attention", "cge"])
    assert [trace.name for trace in figure.data] == ["fold 2, seed 0", "fold 2, seed 1", "fold 10, seed 0"]
    assert [list(trace.x) for trace in figure.data] == [
        ["cross_attention", "cge"],
        ["cross_attention"],
        ["cross_attention", "cge"],
    ]
    assert list(figure.data[2].y) == [0.5, 0.2]
    assert list(figure.layout.xaxis.categoryarray) == ["cross_attention", "cge"]
    assert "2 folds x 2 seeds" in figure.layout.title.text
    assert_fits_the_report(figure, "comparison_runs")
    with pytest.raises(CannotDraw):
        comparison_runs_figure([], ["cross_attention"])


def test_forest_plot_draws_a_baseline_without_an_interval():
    (trace,) = comparison_forest_figure(comparison()).data
    assert list(trace.y) == ["cge", "mlp"] and list(trace.x) == [-0.2, 0.1]
    assert trace.error_x.array[0] == pytest.approx(0.1) and trace.error_x.array[1] is None
    assert trace.text[0] == "p = 0.010, Holm 0.020 (K = 4 folds)" and trace.text[1].startswith("p = -")
    with pytest.raises(CannotDraw):
        comparison_forest_figure({"reference": "cross_attention", "families": [{"family": "cross_attention"}]})


def test_null_distribution_shows_only_families_with_finished_nulls():
    figure = null_distribution_figure(comparison(nulls=True))
    boxes = [trace for trace in figure.data if trace.type == "box"]
    (real,) = [trace for trace in figure.data if trace.type == "scatter"]
    assert [box.name for box in boxes] == ["cross_attention: spin nulls"]
    assert list(boxes[0].x) == [0.1, 0.2, 0.15]
    assert list(real.y) == ["cross_attention"] and list(real.x) == [0.4]
    assert real.text[0] == "p = 0.250 (N = 3)"
    with pytest.raises(CannotDraw):
        null_distribution_figure(comparison(nulls=False))


# -- the best trial on its held-out regions ------------------------------------------------------


def test_predicted_vs_observed_states_the_pairs_r_and_spans_both_axes():
    frame = predictions()
    figure = predicted_vs_observed_figure(frame, "trial-3")
    points, diagonal = figure.data
    assert len(points.x) == 12
    r = np.corrcoef(frame["predicted"], frame["observed"])[0, 1]
    assert f"r = {r:.3f} (12 pairs of 4 test regions)" in figure.layout.title.text
    lowest = min(frame["observed"].min(), frame["predicted"].min())
    highest = max(frame["observed"].max(), frame["predicted"].max())
    assert list(diagonal.x) == list(diagonal.y) == pytest.approx([lowest, highest])
    assert_fits_the_report(figure, "predicted_vs_observed")


def test_connectivity_matrices_group_regions_by_network_on_one_colour_scale():
    frame = predictions()
    figure = connectivity_matrices_figure(frame, "trial-3")
    observed, predicted = figure.data
    # Vis regions (0, 2) first, then Default (1, 3): the order of each network's first region
    assert list(observed.x) == list(observed.y) == [LABELS[0], LABELS[2], LABELS[1], LABELS[3]]
    z = np.array(observed.z, dtype=float)
    assert np.isnan(np.diag(z)).all()
    position = {0: 0, 2: 1, 1: 2, 3: 3}
    for row in frame.itertuples():
        assert z[position[row.i], position[row.j]] == pytest.approx(row.observed)
    assert np.array(predicted.z, dtype=float)[position[1], position[0]] == pytest.approx(
        frame.query("i == 1 and j == 0")["predicted"].item()
    )
    # one network boundary: a line across and a line down in each of the two matrices
    assert len(figure.layout.shapes) == 4 and {shape.x0 for shape in figure.layout.shapes if shape.x0 == shape.x1} == {
        1.5
    }
    assert figure.layout.coloraxis.colorscale[0][1] == "#440154"  # Viridis: every value is positive
    assert figure.layout.coloraxis.cmin == pytest.approx(min(frame["observed"].min(), frame["predicted"].min()))
    # values on both sides of 0: a diverging scale centred on 0
    diverging = connectivity_matrices_figure(predictions(observed_offset=-0.2), "trial-3").layout.coloraxis
    assert diverging.cmin == pytest.approx(-diverging.cmax)
    assert_fits_the_report(figure, "connectivity_matrices")
    assert PNG_SIZES["connectivity_matrices"][0] <= REPORT_WIDTH


def test_regions_are_grouped_by_the_network_of_schaefer_labels():
    labels = ["7Networks_LH_Vis_1", "7Networks_LH_Default_1", "7Networks_LH_Vis_2",
              "7Networks_RH_Default_2", "7Networks_RH_Vis_3", "17Networks_LH_SomMotA_1"]  # fmt: skip
    assert [network_of(label) for label in labels] == ["Vis", "Default", "Vis", "Default", "Vis", "SomMotA"]
    # networks in order of first appearance, regions in their given order within a network
    assert network_order(labels) == [0, 2, 4, 1, 3, 5]
    # labels without a network part (synthetic, Desikan-Killiany) keep their order
    assert network_order(["syn_001", "syn_000"]) == [0, 1]
    assert network_order(["7Networks_LH_Vis_1", "L_bankssts"]) == [0, 1]
    assert network_of("lh_bankssts") is None


def test_error_vs_distance_plots_each_pairs_error_and_the_binned_mean():
    frame = predictions()
    figure = error_vs_distance_figure(frame, "trial-3", bins=3)
    points, binned = figure.data
    assert list(points.y) == pytest.approx((frame["predicted"] - frame["observed"]).tolist())
    assert list(points.x) == frame["distance"].tolist()
    # 12 pairs in 3 bins of 4: six at distance 10, four at 20, two at 30
    assert list(binned.x) == pytest.approx([10, 15, 25])
    assert list(binned.y) == pytest.approx([0.01, 0.015, 0.025])
    assert_fits_the_report(figure, "error_vs_distance")


def test_binned_mean_uses_equal_count_bins():
    x = np.array([5.0, 1.0, 2.0, 3.0, 4.0, 6.0])
    centres, means = binned_mean(x, x * 10, bins=3)
    assert centres.tolist() == [1.5, 3.5, 5.5] and means.tolist() == [15.0, 35.0, 55.0]
    assert len(binned_mean(x[:2], x[:2], bins=10)[0]) == 2


# -- what the plot builders need ---------------------------------------------------------------


def test_a_figure_div_has_a_height_even_when_the_figure_sets_none():
    figure = learning_curves_figure([TrialCurve("t", [1], [0.1], "FINISHED", 1)], "val_loss", 1)
    div = figure_div("learning_curves", figure)
    assert 'id="figure-learning_curves"' in div and "height:460px" in div.replace(" ", "")
    assert "<script src" not in div  # the page brings plotly.js once


def test_plot_builders_import_without_mlflow():
    code = "import sys, xattn.reporting.plots; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
