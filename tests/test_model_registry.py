"""A study as MLflow and Optuna present it: the best trial in the model registry (alias `best`),
an experiment that opens as model training, runs named for what they are, and an Optuna study
whose objective and attributes point back at MLflow. One real study, run twice with the same
spec; read back with the MLflow client, the Optuna storage and the CLI. (A compared family's
Optuna study is checked through the dashboard, tests/test_dashboard.py.)
"""

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_cli import REPO, xattn

from xattn.errors import ModelNotFound
from xattn.export import export_best, export_manifest
from xattn.studies import run_study
from xattn.tracking.model_registry import BEST_ALIAS, register_best, registered_sha256
from xattn.tracking.runs import CheckpointCache
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import load_spec

pytestmark = pytest.mark.e2e

NAME = "registry-e2e"
TRIALS = 2


@pytest.fixture(scope="module")
def studies(tmp_path_factory, ray_local):
    spec = load_spec(
        REPO / "studies" / "quickstart.yaml",
        {"name": NAME, "budget.trials": TRIALS, "budget.max_epochs": 2},
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    first = run_study(spec, workspace)
    second = run_study(spec, workspace)  # the same spec again: a new study run, new trials
    return spec, workspace, first, second


def test_the_best_trial_is_registered_under_the_study_name(studies):
    spec, workspace, first, second = studies
    client = MlflowClient(workspace.tracking_uri)
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    # one version per study run's best trial, numbered in order, the alias on the newest
    assert {v: versions[v].run_id for v in versions} == {"1": first.best["run_id"], "2": second.best["run_id"]}
    assert (first.best["model_version"], second.best["model_version"]) == ("1", "2")
    assert second.best["model_uri"] == f"models:/{NAME}@{BEST_ALIAS}"
    best = client.get_model_version_by_alias(NAME, BEST_ALIAS)
    assert str(best.version) == "2" and best.run_id == second.best["run_id"]
    assert best.source == f"runs:/{second.best['run_id']}/checkpoint"
    assert client.get_run(second.parent_run_id).data.tags["xattn.model_version"] == "2"

    # tags: what a person filters versions by; the description: the rest of what an export records
    parent, run = client.get_run(second.parent_run_id), client.get_run(second.best["run_id"])
    assert best.tags == {
        "xattn.study": NAME,
        "xattn.family": "cross_attention",
        "xattn.spec_hash": parent.data.tags["xattn.spec_hash"],
        "xattn.data_hash": parent.data.tags["xattn.data_hash"],
        "xattn.selected_by": "best_val_pearson",
        "metric.best_val_pearson": repr(second.best["metrics"]["best_val_pearson"]),
    }
    with CheckpointCache(client) as checkpoints:
        manifest = export_manifest(client, NAME, parent, run, checkpoints)
    assert registered_sha256(best) == manifest["files"]
    assert set(manifest["files"]) == {"weights.safetensors", "config.json", "metrics.json"}
    assert f"study run `{second.parent_run_id}`" in best.description
    assert f"Optuna study `{second.optuna_study}`, trial {second.best['optuna_trial_number']};" in best.description
    for key in ("test_pearson", "best_val_pearson", "test_mse"):
        assert f"{key} {second.best['metrics'][key]:.6g}" in best.description
    assert client.get_registered_model(NAME).description == spec.description


def test_registering_a_run_again_reuses_its_version_and_moves_the_alias(studies):
    """What a resume that ends on an already registered best trial does."""
    _, workspace, first, second = studies
    client = MlflowClient(workspace.tracking_uri)
    try:
        for result, expected in ((first, "1"), (second, "2"), (second, "2")):
            parent, run = client.get_run(result.parent_run_id), client.get_run(result.best["run_id"])
            with CheckpointCache(client) as checkpoints:
                version = register_best(
                    client, NAME, parent, run, export_manifest(client, NAME, parent, run, checkpoints)
                )
            assert str(version.version) == expected
            assert str(client.get_model_version_by_alias(NAME, BEST_ALIAS).version) == expected
        assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    finally:  # the alias back where the second study run left it
        client.set_registered_model_alias(NAME, BEST_ALIAS, "2")


def test_the_experiment_opens_as_model_training_with_the_study_description(studies):
    spec, workspace, first, second = studies
    client = MlflowClient(workspace.tracking_uri)
    experiment = client.get_experiment(first.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"] == spec.description != ""
    for result in (first, second):
        assert client.get_run(result.parent_run_id).data.tags["mlflow.note.content"] == spec.description


def test_run_names_say_family_trial_fold_and_seed(studies):
    spec, workspace, first, _ = studies
    client = MlflowClient(workspace.tracking_uri)
    runs = client.search_runs([first.experiment_id], f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'")
    names = {r.data.tags["mlflow.runName"] for r in runs}
    assert names == {f"cross_attention-trial-{n}-fold{spec.data.split.fold}-seed{spec.seed}" for n in range(TRIALS)}


def test_the_optuna_study_names_its_objective_and_points_at_mlflow(studies):
    spec, workspace, first, _ = studies
    study = optuna.load_study(study_name=first.optuna_study, storage=workspace.optuna_storage)
    assert study.metric_names == ["best_val_pearson"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs == {
        "xattn_study": NAME,
        "xattn_family": "cross_attention",
        "mlflow_experiment_id": first.experiment_id,
        "mlflow_parent_run_id": first.parent_run_id,
        "mlflow_tracking_uri": workspace.tracking_uri,
    }


def test_export_of_the_registered_model_evaluates_to_the_best_trial(studies, tmp_path):
    spec, workspace, first, second = studies
    ws = ["--workspace", workspace.root]
    exported = json.loads(
        xattn(
            "export",
            f"models:/{NAME}@{BEST_ALIAS}",
            "--out",
            tmp_path / "model",
            *ws,
            "--json",
            cwd=tmp_path,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert exported["run_id"] == second.best["run_id"] and exported["model_version"] == "2"
    evaluated = json.loads(
        xattn("evaluate", tmp_path / "model", "--json", cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
    )
    assert evaluated["metrics"]["test_pearson"] == pytest.approx(second.best["metrics"]["test_pearson"], abs=1e-5)

    # exactly what exporting the study by name writes (the newest study run's best trial)
    export_best(NAME, tmp_path / "study", workspace)
    for name in ("manifest.json", "weights.safetensors", "config.json", "metrics.json"):
        assert (tmp_path / "model" / name).read_bytes() == (tmp_path / "study" / name).read_bytes(), name

    # a version number names the older study run's best trial
    info = export_best(f"models:/{NAME}/1", tmp_path / "v1", workspace)
    assert (
        info["run_id"] == json.loads((tmp_path / "v1" / "manifest.json").read_text())["run_id"] == first.best["run_id"]
    )


def test_an_unknown_alias_is_one_line_and_exit_2(studies, tmp_path):
    _, workspace, _, _ = studies
    process = xattn(
        "export", f"models:/{NAME}@nope", "--out", tmp_path / "out", "--workspace", workspace.root, cwd=tmp_path
    )
    assert process.returncode == 2, process.stderr
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"model '{NAME}' has no alias 'nope' (its aliases: best)" in lines[0], process.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "uri, expected",
    [
        (f"models:/{NAME}/9", f"model '{NAME}' has no version 9 (its versions: 1, 2)"),
        (
            "models:/no-such-model@best",
            f"no registered model 'no-such-model' in this tracking store; registered here: {NAME}",
        ),
        (f"models:/{NAME}", "is not a model URI: use models:/NAME@best or models:/NAME/VERSION"),
    ],
)
def test_other_bad_model_uris_name_what_is_there(studies, tmp_path, uri, expected):
    _, workspace, _, _ = studies
    with pytest.raises(ModelNotFound) as raised:
        export_best(uri, tmp_path / "out", workspace)
    assert expected in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_version_registered_before_descriptions_held_the_sha256_keeps_its_check():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    digest = "ab" * 32
    old = ModelVersion(NAME, "1", 0, tags=[ModelVersionTag("xattn.sha256.weights.safetensors", digest)])
    new = ModelVersion(NAME, "2", 0, description=f"trial 0\n\n- metrics: x 1\n- sha256 weights.safetensors: {digest}")
    assert registered_sha256(old) == registered_sha256(new) == {"weights.safetensors": digest}
