"""Plot builders: one plotly figure from plain data (lists, dicts, data frames, an Optuna study).

Nothing here reads MLflow: study_data.py reads a study back into the data these take, and
figures.py puts the two together, so every figure can be tested from a hand-made input.
A builder that is given too little to draw raises CannotDraw, saying why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import plotly.graph_objects as go

    from xattn.tuning.comparison import FinalResult

TEMPLATE = "plotly_white"
SLICE_COLUMNS = 3  # parameters side by side in the slice plot: each keeps ~400 px of a 1280 px window
SLICE_ROW_HEIGHT = 340  # px


class CannotDraw(Exception):
    """A figure does not apply to this study (its message says why)."""


# -- the search: Optuna's own plots ----------------------------------------------------------


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
    if name == "slice":
        figure = in_rows(figure, SLICE_COLUMNS, SLICE_ROW_HEIGHT)
    figure.update_layout(template=TEMPLATE)
    return figure


def in_rows(figure: go.Figure, columns: int, row_height: int) -> go.Figure:
    """A one-row figure of subplots (Optuna's slice plot: one per parameter, 300 px each, 2100 px
    wide for seven) laid out `columns` to a row, its width left to the page.

    The grid numbers its subplots row by row as the single row did, so every trace keeps its
    axes, and each x axis keeps its title, type (log, category) and category order."""
    from plotly.subplots import make_subplots

    x_axes = sorted((key for key in figure.layout.to_plotly_json() if key.startswith("xaxis")), key=_axis_number)
    if len(x_axes) < 2:
        figure.update_layout(width=None)
        return figure
    count = len(x_axes)
    rows = math.ceil(count / columns)
    width = min(count, columns)
    cells = [[{} if row * width + col < count else None for col in range(width)] for row in range(rows)]
    grid = make_subplots(
        rows=rows, cols=width, specs=cells, shared_yaxes="all", horizontal_spacing=0.06, vertical_spacing=0.5 / rows
    )
    grid.add_traces(figure.data)
    kept = ("title", "type", "categoryorder", "categoryarray")
    for key in x_axes:
        grid.layout[key].update(
            {name: figure.layout[key][name] for name in kept if figure.layout[key][name] is not None}
        )
    y_title = figure.layout.yaxis.title.text
    for row in range(1, rows + 1):
        grid.update_yaxes(title_text=y_title, row=row, col=1)
    grid.update_layout(title=figure.layout.title, height=rows * row_height + 100, width=None)
    return grid


def _axis_number(key: str) -> int:
    return int(key.removeprefix("xaxis") or 1)


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
            meta={"trial": curve.name, "status": curve.status, "stopped_early": stopped,
                  "epochs_run": curve.epochs_run},
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
    """The paired difference (reference minus each baseline) with its corrected 95% interval over
    folds and its Holm-adjusted p, one row per baseline."""
    import plotly.graph_objects as go

    reference = comparison["reference"]
    rows = [entry for entry in comparison["families"] if "vs_reference" in entry]
    if not rows:
        raise CannotDraw("the comparison has no baseline")
    diffs = [entry["vs_reference"] for entry in rows]
    mean = [_finite(d["mean_difference"]) for d in diffs]
    low = [_finite(d["ci95_low"]) for d in diffs]
    high = [_finite(d["ci95_high"]) for d in diffs]
    labels = [
        f"p = {_p_text(d.get('p_value'))}, Holm {_p_text(d.get('p_holm'))} (K = {d.get('n_folds', '?')} folds)"
        for d in diffs
    ]
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
        title=f"Paired difference in {metric}: {reference} minus baseline (95% CI over folds)",
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
        text=[f"p = {_p_text(entry['nulls']['p'])} (N = {entry['nulls']['n']})" for entry in rows],
        textposition="top center",
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
# `predictions` has the columns of reporting.predictions.PREDICTION_COLUMNS: one row per test pair.


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
    figure.add_trace(
        go.Scatter(x=span, y=span, mode="lines", name="predicted = observed", line={"color": "grey", "dash": "dash"})
    )
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
                shapes.append(
                    {"type": "line", "xref": xref, "yref": yref, "x0": end, "x1": end, "y0": low_end, "y1": high_end}
                )
                shapes.append(
                    {"type": "line", "xref": xref, "yref": yref, "x0": low_end, "x1": high_end, "y0": end, "y1": end}
                )
        figure.update_layout(shapes=[{**shape, "line": {"color": "black", "width": 1}} for shape in shapes])
    bound = max(abs(low), abs(high))
    title = f"{run_name}: connectivity of the {len(regions)} test regions" + (", grouped by network" if grouped else "")
    figure.update_layout(
        template=TEMPLATE,
        title=title,
        coloraxis={"colorscale": "RdBu_r" if diverging else "Viridis",
                   "cmin": -bound if diverging else low, "cmax": bound if diverging else high},
    )  # fmt: skip
    ticks = {
        "tickmode": "array",
        "tickvals": labels,
        "ticktext": [ATLAS_PREFIX.sub("", label) for label in labels],
        "tickfont": {"size": 8},
    }
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
