"""`xattn study run | resume | list | show`: run a study to its end, and look at the studies of a store."""

from __future__ import annotations

import contextlib
import json
import shlex
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
    compact_table,
    console,
    err_console,
    friendly,
    open_workspace,
    parse_sets,
    password_note,
    print_wide,
    prose,
    store_flags,
    stored_workspace,
    study_app,
)
from xattn.tracking.runs_view import runs_view_url
from xattn.tracking.store import connect, shown


@study_app.command("run")
@friendly
def study_run(
    spec_path: Path = typer.Argument(
        ..., metavar="SPEC", help="Study spec: a YAML file, or a bundled spec's name (quickstart, s100-fc, ...)."
    ),
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
        f"{spec.budget.trials} trials of up to {spec.budget.max_epochs} epochs, recorded in {shown(ws.tracking_uri)}",
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
            f"continue it with `xattn study resume {shlex.quote(name)}{store_flags(ws, optuna=True)}`",
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
            f"[red]error:[/] every trial failed ({reasons}): see the FAILED runs' error artifacts in "
            f"`xattn ui{store_flags(ws)}`",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_result(result, ws) -> None:
    from xattn.export import default_export_folder

    # finished first: the early stops are some of them
    states = sorted(result.trial_counts.items(), key=lambda item: (item[0] != "finished", item[0]))
    counts = [f"{n} {state}" for state, n in states]
    if result.stopped_early and "finished" in result.trial_counts:
        counts[0] += f" ({result.stopped_early} of them stopped early by the scheduler)"
    if counts:
        n, rest = counts[0].split(" ", 1)
        counts[0] = f"{n} {'trial' if n == '1' else 'trials'} {rest}"
    console.print()
    prose(f"study {result.name} (study run {result.parent_run_id}): {', '.join(counts) or 'no trials'}")
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
            within = f"; within its {agreement['n_folds']} folds, {within:+.2f}" if within is not None else ""
            prose(
                f"search: ranking {whose} {agreement['n_trials']} trials by validation {agreement['metric']} "
                f"agrees with ranking them by test r at Spearman {agreement['spearman']:+.2f} "
                f"(p = {agreement['p_value']:.2g}){within}"
            )
    console.print("\nlook at it:", highlight=False)
    ui_base = (
        shown(ws.tracking_uri).rstrip("/")
        if ws.tracking_uri.startswith(("http://", "https://"))
        else "http://127.0.0.1:5000"
    )
    name, stores = shlex.quote(result.name), store_flags(ws)
    exported = shlex.quote(str(default_export_folder(result.name)))
    # Each line pastes into a shell as it is: what it does follows as a shell comment.
    suggestions = [
        (f"xattn study show {name}{stores}", "its trials, the best one starred"),
        (
            f"xattn ui{stores}",
            f"then {runs_view_url(ui_base, result.experiment_id, result.runs_view)}",
        ),
        (f"xattn export {name}{stores}", f"the best trial's weights, config and metrics into {exported}"),
        (f"xattn evaluate {exported}", "after export: rebuilds the best model, checks its test metrics"),
        (f"xattn report {name}{store_flags(ws, optuna=True)}", "one HTML page: figures, trials, comparison"),
        (f"xattn dashboard{store_flags(ws, tracking=False, optuna=True)}", "Optuna's view of the search"),
    ]
    # comments in a column where the commands are short; a long --workspace would push them far right
    width = max(len(command) for command, _ in suggestions)
    width = width if width <= 48 else 0
    for command, what in suggestions:
        console.print(f"  {command:<{width}}  # {what}", highlight=False)
    note = password_note(ws)
    if note:
        prose(f"  ({note})")
    if result.best and result.best.get("model_uri"):
        prose(
            f"the best trial is registered as model {result.best['model_uri']} (version {result.best['model_version']})"
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
    cells = [
        (row["name"], row["experiment_id"], str(row["study_runs"]), row["latest_run_id"] or "-",
         (row["latest_status"] or "-").lower())
        for row in rows
    ]  # fmt: skip
    # A run id is copied whole (--run-id); a long study name wraps instead.
    console.print(compact_table(("study", "experiment", "runs", "newest run", "status"), cells, whole=(3,)))


@study_app.command("show")
@friendly
def study_show(
    name: str = typer.Argument(..., help="Study name."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    wide: bool = typer.Option(
        False, "--wide", help="One table, full run names and values, a row a line (for a wide terminal or `less -S`)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a study run and its trials: the best one marked, the epochs each ran, and those the scheduler
    stopped early.
    """
    from xattn.tracking.study_index import compact_tables, show_table, study_summary

    summary = study_summary(connect(stored_workspace(workspace, tracking_uri)), name, run_id)
    if as_json:
        print(json.dumps(summary))
        return
    prose(
        f"study {name}: run {summary['parent_run_id']} ({summary['status']}), {len(summary['trials'])} runs; "
        f"* marks the best trial (by {summary['metric']})"
        + ("" if wide else "; run names are shortened, --wide shows them whole")
    )
    if wide:
        shown = show_table(summary, full_values=True)
        table = Table(*shown.columns)
        for column in table.columns:
            column.no_wrap = True
        for row in shown.rows:
            table.add_row(*row)
        print_wide(table)  # as wide as its longest row, never cut
        for family, params in shown.fixed.items():
            console.print(f"fixed for {family}: {params}", highlight=False)
        return
    for family in compact_tables(summary):
        console.print()
        prose(f"[bold]{family.family}[/]" + (f", every run on {family.shared}" if family.shared else ""))
        console.print(compact_table(family.columns, family.rows, whole=(len(family.columns) - 1,)))
        if family.fixed:
            prose(f"the same in every {family.family} run: {family.fixed}")
