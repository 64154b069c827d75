"""The figures of a study, as plotly figures, and their logging to the study's MLflow run.

`study_figures` draws every figure that applies to a study run, from what the run recorded:
the Optuna study (search history, importances, parallel coordinates, slices), the trials'
per-epoch validation metric, the comparison of families when the spec had `compare_with`,
and the best trial's predictions on its held-out regions. `log_study_figures` writes each
one to the parent run as `figures/<name>.html` (interactive, works offline) and
`figures/<name>.png`.

A figure that cannot be drawn (too few trials, no checkpoint, no browser for PNGs) is left
out with a log line saying why: figures never fail a study.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from xattn.errors import one_line
from xattn.tracking.runs import best_child, child_runs
from xattn.tuning.comparison import FinalResult, arm_of
from xattn.tracking import tags

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"
COMPARISON_ARTIFACT = "comparison.json"  # written by xattn.tuning.comparison.log_comparison
OPTUNA_FIGURES = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
COMPARISON_FIGURES = ("comparison_runs", "comparison_forest", "null_distribution")
NULL_FIGURES = ("null_distribution",)  # only for a comparison with `nulls`
BEST_MODEL_FIGURES = ("predicted_vs_observed", "connectivity_matrices", "error_vs_distance")
# Display order: how the search went, then how families compare, then the chosen model.
FIGURE_NAMES = (
    "optimization_history", "learning_curves", "param_importances", "parallel_coordinate", "slice",
    *COMPARISON_FIGURES, *BEST_MODEL_FIGURES,
)  # fmt: skip

# plotly.js inside every HTML file (4.8 MB each): MLflow's UI shows an HTML artifact from a
# blob: URL, where the relative plotly.min.js of include_plotlyjs="directory" cannot load.
INCLUDE_PLOTLYJS = True
PNG_SIZE = (1000, 600)  # pixels (the HTML figures fill the window instead)
PNG_SIZES = {"connectivity_matrices": (1200, 620)}
PNG_TIMEOUT_S = 60  # per image: a browser that hangs must not hold a finished study for long
PNG_TABS = 2  # 10 figures on 2 cores: 2.8-3.2 s in two tabs against 4.3-5.3 s in one
TEMPLATE = "plotly_white"


class CannotDraw(Exception):
    """A figure does not apply to this study (its message says why)."""


# -- the figures of a study ------------------------------------------------------------------


def study_figures(
    client: MlflowClient, parent_run_id: str, optuna_storage: str, *, mirror: str | None = None
) -> dict[str, go.Figure]:
    """Every figure that applies to this study, by name, in display order (FIGURE_NAMES)."""
    parent = client.get_run(parent_run_id)
    metric = parent.data.tags.get(tags.METRIC, "best_val_loss")
    figures: dict[str, go.Figure] = {}

    study = _load(OPTUNA_FIGURES, lambda: _optuna_study(parent, optuna_storage))
    if study is not None:
        for name in OPTUNA_FIGURES:
            _draw(figures, name, lambda name=name: optuna_figure(name, study, metric))

    _draw(figures, "learning_curves", lambda: learning_curves_figure(
        trial_curves(client, parent, metric.removeprefix("best_")), metric.removeprefix("best_"), _max_epochs(parent)
    ))  # fmt: skip

    # Only a spec with compare_with has a comparison: its absence is not worth a log line.
    if has_comparison(client, parent):
        comparison = _load(COMPARISON_FIGURES, lambda: _comparison(client, parent))
    else:
        comparison = None
    if comparison is not None:
        finals = final_results(client, parent)
        _draw(figures, "comparison_runs", lambda: comparison_runs_figure(finals, [e["family"] for e in comparison["families"]]))
        _draw(figures, "comparison_forest", lambda: comparison_forest_figure(comparison))
        if any("nulls" in entry for entry in comparison["families"]):
            _draw(figures, "null_distribution", lambda: null_distribution_figure(comparison))

    best = _load(BEST_MODEL_FIGURES, lambda: _best_predictions(client, parent, mirror))
    if best is not None:
        run_name, predictions = best
        _draw(figures, "predicted_vs_observed", lambda: predicted_vs_observed_figure(predictions, run_name))
        _draw(figures, "connectivity_matrices", lambda: connectivity_matrices_figure(predictions, run_name))
        _draw(figures, "error_vs_distance", lambda: error_vs_distance_figure(predictions, run_name))
    return {name: figures[name] for name in FIGURE_NAMES if name in figures}


def _load(names: Iterable[str], load: Callable[[], Any]) -> Any:
    """What a group of figures is drawn from, or None (logged) when it cannot be had."""
    try:
        return load()
    except CannotDraw as reason:
        logger.warning("figures %s skipped: %s", ", ".join(names), reason)
    except Exception as error:  # noqa: BLE001 - one group's failure must not cost the others
        logger.warning("figures %s failed: %s", ", ".join(names), one_line(error, with_type=True))
    return None


def _draw(figures: dict[str, go.Figure], name: str, draw: Callable[[], go.Figure]) -> None:
    try:
        figures[name] = draw()
    except CannotDraw as reason:
        logger.warning("figure %s skipped: %s", name, reason)
    except Exception as error:  # noqa: BLE001 - one figure's failure must not cost the others
        logger.warning("figure %s failed: %s", name, one_line(error, with_type=True))


# -- the search: Optuna's own plots ----------------------------------------------------------


def _optuna_study(parent: Run, storage: str) -> optuna.Study:
    import optuna

    name = parent.data.tags.get(tags.OPTUNA_STUDY)
    if not name:
        raise CannotDraw(f"study run {parent.info.run_id} has no tag xattn.optuna_study")
    return optuna.load_study(study_name=name, storage=storage)


def optuna_figure(name: str, study: optuna.Study, target_name: str) -> go.Figure:
    """One of optuna.visualization's plots, its objective named after the spec's metric."""
    import optuna
    from optuna import visualization

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise CannotDraw(f"Optuna study {study.study_name!r} has no completed trial")
    if name == "param_importances":
        varied = varied_params(completed)
        if len(completed) < 2 or not varied:
            raise CannotDraw(
                f"importances need at least 2 completed trials with different parameters; "
                f"Optuna study {study.study_name!r} has {len(completed)} completed, {len(varied)} parameters varied"
            )
    plot = {
        "optimization_history": visualization.plot_optimization_history,
        "param_importances": visualization.plot_param_importances,
        "parallel_coordinate": visualization.plot_parallel_coordinate,
        "slice": visualization.plot_slice,
    }[name]
    figure = plot(study, target_name=target_name)
    figure.update_layout(template=TEMPLATE)
    return figure


def varied_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The parameters that take more than one value across `trials`: the only ones whose
    importance can be estimated."""
    names = sorted({name for trial in trials for name in trial.params})
    return [name for name in names if len({repr(trial.params.get(name)) for trial in trials}) > 1]


