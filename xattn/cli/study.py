"""`xattn study run | resume | list | show`: run a study to its end, and look at the studies of a store."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from xattn.cli.common import (
    AddressOpt,
    JsonOpt,
    MirrorOpt,
    OptunaOpt,
    TrackingOpt,
    WorkspaceOpt,
    console,
    err_console,
    friendly,
    open_workspace,
    parse_sets,
    password_note,
    store_flags,
    stored_workspace,
    study_app,
)
from xattn.tracking.runs_view import runs_view_url
from xattn.tracking.store import connect, shown


@study_app.command("run")
@friendly
def study_run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Study spec (YAML), e.g. studies/quickstart.yaml."),
    # Read as the spec reads them, so 1e3 works here as it does in YAML.
    trials: Optional[str] = typer.Option(None, "--trials", metavar="N", help="Override budget.trials."),
    max_epochs: Optional[str] = typer.Option(None, "--max-epochs", metavar="N", help="Override budget.max_epochs."),
    name: Optional[str] = typer.Option(None, "--name", help="Override the study name (the MLflow experiment)."),
    sets: list[str] = typer.Option(
        [], "--set", help="Override any spec field: --set data.dataset=hcp-s100 (repeatable)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a hyperparameter study with Ray Tune and Optuna, recorded in MLflow."""
    from xattn.tuning.spec_file import load_spec

    overrides = parse_sets(sets)
    for key, value in (("budget.trials", trials), ("budget.max_epochs", max_epochs), ("name", name)):
        if value is not None:
            overrides[key] = value
    spec = load_spec(spec_path, overrides)
    ws = open_workspace(workspace, tracking_uri, optuna_storage, create=False)  # run_study creates it after preflight
    # Bad data fails here, before Ray and MLflow are imported (seconds on a small machine).
    from xattn.data.datasets import data_mirror
    from xattn.tuning.trial import preflight

    mirror_path = data_mirror(mirror)
    preflight(spec, str(mirror_path) if mirror_path else None)

    from xattn.studies import run_study
    from xattn.tuning.progress import TrialProgress

    console.print(
        f"study [bold]{spec.name}[/]: {spec.model.family} on {spec.data.dataset or 'user files'}, "
        f"{spec.budget.trials} trials x {spec.budget.max_epochs} epochs; tracking {shown(ws.tracking_uri)}",
        highlight=False,
        soft_wrap=True,  # one line in a log too, like the progress lines below it
    )
    for note in spec.notes():
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    progress = TrialProgress(
        console, spec.search_trials, spec.search.metric, spec.search.mode,
        title=f"search {spec.model.family}", max_epochs=spec.budget.max_epochs,
    )  # fmt: skip
    _finish_study(
        lambda: run_study(spec, ws, address=address, mirror=mirror, progress=progress), ws, spec.name, as_json, progress
    )


