"""Child servers that end with the command that started them.

`mlflow ui` runs uvicorn and a job runner under it. Stopping `xattn ui` by its process id
(SIGTERM), Ctrl-C (SIGINT), a closed terminal (SIGHUP) or the death of `xattn ui` itself,
even by SIGKILL, must not leave any of them serving the port.

So the server runs under a guard (`python -m xattn.processes COMMAND...`): the leader of a
process group of its own, told by the kernel when its parent dies (PR_SET_PDEATHSIG). When
it is told to stop, it passes SIGTERM to the whole group, and once the server has exited it
kills whatever of the group is left.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from xattn.errors import StoreError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def check_port(host: str, port: int, who: str) -> None:
    """A one-line StoreError unless a server could listen on host:port now; `who` guesses what holds it."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StoreError(f"port {port} on {host} is in use ({who}): pass another --port") from None
        raise StoreError(
            f"cannot serve on {host}:{port} ({error.strerror or error}): check --host and --port"
        ) from None


def run_server(command: list[str], *, log: Path | None = None, env: dict[str, str] | None = None) -> int:
    """Run `command` under a guard until it exits or this process is told to stop; return its
    exit code (0 when stopped by a signal).

    With `log`, everything the server and its children print (notices, warnings, one line per
    request) is appended to that file instead of the terminal. `env` adds to the environment:
    the place for a secret, which the command line would show to anyone who lists processes.
    """
    output = log.open("ab") if log is not None else None
    try:
        guard = subprocess.Popen(
            [sys.executable, "-m", "xattn.processes", *command],
            preexec_fn=_lead_group_and_die_with_parent,
            stdin=subprocess.DEVNULL if output is not None else None,
            stdout=output,
            stderr=output,
            env={**os.environ, **env} if env else None,
        )
    finally:
        if output is not None:
            output.close()  # the guard holds its own copy
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        stopping.append(signum)
        _send(guard.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        code = guard.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if stopping else code


def _lead_group_and_die_with_parent() -> None:
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _guard(command: list[str]) -> int:
    group = os.getpgrp()
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        stopping.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM reaches this process too
        os.killpg(group, signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    if stopping:  # told to stop before the server started
        return 0
    server = subprocess.Popen(command)
    code = server.wait()
    for pid in _group_members(group):
        if pid != os.getpid():
            _send(pid, signal.SIGKILL)  # a worker that ignored SIGTERM goes with the server
    return code


def _group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # it ended while we looked
                continue
            if int(fields[2]) == group:
                members.append(int(entry.name))
    return members


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
