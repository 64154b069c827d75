"""`xattn doctor | ui | dashboard`: check the stores and services a study uses, and serve the two browsers on them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from xattn.cli.common import (
    AddressOpt,
    JsonOpt,
    MirrorOpt,
    OptunaOpt,
    TrackingOpt,
    WorkspaceOpt,
    app,
    console,
    err_console,
    friendly,
    open_workspace,
    stored_workspace,
)
from xattn.tracking.store import shown


@app.command("doctor")
@friendly
def doctor(
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check every store and service a study would use: reachable, writable, compatible."""
    from xattn.doctor import report_json, run_checks

    ws = open_workspace(workspace, tracking_uri, optuna_storage, create=False)
    checks = run_checks(ws, address=address, mirror=str(mirror) if mirror else None)
    table = Table(title="xattn doctor")
    for column in ("check", "where", "", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, check.target, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    if as_json:
        print(report_json(checks))
    failed = [check for check in checks if not check.ok]
    if failed:
        err_console.print(f"[red]error:[/] {failed[0].name}: {failed[0].detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("ui")
@friendly
def ui(
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port of the MLflow UI."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; keep 127.0.0.1 unless you mean to share it."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Server worker processes (one serves a person; each costs seconds to start)."
    ),
) -> None:
    """Open the MLflow UI on the workspace's tracking store; it ends, with every process it started,
    when this command does.
    """
    from xattn.dashboard import serve_mlflow_ui

    ws = open_workspace(workspace, tracking_uri, create=False)
    if ws.tracking_uri.startswith(("http://", "https://")):
        console.print(f"the tracking store is a server: open {shown(ws.tracking_uri)} in a browser", highlight=False)
        return
    ws = stored_workspace(workspace, tracking_uri)
    log = server_log(ws)

    def announce(url: str) -> None:
        # One line: where, how to stop, where the server's own messages go. MLflow 3.17 opens on
        # its GenAI view, so the line names the view studies are in.
        console.print(
            f"MLflow UI on {url} (Ctrl-C stops it); studies are under Model training in its sidebar; "
            f"server messages go to {log}",
            highlight=False,
        )

    code = serve_mlflow_ui(ws.tracking_uri, host, port, workers=workers, announce=announce, log=log)
    if code != 0:
        err_console.print(f"[red]error:[/] the MLflow UI stopped (exit code {code}): see {log}", highlight=False)
    raise typer.Exit(code)


def server_log(ws) -> Path:
    """The workspace log, where a server's messages go; the folder is made (a store elsewhere,
    PostgreSQL, leaves none), and the path shown as short as it reads from here."""
    from xattn.logs import LOG_FILE

    ws.root.mkdir(parents=True, exist_ok=True)
    path = ws.root / LOG_FILE
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


@app.command("dashboard")
@friendly
def dashboard(
    workspace: Optional[Path] = WorkspaceOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port of the Optuna dashboard."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Interface to bind; keep 127.0.0.1 unless you mean to share it (the dashboard can delete studies).",
    ),
) -> None:
    """Open optuna-dashboard on the workspace's Optuna storage: history, importances, slices of each search."""
    from xattn.dashboard import serve

    ws = open_workspace(workspace, None, optuna_storage, create=False)

    def announce(url: str, studies: list[str]) -> None:
        log = server_log(ws)  # made once the storage opened: a mistyped one leaves no folder
        console.print(
            f"Optuna dashboard on {url} (Ctrl-C stops it), {len(studies)} Optuna "
            f"{'study' if len(studies) == 1 else 'studies'} in "
            f"{shown(ws.optuna_storage)}; requests are logged to {log}",
            highlight=False,
        )

    serve(ws.optuna_storage, host, port, announce=announce)
