"""A study's best model in MLflow's model registry: one registered model per study, named
after it, whose alias `best` points at the best trial of the newest study run.

A version is the trial run's `checkpoint/` artifact (`runs:/<run_id>/checkpoint`), tagged with
what an export of it records (study, runs, Optuna trial, the sha256 of each file of its
manifest) and the trial's metrics. A run is registered once: running or resuming the study
again moves the alias, onto the same version when the best trial is the same.
"""

from __future__ import annotations

import re
from typing import Any

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from xattn.errors import ModelNotFound, StoreError
from xattn.tracking import tags
from xattn.tracking.store import shown

BEST_ALIAS = "best"
CHECKPOINT = "checkpoint"
METRIC_TAG = "metric."  # + a metric of the trial run
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
# What a registry answers for a name, alias or version it does not have (an unknown alias is
# an invalid parameter to MLflow's SQL store); anything else means the store itself failed.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def register_best(
    client: MlflowClient, study: str, parent: Run, run: Run, manifest: dict[str, Any], *, description: str = ""
) -> ModelVersion:
    """Register `run` (the best trial of study run `parent`) under `study` and point `best` at it.

    `manifest` is what `xattn export` writes for this run (export.export_manifest)."""
    version = version_of_run(client, study, run.info.run_id)
    if version is None:
        _ensure_registered_model(client, study, description)
        version = client.create_model_version(
            study,
            f"runs:/{run.info.run_id}/{CHECKPOINT}",
            run_id=run.info.run_id,
            tags=version_tags(study, parent, run, manifest),
            description=_describe(parent, run),
        )
    client.set_registered_model_alias(study, BEST_ALIAS, str(version.version))
    return client.get_model_version(study, str(version.version))


def version_of_run(client: MlflowClient, study: str, run_id: str) -> ModelVersion | None:
    """The version already registered from `run_id`, if any (the oldest, should there be two)."""
    # Filtered here rather than in the query: not every registry backend accepts `name AND run_id`.
    versions = [v for v in _versions(client, study) if v.run_id == run_id]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def version_tags(study: str, parent: Run, run: Run, manifest: dict[str, Any]) -> dict[str, str]:
    run_tags = run.data.tags
    info = {
        tags.STUDY: study,
        tags.PARENT_RUN_ID: parent.info.run_id,
        tags.OPTUNA_STUDY: parent.data.tags.get(tags.OPTUNA_STUDY, ""),
        tags.OPTUNA_TRIAL_NUMBER: run_tags.get(tags.OPTUNA_TRIAL_NUMBER, ""),
        tags.RAY_TRIAL_ID: run_tags.get(tags.RAY_TRIAL_ID, ""),
        tags.FAMILY: run_tags.get(tags.FAMILY, ""),
        tags.SELECTED_BY: parent.data.tags.get(tags.METRIC, ""),
    }
    info.update({f"{tags.SHA256_PREFIX}{name}": digest for name, digest in sorted(manifest["files"].items())})
    info.update({f"{METRIC_TAG}{key}": repr(float(value)) for key, value in sorted(run.data.metrics.items())})
    return {key: value for key, value in info.items() if value != ""}


def registered_sha256(version: ModelVersion) -> dict[str, str]:
    """The sha256 of each export file, as recorded when the version was registered."""
    return {
        key[len(tags.SHA256_PREFIX) :]: value
        for key, value in (version.tags or {}).items()
        if key.startswith(tags.SHA256_PREFIX)
    }


def resolve(client: MlflowClient, uri: str) -> ModelVersion:
    """The version `models:/NAME@ALIAS` or `models:/NAME/VERSION` names, or a one-line error."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise ModelNotFound(f"{uri!r} is not a model URI: use models:/NAME@{BEST_ALIAS} or models:/NAME/VERSION")
    name, alias, number = match["name"], match["alias"], match["version"]
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        _unless_missing(error, client)
        known = sorted(m.name for m in client.search_registered_models())
        hint = f"; registered here: {', '.join(known)}" if known else "; a study registers its best trial when it ends"
        raise ModelNotFound(f"no registered model {name!r} in this tracking store{hint}") from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, number)
    except MlflowException as error:
        _unless_missing(error, client)
        if alias is not None:
            aliases = ", ".join(sorted(getattr(model, "aliases", {}) or {})) or "none"
            raise ModelNotFound(f"model {name!r} has no alias {alias!r} (its aliases: {aliases})") from None
        versions = ", ".join(sorted((str(v.version) for v in _versions(client, name)), key=int)) or "none"
        raise ModelNotFound(f"model {name!r} has no version {number} (its versions: {versions})") from None


def _unless_missing(error: MlflowException, client: MlflowClient) -> None:
    if error.error_code not in NOT_FOUND:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise StoreError(
            f"cannot read the model registry of {shown(client.tracking_uri)} ({reason}): check --tracking-uri"
        ) from None


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name = '{name}'"))


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, tags={tags.STUDY: name}, description=description or None)
        except MlflowException as error:
            # Already there: another driver of the same study created it a moment ago.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _describe(parent: Run, run: Run) -> str:
    if run.data.tags.get(tags.ROLE) == "refit":
        metrics = run.data.metrics
        estimate = [metrics.get(f"nested_test_pearson{suffix}") for suffix in ("", "_ci95_low", "_ci95_high")]
        nested = (
            "; nested estimate (of the selection procedure, not of this refit, over "
            f"{metrics.get('nested_folds', 0):.0f} outer folds): test r {estimate[0]:.3f} "
            f"[{estimate[1]:.3f}, {estimate[2]:.3f}]"
            if None not in estimate
            else ""
        )
        return (
            f"the configuration selected on all regions, refit on all regions, of study run {parent.info.run_id}"
            + nested
        )
    metric = parent.data.tags.get(tags.METRIC, "")
    value = run.data.metrics.get(metric)
    trial = run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER, "?")
    score = f", {metric} {value:.4f}" if value is not None else ""
    return f"trial {trial} of study run {parent.info.run_id}{score}"