# -- the search: learning curves -------------------------------------------------------------


@dataclass(frozen=True)
class TrialCurve:
    """One search trial's validation metric per epoch, and how the trial ended."""

    name: str
    epochs: list[int]
    values: list[float]
    status: str  # the MLflow run status: FINISHED, FAILED, RUNNING, KILLED
    epochs_run: int

    def stopped_early(self, max_epochs: int | None) -> bool:
        """Finished before the budget's last epoch: stopped by ASHA or by patience (MLflow
        records the two alike: a FINISHED run with fewer epochs)."""
        return self.status == "FINISHED" and max_epochs is not None and self.epochs_run < max_epochs


def epoch_curve(history: Iterable[Metric]) -> tuple[list[int], list[float]]:
    """Epochs and values of a metric history, one value per epoch: a resumed trial logs the
    epochs after its checkpoint again, and the later value is the one its run went on from."""
    latest: dict[int, float] = {}
    for metric in sorted(history, key=lambda m: m.timestamp):  # stable: ties keep logging order
        latest[int(metric.step)] = float(metric.value)
    epochs = sorted(latest)
    return epochs, [latest[epoch] for epoch in epochs]


def trial_curves(client: MlflowClient, parent: Run, metric: str) -> list[TrialCurve]:
    """The per-epoch `metric` of every search trial of the study's own family, by trial."""
    family = parent.data.tags.get(tags.FAMILY)
    curves = []
    for run in child_runs(client, parent):
        run_tags = run.data.tags
        if run_tags.get(tags.ROLE, "search") != "search" or run_tags.get(tags.FAMILY, family) != family or tags.ORPHANED in run_tags:
            continue  # other families are in the comparison figures; orphans ran again as another trial
        epochs, values = epoch_curve(client.get_metric_history(run.info.run_id, metric))
        if epochs:
            epochs_run = int(run_tags.get(tags.EPOCHS_RUN, epochs[-1]))
            curves.append(TrialCurve(run_tags.get(tags.RUN_NAME, run.info.run_id), epochs, values, run.info.status, epochs_run))
    return curves


