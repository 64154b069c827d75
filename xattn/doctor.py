"""`xattn doctor`: is every store and service a study needs reachable, writable and compatible?

Each check returns one row (what, where, ok, one line of detail), for users before a long
study and for support afterwards. Checks never raise: a failure is a row.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from xattn.errors import StoreError, XattnError, first_line
from xattn.tracking.store import Workspace, check_optuna_storage, connect, shown
from xattn.tuning.cluster import tcp_unreachable

PROBE_EXPERIMENT = "xattn-doctor-probe"


@dataclass
class Check:
    name: str
    target: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def run_checks(workspace: Workspace, *, address: str | None = None, mirror: str | None = None) -> list[Check]:
    checks = [check_environment(), check_workspace(workspace.root)]
    client, tracking = check_tracking_store(workspace)
    checks.append(tracking)
    if client is not None:
        checks.append(check_artifacts(client, workspace))
    checks += [check_optuna(workspace.optuna_storage), check_ray(address), check_data(mirror)]
    return checks


def check_environment() -> Check:
    import torch

    import xattn
    from xattn.models.attention import FLASH_ATTN_AVAILABLE

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
    flash = "flash-attn installed" if FLASH_ATTN_AVAILABLE else "no flash-attn (SDPA is used)"
    detail = f"xattn {xattn.__version__}, Python {platform.python_version()}, torch {torch.__version__}; {gpu}; {flash}"
    return Check("environment", platform.node(), True, detail)


def check_workspace(root: Path) -> Check:
    folder = root if root.exists() else next((p for p in root.parents if p.exists()), root)
    if os.access(folder, os.W_OK):
        return Check("workspace", str(root), True, "writable" if root.exists() else f"will be created in {folder}")
    return Check("workspace", str(root), False, f"{folder} is not writable: pass --workspace DIR")


def check_tracking_store(workspace: Workspace):
    """(client, check): the client only when the store answered."""
    uri = workspace.tracking_uri
    import mlflow

    try:
        client = connect(workspace)
    except StoreError as error:
        return None, Check("tracking store", shown(uri), False, _explain_http(str(error)))
    version = f"client MLflow {mlflow.__version__}"
    if uri.startswith(("http://", "https://")):
        server = _server_version(uri)
        version = f"server MLflow {server}, {version}"
        if server and server.split(".")[0] != mlflow.__version__.split(".")[0]:
            return client, Check("tracking store", shown(uri), False, f"{version}: major versions differ, match them")
    try:
        experiment_id = _probe_experiment(client, workspace.artifact_location(PROBE_EXPERIMENT))
        client.delete_experiment(experiment_id)
    except Exception as error:  # noqa: BLE001 - the store answers reads but refuses writes
        return None, Check(
            "tracking store", shown(uri), False, f"reachable but not writable: {_explain_http(str(error))}"
        )
    return client, Check("tracking store", shown(uri), True, f"reachable and writable; {version}")


def check_artifacts(client, workspace: Workspace) -> Check:
    """Log a small artifact to a probe run and read it back: catches artifact roots that the
    client cannot reach (a server without --serve-artifacts, a path only the server sees)."""
    target = "artifact store"
    try:
        experiment_id = _probe_experiment(client, workspace.artifact_location(PROBE_EXPERIMENT))
        run = client.create_run(experiment_id)
        try:
            client.log_text(run.info.run_id, "ok", "probe.txt")  # deleted at once; read back as "ok"
            with tempfile.TemporaryDirectory() as folder:
                text = Path(client.download_artifacts(run.info.run_id, "probe.txt", folder)).read_text()
            where = client.get_run(run.info.run_id).info.artifact_uri.rsplit("/", 3)[0]
        finally:
            client.delete_run(run.info.run_id)
            client.delete_experiment(experiment_id)
    except Exception as error:  # noqa: BLE001
        return Check(target, "", False, f"cannot log and read back an artifact: {_explain_http(str(error))}")
    return Check(target, shown(where), text == "ok", "an artifact was logged and read back")


def check_optuna(url: str) -> Check:
    try:
        check_optuna_storage(url)
        import optuna

        storage = optuna.storages.RDBStorage(url)
        current, head = storage.get_current_version(), storage.get_head_version()
    except StoreError as error:
        return Check("Optuna storage", shown(url), False, str(error))
    except Exception as error:  # noqa: BLE001
        return Check("Optuna storage", shown(url), False, f"{type(error).__name__}: {first_line(error)}")
    if current != head:
        return Check(
            "Optuna storage",
            shown(url),
            False,
            f"schema {current}, Optuna {optuna.__version__} needs {head}: run `optuna storage upgrade --storage URL`",
        )
    return Check("Optuna storage", shown(url), True, f"reachable; schema current (Optuna {optuna.__version__})")


def check_ray(address: str | None) -> Check:
    import ray

    from xattn import logs

    logs.adopt_library_loggers()

    if not address:
        return Check(
            "Ray",
            "local",
            True,
            f"a local Ray {ray.__version__} instance is started per study (pass --address for a cluster)",
        )
    if address != "auto":
        unreachable = tcp_unreachable(address.removeprefix("ray://"))
        if unreachable:
            return Check(
                "Ray", address, False, f"not reachable ({unreachable}): is the head running (`ray start --head`)?"
            )
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    except Exception as error:  # noqa: BLE001 - unreachable, version mismatch, auth
        return Check("Ray", address, False, first_line(error, 300))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    detail = (
        f"Ray {ray.__version__}: {nodes} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )
    return Check("Ray", address, True, detail)


def check_data(mirror: str | None) -> Check:
    from xattn.data.datasets import DATASETS, data_mirror, fetch

    root = data_mirror(mirror)
    if root is None:
        return Check(
            "data", "download", True, "no mirror: named datasets are downloaded (pinned, sha256-checked) on first use"
        )
    available = []
    for name, info in DATASETS.items():
        if not info.files:
            continue
        try:
            fetch(name, mirror=root)
            available.append(name)
        except XattnError:
            pass
    if not available:
        return Check(
            "data", str(root), False, "no named dataset is complete in this mirror: check --mirror / $XATTN_DATA_MIRROR"
        )
    return Check("data", str(root), True, f"complete and checksummed: {', '.join(available)}")


def _probe_experiment(client, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(PROBE_EXPERIMENT)
    if experiment is None:
        return client.create_experiment(PROBE_EXPERIMENT, artifact_location=artifact_location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _server_version(uri: str) -> str | None:
    request = urllib.request.Request(uri.rstrip("/") + "/version")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode().strip() or None
    except (urllib.error.URLError, OSError):
        return None


def _explain_http(message: str) -> str:
    if "401" in message or "Unauthorized" in message or "credentials" in message.lower():
        return "authentication failed (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if "403" in message or "Permission denied" in message:
        return "permission denied (403): the user may read but not write here"
    return message[:300]


def report_json(checks: list[Check]) -> str:
    return json.dumps({"ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks]})
