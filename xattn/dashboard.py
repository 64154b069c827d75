"""The two browsers on a workspace: optuna-dashboard on its Optuna storage, the MLflow UI on its tracking store.

`xattn dashboard` and `xattn ui` serve them. Every check that can fail on the user's input (a
storage that is not there, a port already taken) ends in one line before the server starts; from
then on it serves until stopped, and ends with every process it started. What the servers say
(start-up notices, deprecations, a line per request) goes to the log, not the terminal.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from xattn.errors import StoreError, first_line
from xattn.processes import check_port, run_server
from xattn.tracking.store import shown


def open_storage(url: str):
    """The Optuna storage at `url`, without creating one: a dashboard on an empty new database
    would only show that the path was mistyped."""
    import optuna
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL at all
        raise StoreError(f"Optuna storage {url!r} is not a SQLAlchemy URL: use e.g. sqlite:///optuna.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise StoreError(
                f"no Optuna storage at {parsed.database}: run a study first, or pass --workspace / --optuna-storage"
            )
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001 - an old schema, a foreign database, a bad driver
        raise StoreError(
            f"cannot open the Optuna storage {shown(url)} ({first_line(error)}): check --optuna-storage"
        ) from None


class _LoggedRequests(WSGIRequestHandler):
    """wsgiref's handler, its line per request sent to the log instead of stderr."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the name wsgiref calls it by
        logging.getLogger("xattn.dashboard").info("%s %s", self.address_string(), format % args)


def serve(url: str, host: str, port: int, *, announce: Callable[[str, list[str]], None]) -> None:
    """Serve optuna-dashboard on http://host:port until interrupted; `announce(url, studies)`
    is called once the storage is open and the port is free. Requests are logged (logger
    xattn.dashboard), not printed."""
    import optuna
    import optuna_dashboard

    storage = open_storage(url)
    check_port(host, port, "another dashboard?")
    app = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(host, port, app, handler_class=_LoggedRequests)
    except OSError as error:  # another process took the port since the check
        raise StoreError(f"cannot serve on {host}:{port} ({error.strerror or error}): pass another --port") from None
    announce(f"http://{host}:{port}", optuna.get_all_study_names(storage))
    with server:
        server.serve_forever()


def serve_mlflow_ui(
    tracking_uri: str,
    host: str,
    port: int,
    *,
    workers: int = 1,
    announce: Callable[[str], None],
    log: Path | None = None,
) -> int:
    """Serve the MLflow UI on the tracking store `tracking_uri` (a database, not a server) on
    http://host:port until stopped, ending with every process it started; `announce(url)` is
    called once the port is free. With `log`, what the server prints is appended to that file.
    Returns the server's exit code (0 when stopped by a signal)."""
    check_port(host, port, "another MLflow UI?")
    announce(f"http://{host}:{port}")
    command = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", str(workers)]
    # The store's URI (it may carry a password) goes by environment, never on the command
    # line that `ps` shows; naming it as the model registry too spares the notice that it
    # was not named.
    env = {"MLFLOW_BACKEND_STORE_URI": tracking_uri, "MLFLOW_REGISTRY_STORE_URI": tracking_uri}
    logging.getLogger("xattn.dashboard").info(
        "starting the MLflow UI on store %s: %s", shown(tracking_uri), shlex.join(command)
    )
    return run_server(command, log=log, env=env)
