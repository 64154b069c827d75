"""Child servers that end with the command that started them.

`mlflow ui` runs uvicorn and a job runner under it. Stopping `xattn ui` by its process id
(SIGTERM), Ctrl-C (SIGINT), a closed terminal (SIGHUP) or the death of `xattn ui` itself,
even by SIGKILL, must not leave any of them serving the port.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: its own process group, and SIGTERM when this process dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_server(command: list[str]) -> int:
    """Run `command` in its own process group until it exits or this process is told to stop;
    then stop the group (SIGTERM to every process in it; SIGKILL to any left once the server
    has exited) and return its exit code (0 when stopped by a signal)."""
    process = subprocess.Popen(command, preexec_fn=_die_with_parent)
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        stopping.append(signum)
        _signal_group(process.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        code = process.wait()
    finally:
        # Whatever the server left (a worker that ignored SIGTERM) goes with it.
        _signal_group(process.pid, signal.SIGKILL)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if stopping else code


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
