"""One self-contained HTML page per study run: spec, data, trials, figures, comparison, provenance.

plotly.js is inlined once and every figure is a div that draws with it, so the page opens
from a file, offline, with no server. It is written from the stores alone, so it works for a
study that is still running or was interrupted: what cannot be shown yet is left out with a
note, never an exception.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from xattn.errors import StudyNotFound, XattnError, first_line
from xattn.paths import ensure_can_create
from xattn.tracking import tags
from xattn.tracking.runs import (
    best_child,
    child_runs,
    find_parent_run,
    read_artifact_json,
    read_artifact_text,
    trial_row,
)
from xattn.tracking.store import Workspace, connect, shown, store_flags

# Package data (pyproject.toml [tool.setuptools.package-data]): present in a checkout and an installed wheel alike.
TEMPLATE = "report.html.j2"
REPORTS_FOLDER = "reports"

# Shown first among a trial's metrics, in this order; any others follow alphabetically.
KEY_METRICS = (
    "best_val_loss",
    "best_val_pearson",
    "best_epoch",
    "test_pearson",
    "test_spearman",
    "test_mse",
    "test_r2",
)

COUNT_METRICS = ("best_epoch",)  # logged as floats, read as whole numbers


def default_report_path(workspace: Workspace, name: str) -> Path:
    return workspace.root / REPORTS_FOLDER / f"{name}.html"


def write_report(
    name: str,
    workspace: Workspace,
    out: Path | None = None,
    *,
    run_id: str | None = None,
    mirror: str | None = None,
) -> Path:
    """Write the report of study `name` (its newest run, or `run_id`) and return its path.

    `out` is a folder (the page is `<out>/<name>.html`) or a file ending in .html; by default
    `<workspace>/reports/<name>.html`.
    """
    path = _output_path(workspace, name, out)
    client = _client(workspace)
    parent = find_parent_run(client, name, run_id)
    html = render_report(client, parent, workspace, mirror=mirror)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a browser reloading the page of a running study never reads half of it.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)
    return path


def _client(workspace: Workspace) -> MlflowClient:
    missing = workspace.missing_store()
    if missing is not None:
        # Opening a missing SQLite file would create an empty store and then report "no study".
        raise StudyNotFound(f"no tracking store at {missing}: no study to report (is --workspace right?)")
    return connect(workspace)


def _output_path(workspace: Workspace, name: str, out: Path | None) -> Path:
    if out is None:
        return default_report_path(workspace, name)
    out = Path(out).expanduser()
    path = out if out.suffix.lower() in (".html", ".htm") else out / f"{name}.html"
    if path.is_dir():
        raise XattnError(f"--out {out}: {path} is a folder")
    ensure_can_create(path.parent, "--out", "give a folder, or a file name ending in .html")
    return path.resolve()


def render_report(client: MlflowClient, parent: Run, workspace: Workspace, *, mirror: str | None = None) -> str:
    """The page of study run `parent`, as HTML text."""
    import jinja2
    import plotly.offline

    from xattn.provenance import package_versions, xattn_commit
    from xattn.reporting.data_context import data_context
    from xattn.reporting.state import study_state
    from xattn.tracking.provenance import recorded_provenance

    run_tags = parent.data.tags
    name = run_tags.get(tags.STUDY) or client.get_experiment(parent.info.experiment_id).name
    spec_text, spec, spec_note = _stored_spec(client, parent)
    children = child_runs(client, parent)
    search = [run for run in children if run.data.tags.get(tags.ROLE, "search") == "search"]
    counted = [run for run in search if tags.ORPHANED not in run.data.tags]
    finals = [run for run in children if run.data.tags.get(tags.ROLE) == "final"]
    metric = run_tags.get(tags.METRIC, "best_val_loss")
    family = run_tags.get(tags.FAMILY) or (spec.model.family if spec else None)
    best, best_note = _best_run(client, parent, children, family)
    figures, figure_notes = _figures(client, parent, workspace, mirror)
    resume = f"xattn study resume {shlex.quote(name)}{store_flags(workspace, optuna=True)}"
    state = study_state(parent, resume)
    context = {
        "name": name,
        # as a person pastes them from this page, from where the report was written
        "commands": {
            "export": f"xattn export {shlex.quote(name)}{store_flags(workspace)}",
            "report": f"xattn report {shlex.quote(name)}{store_flags(workspace, optuna=True)}",
        },
        "description": spec.description if spec else "",
        "run_id": parent.info.run_id,
        "run_name": run_tags.get(tags.RUN_NAME, ""),
        "experiment_id": parent.info.experiment_id,
        "optuna_study": run_tags.get(tags.OPTUNA_STUDY),
        "state": state,
        "family": family,
        "metric": metric,
        "mode": run_tags.get(tags.MODE, "min"),
        "counts": _counts([run for run in counted if run.data.tags.get(tags.FAMILY, family) == family]),
        "budget": spec.search_trials if spec else None,
        "agreement": _agreement(parent),
        "best": _best_context(best, metric) if best else None,
        "best_note": best_note,
        "best_is_final": tags.BEST_RUN_ID in run_tags,
        "trials": _trial_rows(client, counted, spec, family, metric),
        "has_inner_folds": any(tags.INNER_FOLD in run.data.tags for run in counted),
        "orphaned": len(search) - len(counted),
        "final_runs": len(finals),
        "figures": figures,
        "figure_notes": figure_notes,
        "comparison": _comparison(client, parent),
        "spec_text": spec_text,
        "spec_note": spec_note,
        "data": data_context(spec) if spec else None,
        "checkpoint": _checkpoint_context(client, best) if best else None,
        "provenance": {
            "recorded": recorded_provenance(run_tags),  # what the study ran with
            "xattn_commit": str(xattn_commit()),  # what writes this page
            "versions": package_versions(),
            "driver": run_tags.get(tags.DRIVER),
            "resumed": run_tags.get(tags.RESUMED, "0"),
            "started": _time(parent.info.start_time),
            "ended": _time(parent.info.end_time) if parent.info.status != "RUNNING" else None,
            "duration": _duration(
                parent.info.start_time, parent.info.end_time if parent.info.status != "RUNNING" else None
            ),
            "tracking_uri": shown(workspace.tracking_uri),
            "optuna_storage": shown(workspace.optuna_storage),
            "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "written_on": socket.gethostname(),
        },
        "plotly_js": plotly.offline.get_plotlyjs() if figures else "",
    }
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("xattn.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # a text file ends with a newline
    )
    environment.filters["number"] = format_number
    return environment.get_template(TEMPLATE).render(**context)


# ---------------------------------------------------------------- what the stores hold


def _stored_spec(client: MlflowClient, parent: Run):
    """study.yaml as logged (text), parsed when this xattn can still read it, and a note if not."""
    from xattn.tuning.spec import spec_from_yaml

    try:
        text = read_artifact_text(client, parent.info.run_id, "study.yaml")
    except (MlflowException, OSError) as error:
        return None, None, f"the study run has no readable study.yaml ({first_line(error)})"
    try:
        return text, spec_from_yaml(text), None
    except Exception as error:  # noqa: BLE001 - a spec of an older or newer xattn: show its text anyway
        return text, None, f"this xattn cannot parse it ({first_line(error)}): data details are left out"


def _best_run(
    client: MlflowClient, parent: Run, children: list[Run], family: str | None
) -> tuple[Run | None, str | None]:
    """The recorded best trial of a completed study, or the best finished one so far."""
    recorded = parent.data.tags.get(tags.BEST_RUN_ID)
    if recorded:
        for run in children:
            if run.info.run_id == recorded:
                return run, None
    try:
        return best_child(client, parent, family=family), None
    except StudyNotFound:
        return None, "no trial has finished yet"


def _counts(runs: list[Run]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.info.status.lower()] = counts.get(run.info.status.lower(), 0) + 1
    return dict(sorted(counts.items()))


def _agreement(parent: Run) -> dict[str, float] | None:
    metrics = parent.data.metrics
    if "search.val_test_spearman" not in metrics:
        return None
    return {
        "spearman": metrics["search.val_test_spearman"],
        "p_value": metrics.get("search.val_test_p_value", math.nan),
        "n_trials": int(metrics.get("search.val_test_n_trials", 0)),
    }


def _searched(spec, family: str | None) -> list[str] | None:
    """The names of the hyperparameters a family's search varies; None when the spec is unknown."""
    if spec is None or family is None:
        return None
    try:
        return list(spec.for_family(family).searched)
    except Exception:  # noqa: BLE001 - a family this xattn no longer knows: show every param
        return None