def _max_epochs(parent: Run) -> int | None:
    value = parent.data.params.get("max_epochs")
    return int(value) if value is not None and value.isdigit() else None


def learning_curves_figure(curves: list[TrialCurve], metric: str, max_epochs: int | None) -> go.Figure:
    """One line per trial; a trial stopped before max_epochs ends in a cross and is dotted,
    a failed one is dashed."""
    import plotly.graph_objects as go

    if not curves:
        raise CannotDraw(f"no search trial logged {metric}")
    figure = go.Figure()
    for curve in curves:
        stopped = curve.stopped_early(max_epochs)
        ending = "stopped early" if stopped else curve.status.lower()
        last = len(curve.epochs) - 1
        figure.add_trace(go.Scatter(
            x=curve.epochs, y=curve.values, name=f"{curve.name} ({ending}, {curve.epochs_run} epochs)",
            mode="lines+markers",
            line={"dash": "dot" if stopped else "dash" if curve.status == "FAILED" else "solid"},
            marker={"size": [10 if k == last and (stopped or curve.status == "FAILED") else 4 for k in range(last + 1)],
                    "symbol": ["x" if k == last and stopped else "circle" for k in range(last + 1)]},
            meta={"trial": curve.name, "status": curve.status, "stopped_early": stopped, "epochs_run": curve.epochs_run},
            hovertemplate=f"{curve.name}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra>{ending}</extra>",
        ))  # fmt: skip
    budget = f"budget {max_epochs} epochs" if max_epochs else "budget unknown"
    n_stopped = sum(curve.stopped_early(max_epochs) for curve in curves)
    figure.update_layout(
        template=TEMPLATE,
        title=f"Learning curves: {metric} per epoch of {len(curves)} trials ({n_stopped} stopped early, {budget})",
        xaxis_title="epoch", yaxis_title=metric, legend_title="trial",
    )  # fmt: skip
    return figure


# -- the comparison of families --------------------------------------------------------------


def has_comparison(client: MlflowClient, parent: Run) -> bool:
    return any(artifact.path == COMPARISON_ARTIFACT for artifact in client.list_artifacts(parent.info.run_id))


def _comparison(client: MlflowClient, parent: Run) -> dict[str, Any]:
    from xattn.tuning.comparison import load_comparison

    return load_comparison(client, parent.data.tags.get(tags.STUDY, ""), parent.info.run_id)


def final_results(client: MlflowClient, parent: Run, metric: str = "test_pearson") -> list[FinalResult]:
    """The finished final (comparison) runs of a study that logged `metric`."""
    return [
        FinalResult(arm_of(run), run.data.tags.get(tags.FOLD), run.data.tags.get(tags.SEED), dict(run.data.metrics))
        for run in child_runs(client, parent)
        if run.data.tags.get(tags.ROLE) == "final" and run.info.status == "FINISHED" and metric in run.data.metrics
    ]  # fmt: skip


def comparison_runs_figure(results: list[FinalResult], families: list[str], metric: str = "test_pearson") -> go.Figure:
    """Each family's test r on every (fold, seed), one line per (fold, seed) across families:
    the pairing the paired differences are computed on."""
    import plotly.graph_objects as go

    if not results:
        raise CannotDraw("the comparison has no finished final run")
    by_key: dict[tuple[str, str], dict[str, float]] = {}
    for result in results:
        by_key.setdefault((str(result.fold), str(result.seed)), {})[result.family] = result.metrics[metric]
    figure = go.Figure()
    for fold, seed in sorted(by_key, key=_numeric_key):
        values = by_key[(fold, seed)]
        shown = [family for family in families if family in values]
        figure.add_trace(go.Scatter(
            x=shown, y=[values[family] for family in shown], name=f"fold {fold}, seed {seed}",
            mode="lines+markers", line={"width": 1}, opacity=0.8,
            hovertemplate=f"%{{x}}<br>fold {fold}, seed {seed}<br>{metric} %{{y:.4f}}<extra></extra>",
        ))  # fmt: skip
    folds = len({fold for fold, _ in by_key})
    seeds = len({seed for _, seed in by_key})
    figure.update_layout(
        template=TEMPLATE,
        title=f"Test r of each family's final runs ({folds} folds x {seeds} seeds, lines join a fold and seed)",
        xaxis={"title": "family", "categoryorder": "array", "categoryarray": families},
        yaxis_title=metric, legend_title="run",
    )  # fmt: skip
    return figure


