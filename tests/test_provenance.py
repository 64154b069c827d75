"""Every run says what produced it: xattn's commit, package versions, the spec's hash and the
data's. One real tiny study on a user's own files is read back from MLflow, its registered
model and its export; then one byte of its data changes and `xattn evaluate` says so."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_cli import REPO, xattn

from xattn.data.datasets import DATASETS, REGISTRY
from xattn.data.fingerprint import data_fingerprint
from xattn.data.spec import DataSpec
from xattn.provenance import UNKNOWN, xattn_commit
from xattn.tracking import tags
from xattn.tracking.store import Workspace


def write_user_files(folder, regions: int = 24, genes: int = 6) -> dict[str, str]:
    """Expression, connectivity and coords CSVs of a smooth random connectome, labelled by region."""
    rng = np.random.default_rng(0)
    coords = rng.normal(scale=30.0, size=(regions, 3))
    expression = 1 / (1 + np.exp(-(coords @ rng.normal(size=(3, genes))) / 30.0))
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    connectivity = np.exp(-distance / 40.0) + 0.5 * np.corrcoef(expression)
    labels = [f"region{k:02d}" for k in range(regions)]
    paths = {name: folder / f"{name}.csv" for name in ("expression", "connectivity", "coords")}
    index = pd.Index(labels, name="label")
    pd.DataFrame(expression, index=index, columns=[f"g{g}" for g in range(genes)]).to_csv(paths["expression"])
    pd.DataFrame(connectivity, index=labels, columns=labels).to_csv(paths["connectivity"])
    pd.DataFrame(coords, index=index, columns=["x", "y", "z"]).to_csv(paths["coords"])
    return {name: str(path) for name, path in paths.items()}


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- the commit, without a checkout ---------------------------------------------------------


def test_an_installed_copy_inside_another_repository_records_an_unknown_commit(tmp_path):
    """A wheel in a virtual environment kept inside a user's own repository: that repository's
    commit is not xattn's."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    package = tmp_path / "venv" / "site-packages" / "xattn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "provenance.py").write_text((REPO / "xattn" / "provenance.py").read_text())
    identity = ["-c", "user.email=user@example.org", "-c", "user.name=user"]
    subprocess.run(["git", "-C", str(tmp_path), *identity, "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *identity, "commit", "-qm", "the user's project"], check=True)
    printed = subprocess.run(
        [sys.executable, "-c", "from xattn.provenance import xattn_commit; c = xattn_commit(); print(c.sha, c.dirty)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(package.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.split() == [UNKNOWN, "None"]


def test_a_checkout_records_its_head():
    if not (REPO / ".git").exists():
        pytest.skip("the tests run outside a git checkout")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert xattn_commit().sha == head.strip()


# -- the data's hash ------------------------------------------------------------------------


def test_the_data_hash_follows_every_byte_and_option(tmp_path):
    files = write_user_files(tmp_path)
    spec = DataSpec(dataset=None, files=files)
    before = data_fingerprint(spec)
    assert before.files == {role: sha256(path) for role, path in files.items()}
    text = open(files["coords"]).read()
    open(files["coords"], "w").write(text.replace("1", "2", 1))  # one byte
    after = data_fingerprint(spec)
    assert after.hash != before.hash and {k for k in after.files if after.files[k] != before.files[k]} == {"coords"}

    # synthetic data: its options stand for it; a named dataset: its pinned files
    assert data_fingerprint(DataSpec(synthetic={"seed": 1})).hash != data_fingerprint(DataSpec()).hash
    assert data_fingerprint(DataSpec(dataset="hcp-s100-r08")).files == {
        rel: REGISTRY[rel] for rel in DATASETS["hcp-s100-r08"].files
    }


# -- a study on a user's own files -----------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    from xattn.studies import run_study
    from xattn.tuning.spec_file import parse_spec

    folder = tmp_path_factory.mktemp("data")
    files = write_user_files(folder)
    spec = parse_spec(
        {
            "name": "provenance-e2e",
            "data": {"dataset": None, "files": files, "split": {"folds": 3}},
            "model": {"fixed": {"nhead": 2, "num_layers": 1, "deep_hidden_dims": [8], "batch_size": 128}},
            "search": {"space": {"d_model": [8], "learning_rate": [0.005]}},
            "budget": {"trials": 2, "max_epochs": 2},
        }
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    return spec, workspace, run_study(spec, workspace), files


@pytest.mark.e2e
def test_the_study_run_and_every_trial_run_say_what_produced_them(study):
    spec, workspace, result, files = study
    client = MlflowClient(workspace.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs([result.experiment_id], f"tags.`{tags.PARENT_RUN}` = '{result.parent_run_id}'")
    assert len(children) == 2

    recorded = {key: value for key, value in parent.data.tags.items() if key.startswith("xattn.version.")}
    assert set(recorded) == {f"xattn.version.{p}" for p in ("python", "xattn", "torch", "ray", "optuna", "mlflow")}
    assert recorded["xattn.version.torch"] == torch.__version__
    commit = xattn_commit()
    assert parent.data.tags[tags.GIT_COMMIT] == commit.sha
    assert parent.data.tags[tags.GIT_DIRTY] == ("unknown" if commit.dirty is None else str(commit.dirty).lower())
    # the spec's hash is the sha256 of the study.yaml the run logged
    spec_file = client.download_artifacts(parent.info.run_id, "study.yaml", str(workspace.root))
    assert parent.data.tags[tags.SPEC_HASH] == sha256(spec_file)
    # the data's: every file it read, each hashed as it is on disk
    assert json.loads(parent.data.tags[tags.DATA_FILES]) == {role: sha256(path) for role, path in files.items()}
    assert parent.data.tags[tags.DATA_HASH] == data_fingerprint(spec.data).hash
    provenance = {key: value for key, value in parent.data.tags.items() if key in tags.PROVENANCE or key in recorded}
    for child in children:
        assert {key: child.data.tags.get(key) for key in provenance} == provenance


@pytest.mark.e2e
def test_the_registered_version_has_the_tags_a_person_filters_by_and_describes_the_rest(study):
    spec, workspace, result, _ = study
    client = MlflowClient(workspace.tracking_uri)
    version = client.get_model_version(spec.name, result.best["model_version"])
    parent = client.get_run(result.parent_run_id)
    metric = parent.data.tags[tags.METRIC]  # the spec's default: best_val_loss
    assert version.tags == {
        tags.STUDY: spec.name,
        tags.FAMILY: "cross_attention",
        tags.SPEC_HASH: parent.data.tags[tags.SPEC_HASH],
        tags.DATA_HASH: parent.data.tags[tags.DATA_HASH],
        tags.SELECTED_BY: metric,
        f"metric.{metric}": repr(result.best["metrics"][metric]),
    }
    description = version.description
    assert result.parent_run_id in description and result.best["run_id"] in description
    assert f"xattn commit `{parent.data.tags[tags.GIT_COMMIT]}`" in description
    assert f"torch {parent.data.tags['xattn.version.torch']}" in description
    assert "- sha256 weights.safetensors: " in description


@pytest.mark.e2e
def test_the_report_shows_the_recorded_provenance(study):
    from xattn.reporting.report import render_report
    from xattn.tracking.runs import find_parent_run

    spec, workspace, result, _ = study
    client = MlflowClient(workspace.tracking_uri)
    page = render_report(client, find_parent_run(client, spec.name), workspace)
    parent = client.get_run(result.parent_run_id)
    for tag in (tags.GIT_COMMIT, tags.SPEC_HASH, tags.DATA_HASH):
        assert f">{parent.data.tags[tag]}</code>" in page, tag
    assert "every trial run carries its own" in page


@pytest.mark.e2e
def test_evaluate_warns_when_one_byte_of_the_data_changed(study, tmp_path):
    spec, workspace, result, files = study
    export = tmp_path / "export"
    xattn("export", spec.name, "--out", export, "--workspace", workspace.root, cwd=tmp_path, check=True)
    recorded = json.loads((export / "metrics.json").read_text())["provenance"]
    assert recorded["data_hash"] == client_tag(workspace, result, tags.DATA_HASH)

    same = xattn("evaluate", export, "--json", cwd=tmp_path, check=True)
    assert "warning" not in same.stderr and json.loads(same.stdout.splitlines()[-1])["warnings"] == []

    original = open(files["expression"], "rb").read()
    try:
        changed = bytearray(original)
        position = original.index(b"0.", original.index(b"\n")) + 2  # a digit of the first value
        changed[position] = ord("1") if changed[position] != ord("1") else ord("2")
        open(files["expression"], "wb").write(bytes(changed))
        process = xattn("evaluate", export, cwd=tmp_path, check=True)
    finally:
        open(files["expression"], "wb").write(original)
    (warning,) = [line for line in process.stderr.splitlines() if line.strip()]
    now = data_fingerprint(DataSpec(dataset=None, files=files)).hash
    assert warning.startswith("warning: data hash differs: the model was trained on data " + recorded["data_hash"][:12])
    assert f"expression {files['expression']} changed" in warning
    assert now == recorded["data_hash"]  # restored: the fingerprint is of the bytes, nothing else


def client_tag(workspace, result, tag: str) -> str:
    return MlflowClient(workspace.tracking_uri).get_run(result.parent_run_id).data.tags[tag]