def _trial_rows(
    client: MlflowClient, runs: list[Run], spec, own_family: str | None, metric: str
) -> list[dict[str, Any]]:
    searched: dict[str | None, list[str] | None] = {}
    rows = []
    for run in runs:
        row = trial_row(run)
        family = row["family"] if row["family"] is not None else own_family
        if family not in searched:
            searched[family] = _searched(spec, family)
        params = row["params"]
        names = searched[family] if searched[family] is not None else sorted(params)
        number = row["optuna_trial_number"]
        rows.append(
            {
                "run_id": row["run_id"],
                "run_name": row["run_name"] if row["run_name"] is not None else "",
                "family": family,
                "trial": int(number) if number is not None and number.isdigit() else None,
                "inner_fold": row["inner_fold"],
                "params": [(key, format_value(params[key])) for key in names if key in params],
                "metric": row["metrics"].get(metric),
                "test_pearson": row["metrics"].get("test_pearson"),
                "epochs": row["epochs"] if row["epochs"] is not None else _epochs_so_far(client, run),
                "status": row["status"],
                "failure": row["failure"],
            }
        )
    own_first = {own_family: 0}
    rows.sort(
        key=lambda r: (
            own_first.get(r["family"], 1),
            r["family"] or "",
            r["trial"] if r["trial"] is not None else math.inf,
            r["inner_fold"] or "",
        )
    )
    return rows