def _numeric_key(key: tuple[str, str]) -> tuple:
    return tuple((0, int(part), "") if part.lstrip("-").isdigit() else (1, 0, part) for part in key)


def comparison_forest_figure(comparison: dict[str, Any]) -> go.Figure:
    """The paired difference (reference minus each baseline) with its 95% t interval and
    Wilcoxon p, one row per baseline."""
    import plotly.graph_objects as go

    reference = comparison["reference"]
    rows = [entry for entry in comparison["families"] if "vs_reference" in entry]
    if not rows:
        raise CannotDraw("the comparison has no baseline")
    diffs = [entry["vs_reference"] for entry in rows]
    mean = [_finite(d["mean_difference"]) for d in diffs]
    low = [_finite(d["ci95_low"]) for d in diffs]
    high = [_finite(d["ci95_high"]) for d in diffs]
    labels = [f"p = {_p_text(d['p_wilcoxon'])} (n = {d['n_pairs']})" for d in diffs]
    figure = go.Figure(go.Scatter(
        x=mean, y=[entry["family"] for entry in rows], mode="markers+text", text=labels, textposition="top center",
        marker={"size": 10, "symbol": "square"}, name="mean difference",
        error_x={"type": "data", "symmetric": False,
                 "array": [None if h is None or m is None else h - m for m, h in zip(mean, high)],
                 "arrayminus": [None if lo is None or m is None else m - lo for m, lo in zip(mean, low)]},
        hovertemplate="%{y}<br>difference %{x:.4f}<br>%{text}<extra></extra>",
    ))  # fmt: skip
    figure.add_vline(x=0, line={"color": "grey", "dash": "dash"})
    metric = comparison.get("metric", "test_pearson")
    figure.update_layout(
        template=TEMPLATE,
        title=f"Paired difference in {metric}: {reference} minus baseline (95% CI, Wilcoxon signed-rank p)",
        xaxis_title=f"{metric} difference ({reference} - baseline)",
        yaxis={"title": "baseline", "autorange": "reversed"}, showlegend=False,
    )  # fmt: skip
    return figure


def null_distribution_figure(comparison: dict[str, Any]) -> go.Figure:
    """Per family, the mean test r of every null dataset (dots) against the real data's (a
    diamond), with the null p-value: is the family's score more than space?"""
    import plotly.graph_objects as go

    rows = [entry for entry in comparison["families"] if entry.get("nulls", {}).get("r")]
    if not rows:
        raise CannotDraw("no null run has finished")
    figure = go.Figure()
    for entry in rows:
        nulls = entry["nulls"]
        figure.add_trace(go.Box(
            x=nulls["r"], y=[entry["family"]] * len(nulls["r"]), orientation="h", boxpoints="all", jitter=0.4,
            pointpos=0, name=f"{entry['family']}: {nulls['method']} nulls", marker={"color": "grey", "size": 6},
            line={"color": "lightgrey"}, fillcolor="rgba(0,0,0,0)", hovertemplate="null r %{x:.4f}<extra></extra>",
        ))  # fmt: skip
    figure.add_trace(go.Scatter(
        x=[_finite(entry["nulls"]["real_r"]) for entry in rows], y=[entry["family"] for entry in rows],
        mode="markers+text", marker={"size": 14, "symbol": "diamond", "color": "crimson"}, name="real data",
        text=[f"p = {_p_text(entry['nulls']['p'])} (N = {entry['nulls']['n']})" for entry in rows], textposition="top center",
        hovertemplate="%{y}<br>real r %{x:.4f}<br>%{text}<extra></extra>",
    ))  # fmt: skip
    method = rows[0]["nulls"]["method"]
    figure.update_layout(
        template=TEMPLATE, showlegend=False,
        title=f"Real test r against {method} nulls (mean over folds x seeds; p = (1 + #null >= real) / (1 + N))",
        xaxis_title="test Pearson r", yaxis={"title": "family", "autorange": "reversed"},
    )  # fmt: skip
    return figure


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _p_text(value: Any) -> str:
    value = _finite(value)
    return "-" if value is None else f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


