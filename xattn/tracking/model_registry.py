"""A study's best model in MLflow's model registry: one registered model per study, named
after it, whose alias `best` points at the best trial of the newest study run.

A version is the trial run's `checkpoint/` artifact (`runs:/<run_id>/checkpoint`). Its tags are
what a person filters versions by: study, family, the spec's and the data's hash, the selection
metric and its value. Its description says the rest: which runs and trials it came from, the
software it was trained with, the trial's metrics and the sha256 of each file of its export's
manifest (which `xattn export` checks). A run is registered once: running or resuming the study
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
METRIC_TAG = "metric."  # + the selection metric of the trial run
SHA256_LINE = re.compile(r"^- sha256 (\S+): ([0-9a-f]{64})$", re.MULTILINE)  # describe_version's lines
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
            tags=version_tags(study, parent, run),
            description=describe_version(parent, run, manifest),
        )
    client.set_registered_model_alias(study, BEST_ALIAS, str(version.version))
    return client.get_model_version(study, str(version.version))


def version_of_run(client: MlflowClient, study: str, run_id: str) -> ModelVersion | None:
    """The version already registered from `run_id`, if any (the oldest, should there be two)."""
    # Filtered here rather than in the query: not every registry backend accepts `name AND run_id`.
    versions = [v for v in _versions(client, study) if v.run_id == run_id]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def version_tags(study: str, parent: Run, run: Run) -> dict[str, str]:
    """What a person filters a study's versions by."""
    run_tags, parent_tags = run.data.tags, parent.data.tags
    metric = parent_tags.get(tags.METRIC, "")
    info = {
        tags.STUDY: study,
        tags.FAMILY: run_tags.get(tags.FAMILY, ""),
        tags.SPEC_HASH: run_tags.get(tags.SPEC_HASH, parent_tags.get(tags.SPEC_HASH, "")),
        tags.DATA_HASH: run_tags.get(tags.DATA_HASH, parent_tags.get(tags.DATA_HASH, "")),
        tags.SELECTED_BY: metric,
    }
    if metric in run.data.metrics:  # a refit has no validation metric
        info[f"{METRIC_TAG}{metric}"] = repr(float(run.data.metrics[metric]))
    return {key: value for key, value in info.items() if value != ""}


def registered_sha256(version: ModelVersion) -> dict[str, str]:
    """The sha256 of each export file, as recorded when the version was registered: in its
    description (`describe_version`), or in tags for versions registered before that."""
    recorded = {name: digest for name, digest in SHA256_LINE.findall(version.description or "")}
    recorded.update(
        {
            key[len(tags.SHA256_PREFIX) :]: value
            for key, value in (version.tags or {}).items()
            if key.startswith(tags.SHA256_PREFIX)
        }
    )
    return recorded


def describe_version(parent: Run, run: Run, manifest: dict[str, Any]) -> str:
    """The version's description, in Markdown as MLflow's UI shows it: what it is, where it came
    from, what trained it, its metrics, and the sha256 `xattn export` checks its files against."""
    from xattn.tracking.provenance import recorded_provenance

    run_tags, parent_tags = run.data.tags, parent.data.tags
    lines = [_describe(parent, run), ""]
    lines.append(f"- study run `{parent.info.run_id}`, trial run `{run.info.run_id}`")
    optuna_study, trial = parent_tags.get(tags.OPTUNA_STUDY), run_tags.get(tags.OPTUNA_TRIAL_NUMBER)
    if optuna_study and trial is not None:
        lines.append(f"- Optuna study `{optuna_study}`, trial {trial}; Ray trial `{run_tags.get(tags.RAY_TRIAL_ID)}`")
    provenance = recorded_provenance(run_tags) or recorded_provenance(parent_tags)
    if provenance:
        dirty = {"true": " with uncommitted changes", "unknown": " (not a git checkout)"}.get(
            provenance["git_dirty"], ""
        )
        versions = ", ".join(f"{name} {version}" for name, version in provenance["versions"].items())
        lines.append(f"- xattn commit `{provenance['git_commit']}`{dirty}; {versions}")
        lines.append(f"- data files: {', '.join(f'{k} {v}' for k, v in provenance['data_files'].items())}")
    metrics = ", ".join(f"{key} {value:.6g}" for key, value in sorted(run.data.metrics.items()))
    lines.append(f"- metrics: {metrics}")
    lines += [f"- sha256 {name}: {digest}" for name, digest in sorted(manifest["files"].items())]
    return "\n".join(lines)


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
