"""The `xattn` command line (`main`, `app`): each command a few lines over a library function.

common.py holds what every command shares; each other module registers one group of commands on
`app` when imported. Those modules import common.py and nothing else of this package.
"""

from __future__ import annotations

import os
import sys

import typer

from xattn.cli.common import app, err_console

# Imported for the commands they register, in the order `xattn --help` lists them.
# isort: off
from xattn.cli import results  # noqa: F401 - compare, compare-local, report
from xattn.cli import services  # noqa: F401 - doctor, ui, dashboard
from xattn.cli import exports  # noqa: F401 - export, evaluate, attention
from xattn.cli import study, data  # noqa: F401 - the groups `xattn study ...`, `xattn data ...`
# isort: on

try:  # typer 0.29 and later carry their own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

__all__ = ["app", "main"]


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as error:
        error.show()
        code = 2
    except UsageError as error:
        # One line, like every other error; click's framed panel spans five.
        where = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
        err_console.print(f"[red]error:[/] {error.format_message()}{where}", highlight=False)
        code = error.exit_code
    except typer.Abort:  # Ctrl-C at a prompt or before a command took over
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
