"""`xattn doctor` looks without leaving traces, and says where the data would come from."""

import json

from mlflow.entities import ViewType
from test_cli import xattn

from xattn.doctor import check_data
from xattn.tracking.store import Workspace

NO_MIRROR = {"XATTN_DATA_MIRROR": ""}  # no checksumming of every dataset of the mirror


def store_contents(workspace: Workspace) -> dict:
    """Every experiment (deleted ones too), every run and every artifact file of a workspace."""
    client = workspace.client()
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    return {
        "experiments": sorted((e.experiment_id, e.name, e.lifecycle_stage) for e in experiments),
        "runs": sorted((r.info.run_id, r.info.experiment_id, r.info.lifecycle_stage) for r in runs),
        "artifacts": sorted(str(p.relative_to(workspace.root)) for p in workspace.artifact_root.rglob("*")),
        # xattn.log is every command's log, doctor's too
        "files": sorted(p.name for p in workspace.root.iterdir() if p.name != "xattn.log"),
    }


def test_doctor_leaves_the_stores_as_it_found_them(tmp_path):
    workspace = Workspace.open(tmp_path / "ws")
    client = workspace.client()
    kept = client.create_experiment("kept", artifact_location=workspace.artifact_location("kept"))
    run = client.create_run(kept)
    client.log_text(run.info.run_id, "a study's file", "notes.txt")
    deleted = client.create_experiment("gone", artifact_location=workspace.artifact_location("gone"))
    client.delete_experiment(deleted)
    before = store_contents(workspace)
    assert "artifacts" in before["files"] and "optuna.db" not in before["files"]

    process = xattn("doctor", "--workspace", workspace.root, "--json", cwd=tmp_path, env=NO_MIRROR, timeout=180)
    checks = {check["name"]: check for check in json.loads(process.stdout.strip().splitlines()[-1])["checks"]}
    assert checks["tracking store"]["ok"] and "writable" in checks["tracking store"]["detail"], checks
    assert "left behind" not in checks["tracking store"]["detail"]
    assert checks["artifact store"]["ok"], checks
    # the Optuna file no study made yet is not made by looking at it
    assert checks["Optuna storage"] == {
        "name": "Optuna storage",
        "target": f"sqlite:///{workspace.root / 'optuna.db'}",
        "ok": True,
        "detail": "none yet: the first study creates it",
    }
    assert store_contents(workspace) == before


def test_doctor_on_a_workspace_no_study_has_made_makes_nothing(tmp_path):
    process = xattn("doctor", "--workspace", tmp_path / "ws", "--json", cwd=tmp_path, env=NO_MIRROR, timeout=180)
    checks = {check["name"]: check for check in json.loads(process.stdout.strip().splitlines()[-1])["checks"]}
    assert (
        checks["tracking store"]["detail"] == "none yet: the first study creates it" and checks["tracking store"]["ok"]
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert list(tmp_path.iterdir()) == []


def test_doctor_points_at_a_mirror_it_sees_but_studies_would_not_read(tmp_path, monkeypatch):
    """Studies read a mirror only where one is configured; a `shared/data` beside the project
    is named with the line that configures it."""
    (tmp_path / "shared" / "data" / "ENIGMA").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.delenv("XATTN_DATA_MIRROR", raising=False)
    check = check_data(None)
    assert check.ok and check.target == "download"
    assert check.detail.startswith("no mirror configured: named datasets are downloaded")
    assert f"set XATTN_DATA_MIRROR={tmp_path / 'shared' / 'data'}" in check.detail
