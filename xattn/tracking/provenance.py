"""What produced a run, as its tags: xattn's commit, package versions, the spec's hash and the
data's. The study driver computes them once (one `git` call) and writes them on the study run
and on every trial run it records; the report, the registered model and an export read them back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from xattn.data.fingerprint import DataFingerprint
from xattn.provenance import RECORDED_PACKAGES, UNKNOWN, Commit, package_versions
from xattn.tracking import tags

RECORDED = ("python", *RECORDED_PACKAGES)  # whose versions a run records, in the order they are shown


def spec_hash(spec_yaml: str) -> str:
    """The sha256 of a study's study.yaml as logged: `sha256sum study.yaml` gives the same."""
    return hashlib.sha256(spec_yaml.encode()).hexdigest()


def provenance_tags(commit: Commit, spec_yaml: str, data: DataFingerprint) -> dict[str, str]:
    """The tags every run of a study carries."""
    versions = package_versions(RECORDED_PACKAGES)
    described = data.files if data.synthetic is None else {"synthetic": data.synthetic}
    return {
        tags.GIT_COMMIT: commit.sha,
        tags.GIT_DIRTY: UNKNOWN if commit.dirty is None else str(commit.dirty).lower(),
        **{f"{tags.VERSION_PREFIX}{name}": versions[name] for name in versions},
        tags.SPEC_HASH: spec_hash(spec_yaml),
        tags.DATA_HASH: data.hash,
        tags.DATA_FILES: json.dumps(described, sort_keys=True),
    }


def recorded_provenance(run_tags: dict[str, str]) -> dict[str, Any]:
    """The provenance a run's tags hold, as plain values ({} for a run from before it was recorded)."""
    if tags.DATA_HASH not in run_tags:
        return {}
    try:
        data_files = json.loads(run_tags.get(tags.DATA_FILES, "{}"))
    except ValueError:
        data_files = {}
    return {
        "git_commit": run_tags.get(tags.GIT_COMMIT, UNKNOWN),
        "git_dirty": run_tags.get(tags.GIT_DIRTY, UNKNOWN),
        "versions": {
            name: run_tags[f"{tags.VERSION_PREFIX}{name}"]
            for name in RECORDED
            if f"{tags.VERSION_PREFIX}{name}" in run_tags
        },
        "spec_hash": run_tags.get(tags.SPEC_HASH),
        "data_hash": run_tags[tags.DATA_HASH],
        "data_files": data_files,
    }
