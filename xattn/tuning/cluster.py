"""The Ray cluster a study runs on: its own local one or the one --address names, started or joined once per process.

A cluster that is not there is refused in one line before anything is written: ray.init would
otherwise retry a refused address for minutes, or fail after the study run had started.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from xattn.errors import StoreError, first_line

FIX = "start its head with `ray start --head`, or check --address / $RAY_ADDRESS"


def tcp_unreachable(host_port: str) -> str | None:
    """Why nothing listens at HOST:PORT, or None."""
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return f"{host_port!r} is not HOST:PORT"
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def check_ray_address(address: str | None) -> None:
    """A one-line StoreError unless `address` (HOST:PORT or ray://HOST:PORT) answers; "auto"
    and no address are Ray's to resolve."""
    if not address or address in ("auto", "local"):
        return
    reason = tcp_unreachable(address.removeprefix("ray://"))
    if reason is not None:
        raise StoreError(f"cannot reach the Ray cluster at {address} ({reason}): {FIX}")


def ray_init_error(address: str | None, error: Exception) -> StoreError:
    """ray.init's error (no cluster for "auto", a port that is not Ray's, a token it lacks) as one line."""
    where = address or "auto"
    # Ray does not say that a cluster refused a driver for want of its token (none sent, or
    # another): at an address that answered, that is the likeliest reason, and `ray start`
    # turns token authentication on by default.
    if "token" in str(error).lower() or address not in (None, "auto", "local"):
        return StoreError(
            f"cannot join the Ray cluster at {where} ({first_line(error)}): if it uses token authentication "
            "(`ray start`'s default), set RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token, "
            "$RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH names (`ray start` wrote it to ~/.ray/auth_token "
            f"on the head node); else {FIX}"
        )
    return StoreError(f"cannot join the Ray cluster at {where} ({first_line(error)}): {FIX}")


def trials_at_once(cpus: float, gpus: float, cluster: dict[str, float], limit: int | None) -> int:
    """How many trials asking for `cpus` and `gpus` each the cluster holds at once (at least 1),
    at most `limit` (budget.max_concurrent). Ray Tune lets a searcher keep only this many trials
    waiting for resources; left at its default (1), a trial waits for the previous one's worker
    to start, and short trials never fill a cluster's fractional GPUs."""
    fits = [cluster.get("CPU", 0.0) / cpus]
    if gpus > 0:
        fits.append(cluster.get("GPU", 0.0) / gpus)
    n = max(1, int(min(fits) + 1e-9))
    return min(n, limit) if limit else n


def where_trials_train(cpus: float, gpus: float) -> dict[str, str]:
    """Where a trial asking for `gpus` would train: a Ray task with the trial's resources reports
    its node and whether torch sees a CUDA device there."""
    import ray

    @ray.remote
    def probe() -> dict[str, str]:
        import torch

        cuda = torch.cuda.is_available()
        return {"node": socket.gethostname(), "device": f"cuda ({torch.cuda.get_device_name()})" if cuda else "cpu"}

    return ray.get(probe.options(num_cpus=cpus, num_gpus=gpus).remote(), timeout=300)


def check_gpu(cpus: float, gpus: float, require: bool) -> str | None:
    """With `gpus` > 0: a one-line StoreError when `require` and a trial would find no CUDA
    device; else the line that says trials will train on CPU, or None when they find one."""
    if gpus <= 0:
        return None
    found = where_trials_train(cpus, gpus)
    if found["device"] != "cpu":
        return None
    line = f"asked for {gpus:g} GPU per trial, but torch sees no CUDA device on {found['node']}"
    if require:
        raise StoreError(f"{line}: install a CUDA build of torch there, or set resources.require_gpu: false")
    return f"{line}: training on CPU"


def check_trial_fits(cpus: float, gpus: float, cluster: dict[str, float], address: str | None) -> None:
    """A one-line StoreError when one trial asks for more than the whole cluster has: Ray would
    otherwise wait for those resources forever, printing nothing a user sees."""
    where = f"the Ray cluster at {address}" if address else "this machine"
    for key, asked, fix in (
        ("CPU", cpus, "lower resources.cpus"),
        ("GPU", gpus, "set resources.gpus: 0 to train on CPU" if not cluster.get("GPU") else "lower resources.gpus"),
    ):
        has = cluster.get(key, 0.0)
        if asked > has:
            raise StoreError(f"resources.{key.lower()}s {asked:g} per trial, but {where} has {has:g} {key}s: {fix}")


def init_ray(address: str | None):
    """Ray, joined or started once per process; a study calls this before it writes anything."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save the experiment state every second (not every 10 s or more): a driver killed with
    # SIGKILL then loses at most a second of bookkeeping, so a resume repeats almost nothing.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C raises KeyboardInterrupt here at once (the study run is then marked KILLED)
    # instead of Tune swallowing it and returning a partial result as if the phase were done.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    import ray

    from xattn import logs

    logs.adopt_library_loggers()
    if not ray.is_initialized():
        # Ray's core installs a C handler for SIGTERM that prints a stack and kills the driver;
        # the caller's (the CLI marks the study run KILLED and says how to resume) comes back.
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            with logs.native_stderr_to_log("ray"):
                ray.init(
                    # "local": a new instance of our own, even where a `ray start` cluster (or a
                    # stale record of one in /tmp/ray) would make ray.init() try to join it.
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=not logs.configured(),  # the CLI sends Ray's logs to the workspace's log
                )
        except (ConnectionError, RuntimeError) as error:  # RuntimeError: Ray's authentication errors
            raise ray_init_error(address, error) from None
        finally:
            if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
    return ray
