"""No password is ever shown: not printed, logged, recorded, reported, exported or put in a
printed command (xattn.passwords masks them in one place)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_concurrent_studies import spec as write_spec

from xattn.passwords import has_password, mask, without_password

URL_PASSWORD = "s3cret-Url-pw"
ENV_PASSWORD = "s3cret-Env-pw"


def test_every_url_password_in_a_text_is_masked_and_the_rest_kept():
    text = (
        "cannot connect to postgresql+psycopg://me:pa:ss@db:5432/x (timeout); "
        "see http://admin:hunter22@host:5000/#/runs and http://host:5000/path, sqlite:////tmp/a.db"
    )
    assert mask(text) == (
        "cannot connect to postgresql+psycopg://me:***@db:5432/x (timeout); "
        "see http://admin:***@host:5000/#/runs and http://host:5000/path, sqlite:////tmp/a.db"
    )
    assert without_password("http://admin:hunter22@host:5000") == "http://admin@host:5000"
    assert has_password("http://admin:hunter22@host") and not has_password("http://admin@host:5000")


def test_secrets_the_clients_read_from_the_environment_are_masked_too(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter22")
    monkeypatch.setenv("PGPASSWORD", "x")  # too short to mask without masking every "x"
    assert mask("basic auth with hunter22 failed for user x") == "basic auth with *** failed for user x"


def xattn(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "xattn.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )  # fmt: skip


def with_password(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).set(password=URL_PASSWORD).render_as_string(hide_password=False)


def assert_no_password(text: str, where: str) -> None:
    for secret in (URL_PASSWORD, ENV_PASSWORD):
        assert secret not in text, f"{where} shows a password: ...{text[max(0, text.find(secret) - 80) :][:160]}..."


@pytest.mark.e2e  # MLflow's migrations on PostgreSQL take about 20 s
def test_a_study_on_stores_with_passwords_never_shows_them(tmp_path):
    """Tracking and Optuna storage on PostgreSQL URLs that carry a password (this server trusts
    loopback, so the password is accepted and not needed), and a tracking password in the
    environment: the study, its report and its export show neither, and the commands it prints
    run as printed once the environment supplies the password."""
    from services import postgres_database

    env = {"MLFLOW_TRACKING_PASSWORD": ENV_PASSWORD}
    with postgres_database() as mlflow_db, postgres_database() as optuna_db:
        tracking, storage = with_password(mlflow_db), with_password(optuna_db)
        stores = ["--workspace", tmp_path / "ws", "--tracking-uri", tracking]
        run = xattn("-v", "study", "run", write_spec(tmp_path, "secret"), *stores, "--optuna-storage", storage,
                    "--json", cwd=tmp_path, env=env)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert_no_password(run.stdout + run.stderr, "study run's output (with -v: the libraries' logs)")
        assert_no_password((tmp_path / "ws" / "xattn.log").read_text(), "the workspace log")
        assert json.loads(run.stdout.strip().splitlines()[-1])["tracking_uri"] == mask(tracking)

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("secret")
        assert_no_password(json.dumps(experiment.tags), "the experiment's tags")
        for recorded in client.search_runs([experiment.experiment_id]):
            assert_no_password(json.dumps([recorded.data.params, recorded.data.tags]), "a run's params and tags")
            folder = Path(client.download_artifacts(recorded.info.run_id, "", str(tmp_path / recorded.info.run_id)))
            for path in (p for p in folder.rglob("*") if p.suffix in (".json", ".yaml", ".csv", ".txt", ".html")):
                assert_no_password(path.read_text(errors="replace"), f"artifact {path.name}")
        for study in optuna.get_all_study_summaries(storage):
            loaded = optuna.load_study(study_name=study.study_name, storage=storage)
            attrs = [loaded.user_attrs] + [[t.user_attrs, t.system_attrs] for t in loaded.trials]
            assert_no_password(json.dumps(attrs, default=str), "Optuna's attributes")

        report = xattn("report", "secret", *stores, "--optuna-storage", storage, "--out", tmp_path / "r.html",
                       cwd=tmp_path, env=env)  # fmt: skip
        assert report.returncode == 0, report.stdout + report.stderr
        assert_no_password((tmp_path / "r.html").read_text() + report.stdout + report.stderr, "the report")
        export = xattn("export", "secret", *stores, "--out", tmp_path / "export", cwd=tmp_path, env=env)
        assert export.returncode == 0, export.stdout + export.stderr
        for path in (tmp_path / "export").iterdir():
            assert_no_password(path.read_text(errors="replace") if path.suffix != ".safetensors" else "", path.name)

        # The printed commands leave the password out, say so, and run once PGPASSWORD holds it.
        (show,) = [line.strip() for line in run.stdout.splitlines() if line.strip().startswith("xattn study show")]
        assert mask(tracking).replace(":***", "") in show and "PGPASSWORD" in run.stdout
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        shown = subprocess.run(
            show, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PGPASSWORD": URL_PASSWORD, "PATH": path},
        )  # fmt: skip
        assert shown.returncode == 0 and "secret" in shown.stdout, shown.stdout + shown.stderr

    refused = xattn("study", "show", "secret", "--workspace", tmp_path / "ws", "--tracking-uri",
                    f"postgresql+psycopg://me:{URL_PASSWORD}@127.0.0.1:1/none", cwd=tmp_path, env=env)  # fmt: skip
    assert refused.returncode != 0 and refused.stderr.startswith("error:"), refused.stdout + refused.stderr
    assert_no_password(refused.stdout + refused.stderr, "an error about an unreachable store")
