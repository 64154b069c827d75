"""What every `xattn` command shares: the app and its groups, the consoles, the common options, one-line errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from xattn.errors import StudyNotFound, XattnError
from xattn.passwords import mask
from xattn.tracking.store import Workspace, password_note, shown, store_flags  # noqa: F401 - the commands' names for them

app = typer.Typer(help="Hyperparameter studies of cross-attention models of brain connectivity.", no_args_is_help=True)
study_app = typer.Typer(help="Run and inspect studies.", no_args_is_help=True)
data_app = typer.Typer(help="Named datasets: list, fetch, info.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(data_app, name="data")

WHOLE_LINE = 40  # columns a compact table's "name=value" line keeps whole: half of an 80-column terminal
LONG_LINE = 100_000  # columns rich may use off a terminal: a printed command or a table row stays one line


def _console(stderr: bool = False) -> Console:
    """Soft wrap everywhere: a terminal wraps long lines for display, and a copied command keeps no
    line break. Off a terminal (a pipe, a log file) rich would assume 80 columns and break lines."""
    terminal = Console(stderr=stderr).is_terminal
    return Console(stderr=stderr, soft_wrap=True, width=None if terminal else LONG_LINE)


console = _console()
err_console = _console(stderr=True)


def prose(text: str) -> None:
    """A sentence for a person: wrapped between words at a terminal's width (one line off a
    terminal). Commands a person copies are printed soft-wrapped instead, with no break in them."""
    console.print(text, highlight=False, soft_wrap=False)


def print_wide(renderable) -> None:
    """`renderable` (a table) as wide as it is, whatever the terminal's width: `--wide` output,
    for a wide terminal or `less -S`. Rich never prints wider than its console, so a console
    as wide as LONG_LINE prints it, to the same stream in the same colours."""
    Console(
        file=console.file,
        width=LONG_LINE,
        soft_wrap=True,
        force_terminal=console.is_terminal,
        color_system=console.color_system,
        no_color=console.no_color,
    ).print(renderable)


def compact_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], *, whole: tuple[int, ...] = ()) -> Table:
    """A table for an 80-column terminal: no vertical rules, cells that wrap between words (a
    word longer than its column folds; nothing is cut off with an ellipsis). The lines of the
    columns in `whole` (a "name=value" a line) are kept whole while they are short enough;
    the other columns wrap to make room."""
    several_lines = any("\n" in cell for row in rows for cell in row)
    # a blank line between rows where a row takes several lines, so each reads as one
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0, leading=int(several_lines))
    for index, column in enumerate(columns):
        longest = max((len(line) for row in rows for line in row[index].splitlines()), default=0)
        table.add_column(column, overflow="fold", width=min(longest, WHOLE_LINE) if index in whole else None)
    for row in rows:
        table.add_row(*row)
    return table


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
