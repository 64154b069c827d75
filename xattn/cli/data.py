"""`xattn data list | fetch | info`: the named datasets, their files downloaded and checked, one described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from xattn.cli.common import JsonOpt, MirrorOpt, console, data_app, friendly


@data_app.command("list")
@friendly
def data_list(as_json: bool = JsonOpt) -> None:
    """List the named datasets."""
    from xattn.data import DATASETS

    rows = [
        {
            "name": info.name,
            "regions": info.regions,
            "genes": info.genes,
            "target": info.target,
            "description": info.description,
        }
        for info in DATASETS.values()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "regions", "genes", "target", "description")
    for row in rows:
        table.add_row(row["name"], str(row["regions"]), str(row["genes"]), row["target"], row["description"])
    console.print(table)


@data_app.command("fetch")
@friendly
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (xattn data list)."),
    mirror: Optional[Path] = MirrorOpt,
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Download cache (default: $XATTN_DATA_CACHE or the user cache)."
    ),
) -> None:
    """Download a dataset's files from their pinned upstream addresses, checking sha256."""
    from xattn.data import fetch

    paths = fetch(name, mirror=mirror, cache_dir=cache_dir, progress=True)
    for key, path in paths.items():
        console.print(f"{key}: {path}", highlight=False)


@data_app.command("info")
@friendly
def data_info(
    name: str = typer.Argument(..., help="Dataset name (xattn data list)."),
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Load a dataset and describe it."""
    from xattn.data import load_dataset

    summary = load_dataset(name, mirror=mirror).summary()
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