# -- the best trial on its held-out regions --------------------------------------------------


def _best_predictions(client: MlflowClient, parent: Run, mirror: str | None) -> tuple[str, pd.DataFrame]:
    from xattn.errors import StudyNotFound
    from xattn.reporting.predictions import run_test_predictions

    try:
        best = best_child(client, parent)
    except StudyNotFound as error:
        raise CannotDraw(str(error)) from None
    if not any(a.path == "checkpoint" for a in client.list_artifacts(best.info.run_id)):
        raise CannotDraw(f"the best trial's run {best.info.run_id} has no checkpoint")
    return best.data.tags.get(tags.RUN_NAME, best.info.run_id), run_test_predictions(client, best.info.run_id, mirror=mirror)


def predicted_vs_observed_figure(predictions: pd.DataFrame, run_name: str) -> go.Figure:
    import plotly.graph_objects as go

    from xattn.training.metrics import regression_metrics

    observed, predicted = predictions["observed"].to_numpy(), predictions["predicted"].to_numpy()
    r = regression_metrics(predicted, observed)["pearson"]
    n_regions = len(set(predictions["i"]))
    figure = go.Figure(go.Scatter(
        x=observed, y=predicted, mode="markers", name="test pair", marker={"size": 4, "opacity": 0.6},
        customdata=np.stack([predictions["label_i"], predictions["label_j"]], axis=1),
        hovertemplate="%{customdata[0]} - %{customdata[1]}<br>observed %{x:.3f}<br>predicted %{y:.3f}<extra></extra>",
    ))  # fmt: skip
    span = [float(min(observed.min(), predicted.min())), float(max(observed.max(), predicted.max()))]
    figure.add_trace(go.Scatter(x=span, y=span, mode="lines", name="predicted = observed", line={"color": "grey", "dash": "dash"}))
    figure.update_layout(
        template=TEMPLATE,
        title=f"{run_name} on its held-out regions: r = {r:.3f} ({len(predictions)} pairs of {n_regions} test regions)",
        xaxis_title="observed connectivity", yaxis_title="predicted connectivity",
    )  # fmt: skip
    return figure


ATLAS_PREFIX = re.compile(r"^\d+Networks_")  # the same on every label: left off the axes
NETWORK_LABEL = re.compile(r"^(?:\d+Networks_)?(?:LH|RH)_([A-Za-z]+)_")  # Schaefer/Yeo: 7Networks_LH_Vis_1


def network_of(label: str) -> str | None:
    """The network part of a Schaefer-like region label ("7Networks_LH_Vis_1" -> "Vis")."""
    match = NETWORK_LABEL.match(label)
    return match.group(1) if match else None


def network_order(labels: list[str]) -> list[int]:
    """Positions of `labels` grouped by network, networks in order of first appearance, each
    network's regions in their given order; the given order when some label has no network."""
    networks = [network_of(label) for label in labels]
    if not labels or any(network is None for network in networks):
        return list(range(len(labels)))
    first = {network: k for k, network in reversed(list(enumerate(networks)))}
    return sorted(range(len(labels)), key=lambda k: (first[networks[k]], k))