def _epochs_so_far(client: MlflowClient, run: Run) -> int | None:
    """The last logged step of a trial still running (one that ended is tagged with its epochs)."""
    if run.info.status != "RUNNING":
        return None
    try:
        history = client.get_metric_history(run.info.run_id, "val_loss")
    except MlflowException:
        return None
    return max((point.step for point in history), default=None)


def _best_context(run: Run, metric: str) -> dict[str, Any]:
    metrics = run.data.metrics
    ordered = [key for key in KEY_METRICS if key in metrics] + sorted(key for key in metrics if key not in KEY_METRICS)
    return {
        "run_id": run.info.run_id,
        "run_name": run.data.tags.get(tags.RUN_NAME, ""),
        "trial": run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
        "status": run.info.status,
        "params": [(key, format_value(value)) for key, value in sorted(run.data.params.items())],
        "metrics": [(key, int(metrics[key]) if key in COUNT_METRICS else metrics[key]) for key in ordered],
        "selection": metrics.get(metric),
        "test_pearson": metrics.get("test_pearson"),
    }


def _comparison(client: MlflowClient, parent: Run) -> dict[str, Any] | None:
    from xattn.reporting.study_data import COMPARISON_ARTIFACT, has_comparison

    try:
        if not has_comparison(client, parent):
            return None
        return read_artifact_json(client, parent.info.run_id, COMPARISON_ARTIFACT)
    except (MlflowException, OSError, ValueError):
        return None


def _figures(
    client: MlflowClient, parent: Run, workspace: Workspace, mirror: str | None
) -> tuple[list[dict[str, str]], list[str]]:
    """Each figure as an HTML div for the inlined plotly.js; notes for what could not be drawn."""
    from xattn.data import data_mirror
    from xattn.reporting.render import figure_div

    try:
        from xattn.reporting.figures import figure_title, study_figures
    except ImportError as error:
        return [], [f"no figures: xattn.reporting.figures cannot be imported ({first_line(error)})"]
    mirror_path = data_mirror(mirror)
    # study_figures says why it leaves a figure out only in its log: those lines become notes.
    skipped = _LogNotes()
    figures_logger = logging.getLogger(study_figures.__module__)
    figures_logger.addHandler(skipped)
    try:
        drawn = study_figures(
            client, parent.info.run_id, workspace.optuna_storage, mirror=str(mirror_path) if mirror_path else None
        )
    except Exception as error:  # noqa: BLE001 - a page without figures beats no page
        return [], [f"no figures could be drawn ({type(error).__name__}: {first_line(error)})"]
    finally:
        figures_logger.removeHandler(skipped)
    figures, notes = [], list(skipped.notes)
    for name, figure in drawn.items():
        try:
            div = figure_div(name, figure)
        except Exception as error:  # noqa: BLE001 - one bad figure must not cost the others
            notes.append(f"{name}: not drawn ({type(error).__name__}: {first_line(error)})")
            continue
        figures.append({"name": name, "title": figure_title(name), "html": div})
    return figures, notes


def _checkpoint_context(client: MlflowClient, run: Run) -> dict[str, Any] | None:
    """What the best trial's checkpoint pins: its genes, its regions per split, its weights' hash."""
    try:
        config = read_artifact_json(client, run.info.run_id, "checkpoint/config.json")
    except (MlflowException, OSError, ValueError):
        return None  # a trial still running has logged no checkpoint yet
    split = config.get("split") or {}
    return {
        "genes": list(config.get("genes") or []),
        "regions": {part: len(split[part]) for part in ("train", "val", "test") if part in split},
        "weights_sha256": (config.get("checkpoint") or {}).get("files", {}).get("weights.safetensors"),
        "epoch": config.get("epoch"),
    }


class _LogNotes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage())


# ---------------------------------------------------------------- formatting


def format_value(text: str) -> str:
    """MLflow params are strings: long floats with 4 significant digits, the rest as logged."""
    if not any(c in text for c in ".e") or text.startswith(("[", "{", "(")):
        return text
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


def format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.2g}"
    return str(value)


def _time(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: int | None, end: int | None) -> str | None:
    if not start:
        return None
    seconds = int(((end or datetime.now(timezone.utc).timestamp() * 1000) - start) / 1000)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60} min {rest % 60} s" + ("" if end else " so far")
