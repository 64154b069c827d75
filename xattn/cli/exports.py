"""`xattn export | evaluate | attention`: the best trial out of the store, rebuilt and checked, and what its
attention learned.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from xattn.cli.common import (
    JsonOpt,
    MirrorOpt,
    TrackingOpt,
    WorkspaceOpt,
    app,
    console,
    err_console,
    friendly,
    stored_workspace,
)


@app.command("export")
@friendly
def export(
    study: str = typer.Argument(
        ..., help="Study name, or a registered model: models:/NAME@best or models:/NAME/VERSION."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder to write the export to (default: exports/STUDY, below the current folder)."
    ),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier export in --out (one of the same study is replaced without it)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export the best trial's weights, config and metrics, with a sha256 manifest."""
    ws = stored_workspace(workspace, tracking_uri)

    from xattn.export import default_export_folder, export_best

    out = out or default_export_folder(study)
    info = export_best(study, out, ws, run_id=run_id, force=force)
    console.print(f"exported trial {info['run_id']} of {study} to {info['out']}", highlight=False)
    console.print(
        f"  xattn evaluate {shlex.quote(str(out))}  # rebuilds the model, checks its test metrics", highlight=False
    )
    if as_json:
        print(json.dumps(info))


@app.command("evaluate")
@friendly
def evaluate(
    directory: Path = typer.Argument(..., metavar="DIR", help="An export folder (xattn export)."),
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the model from an export and print its test metrics on the held-out regions."""
    from xattn.export import evaluate_export

    result = evaluate_export(directory, mirror=str(mirror) if mirror else None)
    for warning in result["warnings"]:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("metric", "now", "logged")
    for key, value in result["metrics"].items():
        logged = result["logged"].get(key)
        table.add_row(key, f"{value:.6f}", f"{logged:.6f}" if logged is not None else "-")
    console.print(table)


@app.command("attention")
@friendly
def attention(
    directory: Path = typer.Argument(
        ..., metavar="EXPORT_DIR", help="An export folder (xattn export) of a cross_attention model."
    ),
    pairs: str = typer.Option(
        "test", "--pairs", help="Which of the split's pairs to average over: test, val or train."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for the three files (default: EXPORT_DIR/attention)."
    ),
    top_k: int = typer.Option(20, "--top-k", help="How many gene pairs top_gene_pairs.csv lists."),
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Which genes attend to which: the model's cross-attention averaged over its held-out pairs.

    Writes gene_attention.csv (query gene x key gene, rows sum to 1), top_gene_pairs.csv (the
    strongest pairs by gene symbol) and gene_attention.png (a heatmap).
    """
    from xattn.export import verify_export
    from xattn.reporting.attention import write_attention

    verify_export(directory)
    result = write_attention(directory, out or directory / "attention", pair_set=pairs, top_k=top_k,
                             mirror=str(mirror) if mirror else None)  # fmt: skip
    console.print(f"attention of {result['n_pairs']} {pairs} pairs written to {result['out']}", highlight=False)
    for row in result["top"]:
        console.print(f"  {row['query_gene']} -> {row['key_gene']}: {row['mean_weight']:.4f}", highlight=False)
    if as_json:
        print(json.dumps(result))