def connectivity_matrices_figure(predictions: pd.DataFrame, run_name: str) -> go.Figure:
    """Observed and predicted connectivity among the test regions, side by side on one colour
    scale, regions grouped by network when their labels name one."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    regions = sorted(set(predictions["i"]) | set(predictions["j"]))
    label_of = dict(zip(predictions["i"], predictions["label_i"])) | dict(zip(predictions["j"], predictions["label_j"]))
    order = network_order([label_of[region] for region in regions])
    regions = [regions[k] for k in order]
    labels = [label_of[region] for region in regions]
    position = {region: k for k, region in enumerate(regions)}
    rows, cols = predictions["i"].map(position).to_numpy(), predictions["j"].map(position).to_numpy()
    matrices = {}
    for column in ("observed", "predicted"):
        matrix = np.full((len(regions), len(regions)), np.nan)  # the diagonal is no pair
        matrix[rows, cols] = predictions[column].to_numpy()
        matrices[column] = matrix
    values = np.concatenate([predictions["observed"].to_numpy(), predictions["predicted"].to_numpy()])
    low, high = float(values.min()), float(values.max())
    diverging = low < 0 < high
    figure = make_subplots(rows=1, cols=2, subplot_titles=("observed", "predicted"), horizontal_spacing=0.08)
    for k, (column, matrix) in enumerate(matrices.items(), start=1):
        figure.add_trace(go.Heatmap(
            z=matrix, x=labels, y=labels, coloraxis="coloraxis", name=column,
            hovertemplate=f"%{{y}} - %{{x}}<br>{column} %{{z:.3f}}<extra></extra>",
        ), row=1, col=k)  # fmt: skip
    networks = [network_of(label) for label in labels]
    grouped = all(networks)
    if grouped:
        # Shapes as plain dicts: add_vline/add_hline per subplot take a second for a few lines.
        ends = [k - 0.5 for k in range(1, len(labels)) if networks[k] != networks[k - 1]]
        low_end, high_end = -0.5, len(labels) - 0.5
        shapes = []
        for xref, yref in (("x", "y"), ("x2", "y2")):
            for end in ends:  # one network's block ends here: a line across and a line down
                shapes.append({"type": "line", "xref": xref, "yref": yref, "x0": end, "x1": end, "y0": low_end, "y1": high_end})
                shapes.append({"type": "line", "xref": xref, "yref": yref, "x0": low_end, "x1": high_end, "y0": end, "y1": end})
        figure.update_layout(shapes=[{**shape, "line": {"color": "black", "width": 1}} for shape in shapes])
    bound = max(abs(low), abs(high))
    figure.update_layout(
        template=TEMPLATE,
        title=f"{run_name}: connectivity of the {len(regions)} test regions" + (", grouped by network" if grouped else ""),
        coloraxis={"colorscale": "RdBu_r" if diverging else "Viridis",
                   "cmin": -bound if diverging else low, "cmax": bound if diverging else high},
    )  # fmt: skip
    ticks = {"tickmode": "array", "tickvals": labels, "ticktext": [ATLAS_PREFIX.sub("", label) for label in labels], "tickfont": {"size": 8}}
    figure.update_xaxes(tickangle=90, **ticks)
    figure.update_yaxes(autorange="reversed", **ticks)  # matrix layout: the first region at the top
    # square cells; the right matrix shares the left one's rows, whose labels would overlap it
    figure.update_layout(yaxis={"scaleanchor": "x"}, yaxis2={"scaleanchor": "x2", "showticklabels": False})
    return figure


def error_vs_distance_figure(predictions: pd.DataFrame, run_name: str, bins: int = 10) -> go.Figure:
    """Prediction error (predicted - observed) of each test pair against the distance between
    its regions, with the mean absolute error per distance bin (equal-count bins)."""
    import plotly.graph_objects as go

    distance = predictions["distance"].to_numpy()
    error = (predictions["predicted"] - predictions["observed"]).to_numpy()
    figure = go.Figure(go.Scatter(
        x=distance, y=error, mode="markers", name="test pair", marker={"size": 4, "opacity": 0.5},
        customdata=np.stack([predictions["label_i"], predictions["label_j"]], axis=1),
        hovertemplate="%{customdata[0]} - %{customdata[1]}<br>distance %{x:.1f}<br>error %{y:.3f}<extra></extra>",
    ))  # fmt: skip
    centres, mean_abs = binned_mean(distance, np.abs(error), bins)
    figure.add_trace(go.Scatter(x=centres, y=mean_abs, mode="lines+markers", name="mean |error| per distance bin"))
    figure.add_hline(y=0, line={"color": "grey", "dash": "dash"})
    figure.update_layout(
        template=TEMPLATE,
        title=f"{run_name}: prediction error against distance ({len(predictions)} test pairs)",
        xaxis_title="distance between regions (coordinate units, mm for atlases)",
        yaxis_title="predicted - observed",
    )  # fmt: skip
    return figure


def binned_mean(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean x and mean y in up to `bins` bins of x holding (nearly) equal numbers of points."""
    order = np.argsort(x, kind="stable")
    groups = [group for group in np.array_split(order, min(bins, len(order))) if len(group)]
    return np.array([x[g].mean() for g in groups]), np.array([y[g].mean() for g in groups])


# -- logging to MLflow -----------------------------------------------------------------------


