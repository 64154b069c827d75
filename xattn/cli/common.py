"""What every `xattn` command shares: the app and its groups, the consoles, the common options, one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from xattn.errors import StudyNotFound, XattnError
from xattn.passwords import PASSWORD_FROM_ENVIRONMENT, has_password, mask, without_password
from xattn.tracking.store import DEFAULT_WORKSPACE, Workspace, shown

app = typer.Typer(help="Hyperparameter studies of cross-attention models of brain connectivity.", no_args_is_help=True)
study_app = typer.Typer(help="Run and inspect studies.", no_args_is_help=True)
data_app = typer.Typer(help="Named datasets: list, fetch, info.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(data_app, name="data")

LONG_LINE = 100_000  # columns rich may use off a terminal: a printed command or a table row stays one line


def _console(stderr: bool = False) -> Console:
    """Soft wrap everywhere: a terminal wraps long lines for display, and a copied command keeps no
    line break. Off a terminal (a pipe, a log file) rich would assume 80 columns and break lines."""
    terminal = Console(stderr=stderr).is_terminal
    return Console(stderr=stderr, soft_wrap=True, width=None if terminal else LONG_LINE)


console = _console()
err_console = _console(stderr=True)


def _flags_take_no_value() -> None:
    """typer 0.29's rich help labels a flag `<bool>`, as if it took a value; show no type for flags."""
    option = typer.core.TyperOption
    display = getattr(option, "display_type_rich", None)
    if display is not None:  # older typers show no type at all
        option.display_type_rich = lambda self, ctx: None if self.is_flag else display(self, ctx)


_flags_take_no_value()


@app.callback()
def _global_options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Show library logs (MLflow, Ray, Optuna) on stderr; they always go to WORKSPACE/xattn.log.",
    ),
) -> None:
    from xattn import logs

    logs.configure(verbose)


WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", help="Workspace folder for stores and artifacts (default: ./.xattn or $XATTN_WORKSPACE)."
)
TrackingOpt = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the workspace's SQLite file)."
)
OptunaOpt = typer.Option(
    None, "--optuna-storage", help="Optuna storage URL (default: $XATTN_OPTUNA_STORAGE or the workspace's SQLite file)."
)
MirrorOpt = typer.Option(
    None,
    "--mirror",
    help=(
        "Read data files from this local folder laid out like the upstream repositories (default: $XATTN_DATA_MIRROR)."
    ),
)
AddressOpt = typer.Option(
    None,
    "--address",
    envvar="RAY_ADDRESS",
    show_envvar=False,
    help="Ray cluster address (default: $RAY_ADDRESS or a local Ray instance).",
)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object as the last line, for scripts.")


def friendly(command: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except XattnError as error:
            err_console.print(f"[red]error:[/] {mask(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            # A study handles its own (marked KILLED, resume command printed). Every other
            # command writes each output file whole (staged, then moved in).
            err_console.print(
                "interrupted: stopped; what it finished is kept, nothing is half-written", highlight=False
            )
            raise typer.Exit(130) from None
        except OSError as error:
            # The last net for a path or device the checks above missed (a disk that fills,
            # permissions that change): one line, the traceback in the log (and with -v).
            logging.getLogger("xattn").error("%s failed", command.__name__, exc_info=True)
            where = f"{error.filename}: " if error.filename else ""
            err_console.print(
                f"[red]error:[/] {mask(f'{where}{error.strerror or error}')} (-v shows the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper


def open_workspace(workspace, tracking_uri, optuna_storage=None, create=True) -> Workspace:
    """The workspace the flags name, its library logs going to WORKSPACE/xattn.log."""
    from xattn import logs

    ws = Workspace.open(workspace, tracking_uri, optuna_storage, create=create)
    logs.log_to_workspace(ws.root)
    return ws


def stored_workspace(workspace, tracking_uri, optuna_storage=None) -> Workspace:
    """A workspace to read: its tracking store must exist (reading a new SQLite file creates it)."""
    ws = open_workspace(workspace, tracking_uri, optuna_storage, create=False)
    missing = ws.missing_store()
    if missing is not None:
        raise StudyNotFound(
            f"no tracking store at {missing}: run `xattn study run SPEC` first, or pass --workspace DIR"
        )
    return ws


def parse_sets(values: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` flags as spec overrides, each value read as YAML reads it."""
    overrides = {}
    for item in values:
        if "=" not in item:
            raise XattnError(f"--set {item!r}: expected KEY=VALUE, for example --set data.dataset=hcp-s100")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def store_flags(ws: Workspace, *, tracking: bool = True, optuna: bool = False) -> str:
    """The flags a printed command needs to reach these stores from here: none where the
    defaults (flags left out, the same environment) would find them."""
    default_root = Path(os.environ.get("XATTN_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
    defaults = Workspace.open(ws.root, create=False)
    flags = [("--workspace", str(ws.root))] if ws.root != default_root else []
    if tracking and ws.tracking_uri != defaults.tracking_uri:
        flags.append(("--tracking-uri", without_password(ws.tracking_uri)))
    if optuna and ws.optuna_storage != defaults.optuna_storage:
        flags.append(("--optuna-storage", without_password(shown(ws.optuna_storage))))
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in flags)


def password_note(ws: Workspace) -> str | None:
    """What a printed command lacks when a store's URI carries a password (store_flags leaves it out)."""
    return PASSWORD_FROM_ENVIRONMENT if has_password(ws.tracking_uri) or has_password(ws.optuna_storage) else None
