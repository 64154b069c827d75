"""`xattn compare | compare-local | report`: what a study found, as a table, a local second check, or one HTML page."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from xattn.cli.common import (
    MirrorOpt,
    OptunaOpt,
    TrackingOpt,
    WorkspaceOpt,
    app,
    compact_table,
    console,
    friendly,
    parse_sets,
    print_wide,
    prose,
    stored_workspace,
)
from xattn.errors import XattnError
from xattn.tracking.store import connect


@app.command("compare")
@friendly
def compare(
    study: str = typer.Argument(..., help="Study name (run with compare_with)."),
    output: str = typer.Option("table", "--format", help="table | csv | json | markdown"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    wide: bool = typer.Option(
        False, "--wide", help="The table with a family a row, a line each (for a wide terminal or `less -S`)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Print the comparison of model families: mean and sd over folds x seeds, paired differences."""
    if output not in ("table", "csv", "json", "markdown"):
        raise XattnError(f"--format {output!r}: choose table, csv, json or markdown")
    ws = stored_workspace(workspace, tracking_uri)

    from xattn.tuning.comparison import comparison_frame, comparison_markdown, load_comparison

    comparison = load_comparison(connect(ws), study, run_id)
    if output == "json":
        print(json.dumps(comparison))
        return
    if output == "csv":
        print(comparison_frame(comparison).to_csv(index=False), end="")
        return
    if output == "markdown":
        print(comparison_markdown(comparison))
        return
    _print_comparison(study, comparison, wide=wide)


def _print_comparison(study: str, comparison: dict, *, wide: bool = False) -> None:
    from xattn.tuning.comparison import format_cell

    nulls = next((entry["nulls"] for entry in comparison["families"] if "nulls" in entry), None)
    null_columns = (f"{nulls['method']} nulls: r", "p null") if nulls else ()
    columns = (
        "family",
        "n",
        "test r",
        "test MSE",
        "test R2",
        "diff r [95% CI]",
        "p (Holm)",
        "MDD 80%",
        "search: rank r(val, test)",
        *null_columns,
    )
    rows = []
    for entry in comparison["families"]:
        diff = entry.get("vs_reference")
        null = entry.get("nulls")
        null_cells = (
            (f"{format_cell(null['mean'])} ± {format_cell(null['sd'])} (N={null['n']})", format_cell(null["p"]))
            if null
            else ("-", "-")
        )
        rows.append((
            entry["family"],
            str(entry["n_runs"]),
            f"{format_cell(entry['test_pearson_mean'])} ± {format_cell(entry['test_pearson_sd'])}",
            format_cell(entry["test_mse_mean"]),
            format_cell(entry["test_r2_mean"]),
            f"{format_cell(diff['mean_difference'])} "
            f"[{format_cell(diff['ci95_low'])}, {format_cell(diff['ci95_high'])}]"
            if diff
            else "-",
            f"{format_cell(diff.get('p_value', math.nan))} ({format_cell(diff.get('p_holm', math.nan))})"
            if diff
            else "-",
            format_cell(diff.get("mdd80", math.nan)) if diff else "-",
            format_cell(entry.get("search_val_test_spearman", math.nan)),
            *(null_cells if nulls else ()),
        ))  # fmt: skip
    prose(
        f"{study}: diff = {comparison['reference']} - baseline, paired on fold and seed; "
        "K folds are the evidence (corrected t, Holm over baselines)"
    )
    if wide:
        table = Table()
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        print_wide(table)  # a family a row
    else:
        # A family a column: ten measures side by side do not fit 80 columns, three families do.
        measures = [(column, *(row[index] for row in rows)) for index, column in enumerate(columns) if index]
        console.print(compact_table(("", *(row[0] for row in rows)), measures))
    agreement = comparison.get("search_agreement")
    if agreement and agreement["spearman"] == agreement["spearman"]:
        prose(
            f"search, every family: validation {agreement['metric']} ranks the {agreement['n_trials']} trials "
            f"by test r with Spearman {agreement['spearman']:+.2f} (p = {agreement['p_value']:.2g})"
        )


@app.command("compare-local")
@friendly
def compare_local(
    spec_path: Path = typer.Argument(
        ...,
        metavar="SPEC",
        help="Study spec with compare_with: a YAML file, or a bundled spec's name (e.g. s100-compare).",
    ),
    max_epochs: Optional[str] = typer.Option(None, "--max-epochs", metavar="N", help="Override budget.max_epochs."),
    sets: list[str] = typer.Option([], "--set", help="Override any spec field: --set comparison.seeds=2 (repeatable)."),
    device: Optional[str] = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when the spec asks for GPUs and one is there)."
    ),
    mirror: Optional[Path] = MirrorOpt,
    json_out: Optional[Path] = typer.Option(
        None, "--json-out", help="Also write the comparison and every run to this JSON file."
    ),
) -> None:
    """Train every compared family at its fixed settings on K folds x S seeds here, without Ray or MLflow.

    The same grid `xattn study run` retrains with `comparison.tune: false`, one run after
    another in this process; nothing is logged. For a GPU node without the platform, or a
    second check of a logged comparison.
    """
    from xattn.tuning.comparison import comparison_markdown
    from xattn.tuning.local_comparison import run_local_comparison
    from xattn.tuning.spec_file import load_spec

    overrides = parse_sets(sets)
    if max_epochs is not None:
        overrides["budget.max_epochs"] = max_epochs
    spec = load_spec(spec_path, overrides)

    def report(run, done: int, total: int) -> None:
        result = run.result
        console.print(
            f"[{done}/{total}] {result.family} fold {result.fold} seed {result.seed}: "
            f"test r {result.metrics.get('test_pearson', float('nan')):.3f} ({run.epochs} epochs, {run.seconds:.0f} s)",
            highlight=False,
            soft_wrap=True,
        )

    comparison, _ = run_local_comparison(
        spec, mirror=mirror, device=device, on_run=report, json_out=json_out, source=str(spec_path)
    )
    print(comparison_markdown(comparison))


@app.command("report")
@friendly
def report(
    study: str = typer.Argument(..., help="Study name."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for NAME.html, or a file ending in .html (default: WORKSPACE/reports/NAME.html)."
    ),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    mirror: Optional[Path] = MirrorOpt,
) -> None:
    """Write one self-contained HTML page of a study (finished, running or interrupted) that opens offline."""
    ws = stored_workspace(workspace, tracking_uri, optuna_storage)

    from xattn.reporting.report import write_report

    path = write_report(study, ws, out, run_id=run_id, mirror=str(mirror) if mirror else None)
    print(path)