@study_app.command("resume")
@friendly
def study_resume(
    name: str = typer.Argument(
        ..., help="Study name: its newest run, if unfinished (killed, interrupted, crashed), continues."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Continue an interrupted study: finished trials are kept, running ones restart from their checkpoint."""
    ws = stored_workspace(workspace, tracking_uri, optuna_storage)

    from xattn.studies import resume_study
    from xattn.tuning.progress import TrialProgress

    progress = TrialProgress(console, 0, "val_loss", "min")
    _finish_study(
        lambda: resume_study(name, ws, address=address, mirror=mirror, progress=progress), ws, name, as_json, progress
    )


def _finish_study(start: Callable[[], Any], ws, name: str, as_json: bool, progress=None) -> None:
    """Run a study to its end; Ctrl-C or SIGTERM leave it KILLED and resumable."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # The live display ends before anything below prints, however the study ended.
        with progress if progress is not None else contextlib.nullcontext():
            result = start()
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: the study run is marked KILLED; "
            f"continue it with `xattn study resume {name}{store_flags(ws, optuna=True)}`",
            highlight=False,
        )
        note = password_note(ws)
        if note:
            err_console.print(note, highlight=False)
        raise typer.Exit(130) from None
    _print_result(result, ws)
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
    if result.best is None:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in result.failures.items()) or "no trial reported a result"
        err_console.print(
            f"[red]error:[/] every trial failed ({reasons}): see the FAILED runs' error artifacts in `xattn ui`",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_result(result, ws) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.trial_counts.items()))
    if result.stopped_early:
        counts += f" ({result.stopped_early} of them stopped early by the scheduler)"
    console.print(f"\nstudy {result.name}: {counts} (parent run {result.parent_run_id})", highlight=False)
    if result.best:
        table = Table(title="best trial", show_header=False)
        table.add_row("run id", result.best["run_id"])
        table.add_row("ray trial", str(result.best["trial_id"]))
        for key, value in sorted(result.best["params"].items()):
            table.add_row(key, value)
        for key in ("best_val_loss", "best_val_pearson", "test_pearson", "test_spearman", "test_mse", "test_r2"):
            if key in result.best["metrics"]:
                table.add_row(key, f"{result.best['metrics'][key]:.4f}")
        console.print(table)
    for family, agreement in result.agreement.items():
        if agreement["spearman"] == agreement["spearman"]:  # not NaN: three trials or more
            whose = "every family's" if family == "all" else f"{family}'s"
            within = agreement.get("spearman_within_folds")
            within = f"; within its {agreement['n_folds']} folds {within:+.2f}" if within is not None else ""
            console.print(
                f"search: validation {agreement['metric']} ranks {whose} {agreement['n_trials']} trials by test r "
                f"with Spearman {agreement['spearman']:+.2f} (p = {agreement['p_value']:.2g}){within}",
                highlight=False,
            )
    stores = store_flags(ws)
    console.print("\nlook at it:", highlight=False)
    console.print(f"  xattn ui{stores}", highlight=False)
    ui_base = (
        shown(ws.tracking_uri).rstrip("/")
        if ws.tracking_uri.startswith(("http://", "https://"))
        else "http://127.0.0.1:5000"
    )
    # its trials, best first, with their family, tuned parameters and validation and test metrics
    console.print(f"    then {runs_view_url(ui_base, result.experiment_id, result.runs_view)}", highlight=False)
    console.print(f"  xattn study show {result.name}{stores}", highlight=False)
    console.print(f"  xattn export {result.name}{stores}   (into exports/{result.name})", highlight=False)
    console.print(
        f"  xattn evaluate exports/{result.name}   (after export: rebuilds the best model, checks its test metrics)",
        highlight=False,
    )
    console.print(
        f"  xattn report {result.name}{store_flags(ws, optuna=True)}   (one HTML page: figures, trials, comparison)",
        highlight=False,
    )
    console.print(f"  xattn dashboard{store_flags(ws, tracking=False, optuna=True)}", highlight=False)
    note = password_note(ws)
    if note:
        console.print(f"  ({note})", highlight=False)
    if result.best and result.best.get("model_uri"):
        console.print(
            f"  the best trial is model {result.best['model_uri']} (version {result.best['model_version']})",
            highlight=False,
        )


@study_app.command("list")
@friendly
def study_list(
    workspace: Optional[Path] = WorkspaceOpt, tracking_uri: Optional[str] = TrackingOpt, as_json: bool = JsonOpt
) -> None:
    """List the studies in the tracking store."""
    from xattn.tracking.study_index import list_studies

    rows = list_studies(open_workspace(workspace, tracking_uri, create=False))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("study", "experiment", "runs", "latest run", "status")
    for row in rows:
        table.add_row(
            row["name"],
            row["experiment_id"],
            str(row["study_runs"]),
            str(row["latest_run_id"]),
            str(row["latest_status"]),
        )
    console.print(table)


@study_app.command("show")
@friendly
def study_show(
    name: str = typer.Argument(..., help="Study name."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a study run and its trials: the best one marked, the epochs each ran, and those the scheduler
    stopped early.
    """
    from xattn.tracking.study_index import show_table, study_summary

    summary = study_summary(connect(stored_workspace(workspace, tracking_uri)), name, run_id)
    if as_json:
        print(json.dumps(summary))
        return
    console.print(
        f"study {name}: run {summary['parent_run_id']} ({summary['status']}), {len(summary['trials'])} runs; "
        f"* marks the best trial (by {summary['metric']})",
        highlight=False,
    )
    shown = show_table(summary)
    table = Table(*shown.columns)
    for row in shown.rows:
        table.add_row(*row)
    console.print(table)
    for family, params in shown.fixed.items():
        console.print(f"fixed for {family}: {params}", highlight=False)
