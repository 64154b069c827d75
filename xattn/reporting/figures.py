"""The figures of a study, as plotly figures, and their logging to the study's MLflow run.

`study_figures` draws every figure that applies to a study run, from what the run recorded:
the Optuna study (search history, importances, parallel coordinates, slices), the trials'
per-epoch validation metric, the comparison of families when the spec had `compare_with`,
and the best trial's predictions on its held-out regions. `log_study_figures` writes them to
the parent run: `figures/interactive.html` holds them all (works offline, plotly.js inside
once) and `figures/<name>.png` is each for a quick look.

The data comes from study_data.py, each figure from plots.py, the files from render.py.
A figure that cannot be drawn (too few trials, no checkpoint, no browser for PNGs) is left
out with a log line saying why: figures never fail a study.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xattn.errors import one_line
from xattn.reporting import plots, study_data
from xattn.reporting.plots import CannotDraw
from xattn.reporting.render import PngBrowser, write_figures_page, write_pngs
from xattn.tracking import tags

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from mlflow.tracking import MlflowClient

    from xattn.tracking.runs import CheckpointCache

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"
FIGURES_PAGE = "interactive.html"  # every figure, interactive, in one page beside their PNGs
OPTUNA_FIGURES = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
COMPARISON_FIGURES = ("comparison_runs", "comparison_forest", "null_distribution")
NULL_FIGURES = ("null_distribution",)  # only for a comparison with `nulls`
BEST_MODEL_FIGURES = ("predicted_vs_observed", "connectivity_matrices", "error_vs_distance")
# Display order: how the search went, then how families compare, then the chosen model.
FIGURE_NAMES = (
    "optimization_history", "learning_curves", "param_importances", "parallel_coordinate", "slice",
    *COMPARISON_FIGURES, *BEST_MODEL_FIGURES,
)  # fmt: skip
FIGURE_TITLES = {
    "optimization_history": "Optimisation history",
    "param_importances": "Hyperparameter importances",
    "parallel_coordinate": "Parallel coordinates",
    "slice": "Slices",
    "learning_curves": "Learning curves",
    "comparison_runs": "Comparison: every final run",
    "comparison_forest": "Comparison: paired differences",
    "null_distribution": "Comparison: real data against spatial nulls",
    "predicted_vs_observed": "Best trial: predicted vs observed",
    "connectivity_matrices": "Best trial: connectivity matrices",
    "error_vs_distance": "Best trial: error vs distance",
}


def figure_title(name: str) -> str:
    return FIGURE_TITLES.get(name, name.replace("_", " ").capitalize())


def study_figures(
    client: MlflowClient,
    parent_run_id: str,
    optuna_storage: str,
    *,
    mirror: str | None = None,
    checkpoints: CheckpointCache | None = None,
) -> dict[str, go.Figure]:
    """Every figure that applies to this study, by name, in display order (FIGURE_NAMES)."""
    parent = client.get_run(parent_run_id)
    metric = parent.data.tags.get(tags.METRIC, "best_val_loss")
    figures: dict[str, go.Figure] = {}

    study = _load(OPTUNA_FIGURES, lambda: study_data.optuna_study(parent, optuna_storage))
    if study is not None:
        for name in OPTUNA_FIGURES:
            _draw(figures, name, lambda name=name: plots.optuna_figure(name, study, metric))

    per_epoch = metric.removeprefix("best_")
    _draw(figures, "learning_curves", lambda: plots.learning_curves_figure(
        study_data.trial_curves(client, parent, per_epoch), per_epoch, study_data.max_epochs(parent)
    ))  # fmt: skip

    # Only a spec with compare_with has a comparison: its absence is not worth a log line.
    if study_data.has_comparison(client, parent):
        comparison = _load(COMPARISON_FIGURES, lambda: study_data.read_comparison(client, parent))
    else:
        comparison = None
    if comparison is not None:
        finals = study_data.final_results(client, parent)
        _draw(figures, "comparison_runs", lambda: plots.comparison_runs_figure(
            finals, [entry["family"] for entry in comparison["families"]]
        ))  # fmt: skip
        _draw(figures, "comparison_forest", lambda: plots.comparison_forest_figure(comparison))
        if any("nulls" in entry for entry in comparison["families"]):
            _draw(figures, "null_distribution", lambda: plots.null_distribution_figure(comparison))

    best = _load(BEST_MODEL_FIGURES, lambda: study_data.best_predictions(client, parent, mirror, checkpoints))
    if best is not None:
        run_name, predictions = best
        _draw(figures, "predicted_vs_observed", lambda: plots.predicted_vs_observed_figure(predictions, run_name))
        _draw(figures, "connectivity_matrices", lambda: plots.connectivity_matrices_figure(predictions, run_name))
        _draw(figures, "error_vs_distance", lambda: plots.error_vs_distance_figure(predictions, run_name))
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


def log_study_figures(
    client: MlflowClient,
    parent_run_id: str,
    optuna_storage: str,
    *,
    mirror: str | None = None,
    checkpoints: CheckpointCache | None = None,
) -> list[str]:
    """Write figures/interactive.html (every figure, plotly.js inside once: opens offline) and
    figures/<name>.png to the parent run; return the names. Never raises: a failure is logged
    and the figures that could be written are kept. `checkpoints` (open) saves downloading a
    checkpoint the caller already has."""
    started = time.perf_counter()
    browser = PngBrowser()  # starts now: its seconds of start-up overlap drawing the figures
    try:
        figures = study_figures(client, parent_run_id, optuna_storage, mirror=mirror, checkpoints=checkpoints)
        if not figures:
            return []
        drawn = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="xattn-figures-") as folder:
            study = client.get_run(parent_run_id).data.tags.get(tags.STUDY, "study")
            write_figures_page(
                figures,
                Path(folder) / FIGURES_PAGE,
                title=f"{study}: figures of study run {parent_run_id}",
                titles={name: figure_title(name) for name in figures},
            )
            written = time.perf_counter()
            write_pngs(figures, Path(folder), browser)
            rendered = time.perf_counter()
            client.log_artifacts(parent_run_id, folder, FIGURES_DIR)
        logger.debug(
            "figures of run %s: drawn %.1f s, HTML %.1f s, PNG %.1f s (beyond the browser start drawing hid), "
            "logged %.1f s",
            parent_run_id, drawn - started, written - drawn, rendered - written, time.perf_counter() - rendered,
        )  # fmt: skip
        return list(figures)
    except Exception as error:  # noqa: BLE001 - figures must never fail a study
        logger.warning("study figures not logged to run %s: %s", parent_run_id, one_line(error, with_type=True))
        return []
    finally:
        browser.close()
