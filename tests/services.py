"""The services docker-compose.yml starts, started here as plain processes on loopback:
a database on the local PostgreSQL, an `mlflow server` on it, a Ray head and worker."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

POSTGRES = os.environ.get("XATTN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def wait_until(ready, what: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{what} exited with {process.returncode}:\n{process.stdout.read() if process.stdout else ''}"
            )
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up within {timeout:.0f} s")


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
    )


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def postgres_database():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = f"xattn_{uuid.uuid4().hex[:10]}"
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as error:
        if os.environ.get("XATTN_REQUIRE_DATA"):
            raise AssertionError(f"PostgreSQL is not reachable at {POSTGRES}: start it (CI expects it)") from error
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")
    url = sa.engine.make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path, *, admin_password: str | None = None):
    """`mlflow server` on `backend`, serving artifacts from `folder`; basic auth with a password."""
    port = free_port()
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(folder / "artifacts"),
            "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {}
    if admin_password is not None:
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = admin\n"
            f"admin_password = {admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        args += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = uuid.uuid4().hex  # CSRF protection of the auth app
    process = start(args, folder / "mlflow-server.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(url + "/health", timeout=2).status == 200, "mlflow server", process)
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def ray_cluster(folder: Path, *, worker_cpus: int = 1, head_cpus: int = 1, head_gpus: int = 0, workers: int = 1):
    """A Ray head (`ray start --head`) and `workers` worker nodes (`ray start --address`), with
    token authentication as a shared cluster should have; yields the address and the environment
    a driver needs to join (the token). `head_gpus` are logical: Ray schedules them and sets each
    trial's CUDA_VISIBLE_DEVICES as on a GPU node, whether or not a GPU is there."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    common = ["--block", "--disable-usage-stats"]
    head = start([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                  "--num-cpus", str(head_cpus), "--num-gpus", str(head_gpus), "--include-dashboard", "false", *common],
                 folder / "ray-head.log", env)  # fmt: skip
    processes = [head]
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None, "ray head", head)
        for index in range(workers):
            join = [str(BIN / "ray"), "start", "--address", address, "--node-ip-address", "127.0.0.1"]
            worker = start([*join, "--num-cpus", str(worker_cpus), *common], folder / f"ray-worker{index}.log", env)
            processes.append(worker)
        status = [str(BIN / "ray"), "status", "--address", address]

        def all_nodes() -> bool:
            shown = subprocess.run(status, capture_output=True, text=True, timeout=30, env={**os.environ, **env})
            return shown.stdout.count("node_") >= 1 + workers

        wait_until(all_nodes, "ray nodes", processes[-1])
        yield address, env
    finally:
        for process in reversed(processes):
            stop(process)