def log_study_figures(
    client: MlflowClient, parent_run_id: str, optuna_storage: str, *, mirror: str | None = None
) -> list[str]:
    """Write figures/<name>.html (interactive, plotly.js inside: opens offline) and
    figures/<name>.png to the parent run; return the names. Never raises: a failure is logged
    and the figures that could be written are kept."""
    started = time.perf_counter()
    browser = PngBrowser()  # starts now: its seconds of start-up overlap drawing the figures
    try:
        figures = study_figures(client, parent_run_id, optuna_storage, mirror=mirror)
        if not figures:
            return []
        drawn = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="xattn-figures-") as folder:
            for name, figure in figures.items():
                figure.write_html(Path(folder) / f"{name}.html", include_plotlyjs=INCLUDE_PLOTLYJS, full_html=True)
            written = time.perf_counter()
            write_pngs(figures, Path(folder), browser)
            rendered = time.perf_counter()
            client.log_artifacts(parent_run_id, folder, FIGURES_DIR)
        logger.debug(
            "figures of run %s: drawn %.1f s, HTML %.1f s, PNG %.1f s (beyond the browser start drawing hid), logged %.1f s",
            parent_run_id, drawn - started, written - drawn, rendered - written, time.perf_counter() - rendered,
        )  # fmt: skip
        return list(figures)
    except Exception as error:  # noqa: BLE001 - figures must never fail a study
        logger.warning("study figures not logged to run %s: %s", parent_run_id, one_line(error, with_type=True))
        return []
    finally:
        browser.close()


class PngBrowser:
    """One headless browser (kaleido's Chromium) for a batch of PNGs, launched in a thread as
    soon as it is made, so that its start-up runs while the caller draws the figures."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[list[dict] | None] = queue.Queue()
        self._outcome: Any = None
        self._thread = threading.Thread(target=self._run, name="xattn-png-browser", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = asyncio.run(self._serve())
        except BaseException as error:  # noqa: BLE001 - handed to the caller of render
            self._outcome = error

    async def _serve(self) -> Any:
        import kaleido

        # MathJax would come from a CDN, which an offline cluster node cannot reach.
        async with kaleido.Kaleido(n=PNG_TABS, mathjax=False, timeout=PNG_TIMEOUT_S) as browser:
            jobs = await asyncio.to_thread(self._jobs.get)
            return () if jobs is None else await browser.write_fig_from_object(jobs)

    def render(self, jobs: list[dict]) -> tuple[Exception, ...]:
        """Write every job ({"fig", "path", "opts"}); the errors of those that failed."""
        self._jobs.put(jobs)
        self._thread.join(PNG_TIMEOUT_S * max(1, len(jobs)))
        if self._thread.is_alive():
            raise TimeoutError(f"the browser did not finish {len(jobs)} PNGs in time")
        if isinstance(self._outcome, Exception):
            raise self._outcome
        if isinstance(self._outcome, BaseException):  # the browser's loop was cancelled: not the caller's interrupt
            raise RuntimeError(f"the browser stopped ({self._outcome!r})")
        return tuple(self._outcome or ())

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(PNG_TIMEOUT_S)


def write_pngs(figures: dict[str, go.Figure], folder: Path, browser: PngBrowser | None = None) -> list[str]:
    """Write <name>.png of every figure into `folder` with one browser (each launch costs
    seconds); return the names written. Logs instead of raising."""
    jobs = [
        {"fig": figure, "path": folder / f"{name}.png", "opts": {"format": "png", **_png_size(name, figure)}}
        for name, figure in figures.items()
    ]
    own = browser is None
    browser = browser or PngBrowser()
    try:
        errors = browser.render(jobs)
    except Exception as error:  # noqa: BLE001 - no browser, a broken browser: HTML still goes
        logger.warning("figures: no PNGs (%s); the HTML figures are logged", one_line(error, with_type=True))
        return []
    finally:
        if own:
            browser.close()
    written = [name for name in figures if (folder / f"{name}.png").is_file()]
    if errors or len(written) < len(figures):
        missing = sorted(set(figures) - set(written))
        logger.warning("figures: PNGs of %s not rendered (%s)", ", ".join(missing), "; ".join(one_line(e, with_type=True) for e in errors))
    return written


def _png_size(name: str, figure: go.Figure) -> dict[str, int]:
    """A figure's own size where it sets one (Optuna's slice plot widens with its parameters)."""
    width, height = PNG_SIZES.get(name, PNG_SIZE)
    return {"width": int(figure.layout.width or width), "height": int(figure.layout.height or height)}

