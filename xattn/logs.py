"""Library logs on the command line: always in the workspace's log file, on stderr only with -v.

MLflow (schema migrations) and Ray (token authentication, start-up) log at INFO and WARNING
through handlers of their own that write to stderr. The CLI routes them through the root
logger instead, so the console carries only what xattn itself prints. Python code that calls
the library without the CLI keeps the libraries' own logging.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xattn.passwords import mask

LOG_FILE = "xattn.log"
# Loggers that come with their own stderr handler (Ray) or that the CLI wants at INFO.
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "optuna")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_configured = False
_verbose = False
_handlers: list[logging.Handler] = []  # what configure and log_to_workspace added to the root logger


class MaskedFormatter(logging.Formatter):
    """Log lines, tracebacks included, with every password masked (xattn.passwords): a library's
    error may quote a URI whole."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class WorkspaceLog(logging.Handler):
    """Appends to WORKSPACE/xattn.log once the workspace folder exists.

    Records from before are held until then, so a command that stops on bad input (and so
    never creates its workspace) writes nothing.
    """

    def __init__(self, path: Path, backlog: int = 10_000) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.setFormatter(MaskedFormatter(FORMAT))
        self._pending: collections.deque[logging.LogRecord] = collections.deque(maxlen=backlog)
        self._stream = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._stream is None:
            if not self.path.parent.is_dir():
                self._pending.append(record)
                return
            try:
                self._stream = self.path.open("a", encoding="utf-8")
            except OSError:
                self._pending.append(record)
                return
            while self._pending:
                self._stream.write(self.format(self._pending.popleft()) + "\n")
        self._stream.write(self.format(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def configure(verbose: bool) -> None:
    """Called by the CLI for each command, before MLflow or Ray is imported (again for each
    command a test runs in one process: the handlers of the last call replace the earlier ones)."""
    global _configured, _verbose
    _configured, _verbose = True, verbose
    # MLflow otherwise installs its own stderr handler when it is imported.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    while _handlers:
        handler = _handlers.pop()
        root.removeHandler(handler)
        handler.close()
    if verbose:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(MaskedFormatter(FORMAT))
        _add(console)
    else:
        # Without any handler Python's last resort would print warnings to stderr.
        _add(logging.NullHandler())
    adopt_library_loggers()


def _add(handler: logging.Handler) -> None:
    logging.getLogger().addHandler(handler)
    _handlers.append(handler)


def adopt_library_loggers() -> None:
    """Send the libraries' records to the root logger's handlers instead of their own.

    Ray sets up its handler when it is imported: a caller that imports Ray later calls this
    again. Does nothing unless the CLI configured logging.
    """
    if not _configured:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.INFO)


def configured() -> bool:
    return _configured


def log_to_workspace(root: Path) -> None:
    """Also write every record to ROOT/xattn.log (from when ROOT exists)."""
    if _configured and not any(isinstance(handler, WorkspaceLog) for handler in _handlers):
        _add(WorkspaceLog(root / LOG_FILE))


@contextlib.contextmanager
def native_stderr_to_log(name: str) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (Ray's C++ core: "Failed to get cluster
    ID from GCS server" each second while ray.init waits) to logger `name` instead of the console.

    Does nothing unless the CLI configured logging, or with -v (where the console shows logs).
    """
    if not _configured or _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            logger = logging.getLogger(name)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip():
                    logger.warning(line)
