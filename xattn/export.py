"""Export a study's best trial (or a registered version of it) to a folder, and evaluate such a
folder again.

An export holds the weights (safetensors), the config that rebuilds model and data
(config.json), the trial's logged metrics and what produced it (metrics.json: commit, versions,
the hashes of spec and data) and a sha256 manifest; evaluation refuses a folder whose files do
not match its manifest, and warns when the data it is given is not the data the model saw.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xattn.errors import DataError, StoreError
from xattn.paths import ensure_can_create
from xattn.tracking import tags
from xattn.tracking.provenance import recorded_provenance
from xattn.tracking.runs import CheckpointCache, deployed_run, download_checkpoint, find_parent_run
from xattn.tracking.store import Workspace, connect
from xattn.training.checkpoint import CHECKPOINT_FILES, file_sha256

MANIFEST = "manifest.json"
EXPORTS_FOLDER = Path("exports")  # below the current folder; the project's .gitignore lists it


def default_export_folder(study: str) -> Path:
    """Where `xattn export STUDY` writes without --out: exports/STUDY, the name made safe for a
    path (a model URI models:/NAME@best becomes exports/NAME-best)."""
    return EXPORTS_FOLDER / (re.sub(r"[^A-Za-z0-9._-]+", "-", study.removeprefix("models:/")).strip("-") or "export")


def export_best(study: str, out: Path, workspace: Workspace, *, run_id: str | None = None, force: bool = False) -> dict:
    """Write the best trial of the newest run of `study` (or of parent `run_id`) to `out`.

    `study` may instead be a registered model, `models:/NAME@ALIAS` or `models:/NAME/VERSION`:
    the trial it was registered from is written, exactly as its study's export would be.
    """
    out = Path(out)
    ensure_can_create(out, "--out", "choose another --out")
    if out.exists() and any(out.iterdir()):
        # The same study exported again (as its end message and its report both suggest)
        # replaces its earlier export: every file of it comes from the store again.
        if not force and _exported_study(out) != study:
            raise StoreError(f"{out} exists and is not empty: choose another --out or pass --force")
        if not (out / MANIFEST).is_file():
            # --force replaces an earlier export, never a folder of other things (a workspace, a home).
            raise StoreError(
                f"{out} is not an earlier export (no {MANIFEST}): --force replaces only an export; choose another --out"
            )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = connect(workspace)  # an unreachable server fails in one line, not after minutes of retries
    version = None
    if study.startswith("models:/"):
        from xattn.tracking.model_registry import resolve

        if run_id is not None:
            raise StoreError(f"--run-id does not apply to a model URI ({study}): the model names its run")
        version = resolve(client, study)
        best = client.get_run(version.run_id)
        parent = client.get_run(best.data.tags[tags.PARENT_RUN])
        study = (version.tags or {}).get(tags.STUDY, version.name)
    else:
        parent = find_parent_run(client, study, run_id)
        best = deployed_run(client, parent)
    staging, metrics = _stage(client, study, parent, best, out.parent if out.parent.exists() else None)
    try:
        if version is not None:
            _check_registered(staging, version)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    registered = {"model_name": version.name, "model_version": str(version.version)} if version is not None else {}
    return {"out": str(out.resolve()), **metrics, **registered}


def _exported_study(folder: Path) -> str | None:
    """The study an earlier export in `folder` is of, or None for a folder that is no export."""
    try:
        return json.loads((folder / "metrics.json").read_text())["study"] if (folder / MANIFEST).is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_manifest(client, study: str, parent, best, checkpoint: str | Path | CheckpointCache) -> dict[str, Any]:
    """The manifest `xattn export` would write for trial run `best` of study run `parent`, from
    its checkpoint already at hand: a local folder, or an open cache of checkpoints."""
    if isinstance(checkpoint, CheckpointCache):
        checkpoint = checkpoint.path(best.info.run_id)
    staging, _ = _stage(client, study, parent, best, None, checkpoint=Path(checkpoint))
    try:
        return json.loads((staging / MANIFEST).read_text())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(
    client, study: str, parent, best, where: Path | None, *, checkpoint: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """A complete export of `best` in a new folder under `where`; the caller moves or removes it.
    Its checkpoint is downloaded, or copied from local folder `checkpoint` (left as it is)."""
    staging = Path(tempfile.mkdtemp(prefix=".xattn-export-", dir=where))
    try:
        if checkpoint is None:
            downloaded = download_checkpoint(client, best.info.run_id, staging)
            for item in downloaded.iterdir():
                shutil.move(str(item), staging / item.name)
            downloaded.rmdir()
        else:
            for item in checkpoint.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        metrics = {
            "study": study,
            "parent_run_id": parent.info.run_id,
            "run_id": best.info.run_id,
            "ray_trial_id": best.data.tags.get(tags.RAY_TRIAL_ID),
            "optuna_trial_number": best.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
            "params": dict(best.data.params),
            "metrics": dict(best.data.metrics),
        }
        provenance = recorded_provenance(best.data.tags)
        if provenance:
            metrics["provenance"] = provenance
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        files = sorted(p.name for p in staging.iterdir())
        manifest = {"files": {name: file_sha256(staging / name) for name in files}, "run_id": best.info.run_id}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, metrics


def _check_registered(staging: Path, version) -> None:
    """Refuse a run whose model files changed after it was registered."""
    from xattn.tracking.model_registry import registered_sha256

    # Only the files that rebuild the model: metrics.json follows the run's metrics, which
    # may legitimately grow after registration.
    for name, expected in registered_sha256(version).items():
        if name in CHECKPOINT_FILES and (staging / name).is_file() and file_sha256(staging / name) != expected:
            raise DataError(
                f"models:/{version.name}/{version.version}: the run's {name} no longer matches the sha256 "
                "recorded when it was registered; the run's artifacts were altered"
            )


def verify_export(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{directory} has no {MANIFEST}: export a study with `xattn export STUDY --out DIR`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{manifest_path} is not a valid manifest: export the study again") from None
    for name, expected in files.items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            raise DataError(f"{directory}: {name} is listed in the manifest but missing: export the study again")
        if file_sha256(path) != expected:
            raise DataError(f"{path} does not match its sha256 in {MANIFEST}: the export was altered; export again")
    return manifest


def evaluate_export(directory: Path, *, mirror: str | None = None) -> dict[str, Any]:
    """Rebuild model and data from an export and recompute the test metrics on its split;
    `warnings` says where the data differs from the data the model was trained on."""
    from xattn.experiment import rebuild_from_checkpoint
    from xattn.training.trainer import evaluate

    directory = Path(directory)
    verify_export(directory)
    model, experiment, precision = rebuild_from_checkpoint(directory, mirror)
    metrics = evaluate(model, experiment.pairs, experiment.pairs.test_pairs, precision=precision)
    logged = json.loads((directory / "metrics.json").read_text()) if (directory / "metrics.json").exists() else {}
    return {
        "directory": str(directory.resolve()),
        "metrics": metrics,
        "logged": logged.get("metrics", {}),
        "warnings": data_warnings(directory, logged.get("provenance", {})),
    }


def data_warnings(directory: Path, provenance: dict[str, Any]) -> list[str]:
    """One line per way the data an export is evaluated on differs from its training data (as
    far as its recorded hashes tell; an export from before they were recorded tells nothing)."""
    from xattn.data.fingerprint import data_fingerprint
    from xattn.data.spec import DataSpec

    recorded = provenance.get("data_hash")
    if not recorded:
        return []
    config = json.loads((directory / "config.json").read_text())
    now = data_fingerprint(DataSpec.model_validate(config["data"]))
    if now.hash == recorded:
        return []
    before = provenance.get("data_files", {})
    changed = [name for name, digest in now.files.items() if before.get(name) not in (None, digest)]
    which = f" ({', '.join(f'{name} {now.paths.get(name, name)}' for name in changed)} changed)" if changed else ""
    return [
        f"data hash differs: the model was trained on data {recorded[:12]}..., this data is {now.hash[:12]}...{which}; "
        "these metrics are of other data: evaluate on the training data to reproduce the logged ones"
    ]
