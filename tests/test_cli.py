"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import html
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def xattn(*args, cwd, check=False, timeout=600, env=None):
    """The CLI in a subprocess; `env` entries set to None are removed from its environment."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }  # output to a pipe at rich's default width: wrapping shows
    env = {name: value for name, value in env.items() if value is not None}
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and process.returncode != 0:
        raise AssertionError(
            f"xattn {' '.join(map(str, args))} exited {process.returncode}:\n{process.stdout}\n{process.stderr}"
        )
    return process


def printed_commands(text: str) -> list[list[str]]:
    """The `xattn ...` commands in printed text, one a line, as a shell splits them (comments dropped)."""
    return [shlex.split(line, comments=True)[1:] for line in text.splitlines() if line.strip().startswith("xattn ")]


def run_as_printed(args: list[str], cwd: Path) -> str:
    """Run a printed command; return its stdout. A server (ui, dashboard) is given a free port,
    must announce itself and serve, and is then stopped."""
    if args[0] not in ("ui", "dashboard"):
        return xattn(*args, cwd=cwd, check=True).stdout
    from services import free_port, port_open, wait_until

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", *args, "--port", str(port)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: port_open(port), f"xattn {' '.join(args)}", server)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    assert f"on http://127.0.0.1:{port} (Ctrl-C stops it)" in out and err == "", out + err
    return out


def write_spec(tmp_path, **changes):
    raw = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"budget.trails": 2}, "unknown key (did you mean 'trials'?)"),
        ({"budget.trials": "two"}, "budget.trials"),
        ({"model.fixed.d_model": 30, "search.space.nhead": [4]}, "not divisible by nhead"),
        ({"data.dataset": None, "data.files": {"expression": "missing.csv", "connectivity": "c.csv"}}, "missing.csv"),
        ({"data.dataset": "hcp-s1000"}, "hcp-s1000"),
        # the final runs' outer folds, checked before the search instead of failing every final run after it
        ({"compare_with": ["cge"], "comparison.folds": 40}, "comparison.folds: n_folds=40 does not fit 64 regions"),
    ],
)
def test_bad_spec_stops_before_anything_is_written(tmp_path, changes, expected):
    spec = write_spec(tmp_path, **changes)
    if "search.space.nhead" in changes:
        spec_raw = yaml.safe_load(spec.read_text())
        spec_raw["search"]["space"].pop("d_model")
        spec.write_text(yaml.safe_dump(spec_raw))
    workspace = tmp_path / "ws"
    process = xattn("study", "run", spec, "--workspace", workspace, cwd=tmp_path)
    assert process.returncode == 2, process.stderr
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, process.stderr
    assert expected in lines[0]
    assert not workspace.exists()


def test_malformed_yaml_exits_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n  bad: [\n")
    process = xattn("study", "run", spec, "--workspace", tmp_path / "ws", cwd=tmp_path)
    assert process.returncode == 2
    assert "malformed YAML" in process.stderr


@pytest.mark.parametrize(
    "store_flags, expected",
    [
        (["--tracking-uri", "http://127.0.0.1:9"], "cannot use the tracking store http://127.0.0.1:9"),
        (["--optuna-storage", "postgresql://someone:secret@127.0.0.1:9/none"], "someone:***@127.0.0.1:9"),
        (["--optuna-storage", "not a url"], "is not a SQLAlchemy URL"),
    ],
)
def test_unusable_stores_stop_the_study_with_one_line(tmp_path, store_flags, expected):
    process = xattn(
        "study", "run", write_spec(tmp_path), "--workspace", tmp_path / "ws", *store_flags, cwd=tmp_path, timeout=120
    )
    assert process.returncode == 2, process.stderr
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert expected in line and "secret" not in process.stderr
    assert not (tmp_path / "ws" / "ray").exists()


def test_an_unwritable_workspace_stops_the_study(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    process = xattn("study", "run", write_spec(tmp_path), "--workspace", blocked / "ws", cwd=tmp_path)
    assert process.returncode == 2
    assert f"{blocked} is a file, not a folder" in process.stderr


def test_a_workspace_without_a_store_exits_2_and_stays_empty(tmp_path):
    process = xattn("study", "show", "nope", "--workspace", tmp_path / "ws", cwd=tmp_path)
    assert process.returncode == 2
    assert f"no tracking store at {tmp_path / 'ws' / 'mlflow.db'}" in process.stderr
    assert not (tmp_path / "ws").exists()


def test_data_list_and_info(tmp_path, mirror):
    listed = json.loads(xattn("data", "list", "--json", cwd=tmp_path, check=True).stdout.strip().splitlines()[-1])
    assert {"hcp-s100", "hcp-s100-sc", "hcp-s100-r08", "hcp-s400", "synthetic"} <= {row["name"] for row in listed}
    info = json.loads(
        xattn("data", "info", "hcp-s100-r08", "--json", cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
    )
    assert info["regions"] == 100 and info["genes"] == 34


@pytest.mark.e2e
def test_quickstart_from_the_cli(tmp_path):
    """The demo's path, shortened: run, show, export, evaluate, all as a user types them."""
    process = xattn(
        "study",
        "run",
        REPO / "studies" / "quickstart.yaml",
        "--trials",
        2,
        "--max-epochs",
        2,
        "--json",
        cwd=tmp_path,
        check=True,
    )
    printed = process.stdout
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["name"] == "quickstart" and result["trial_counts"] == {"finished": 2}
    assert_the_runs_link_shows_the_trials_and_their_numbers(process.stdout, result)

    shown = json.loads(
        xattn("study", "show", "quickstart", "--json", cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
    )
    assert shown["parent_run_id"] == result["parent_run_id"]
    assert len(shown["trials"]) == 2
    assert {t["parent_run_id"] for t in shown["trials"]} == {result["parent_run_id"]}

    # Careless follow-ups: a run id that is no study run, a resume of a study that finished.
    trial_run = shown["trials"][0]["run_id"]
    # (report and compare find the study run with the same store.find_parent_run)
    for command in (["study", "show", "quickstart"], ["export", "quickstart", "--out", tmp_path / "other"]):
        process = xattn(*command, "--run-id", trial_run, cwd=tmp_path)
        assert process.returncode == 2 and len(process.stderr.strip().splitlines()) == 1, process.stderr
        assert (
            f"is not a study run of 'quickstart'; its study runs, newest first: {result['parent_run_id']}"
            in process.stderr
        )
    resumed = xattn("study", "resume", "quickstart", cwd=tmp_path)
    assert resumed.returncode == 2 and resumed.stdout == ""
    assert (
        f"the newest run of study 'quickstart' ({result['parent_run_id']}) finished: nothing to resume"
        in resumed.stderr
    )

    # Every command the study's end message suggests runs as printed (the servers on a free
    # port), then those the export and the report print.
    suggested = printed_commands(printed)
    assert [args[:2] for args in suggested] == [
        ["study", "show"], ["ui"], ["export", "quickstart"], ["evaluate", "exports/quickstart"],
        ["report", "quickstart"], ["dashboard"],
    ]  # fmt: skip
    outputs = [run_as_printed(args, tmp_path) for args in suggested]
    exported, reported = outputs[2], outputs[4]
    assert printed_commands(exported) == [["evaluate", "exports/quickstart"]]
    report = Path(reported.strip().splitlines()[-1])
    from_report = [
        shlex.split(html.unescape(code))[1:] for code in re.findall(r"<code>(xattn [^<]*)</code>", report.read_text())
    ]
    assert ["export", "quickstart"] in from_report  # again: it replaces the export of the same study
    for args in from_report:
        run_as_printed(args, tmp_path)
    # What they wrote: exports/STUDY (git-ignored) and the workspace's reports (.xattn/, ignored too),
    # every text file ending in a newline.
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "exports/" in ignored and ".xattn/" in ignored and report.is_relative_to(tmp_path / ".xattn")
    for path in [*(tmp_path / "exports" / "quickstart").iterdir(), report]:
        if path.suffix in (".json", ".html", ".csv", ".txt"):
            assert path.read_text().endswith("\n"), path
    xattn("export", "quickstart", "--out", tmp_path / "best", cwd=tmp_path, check=True)
    (tmp_path / "best" / "stale.txt").write_text("from an earlier export")
    xattn("export", "quickstart", "--out", tmp_path / "best", "--force", cwd=tmp_path, check=True)  # replaces an export
    assert not (tmp_path / "best" / "stale.txt").exists()
    evaluated = json.loads(
        xattn("evaluate", tmp_path / "best", "--json", cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
    )
    assert evaluated["metrics"]["test_pearson"] == pytest.approx(result["best"]["metrics"]["test_pearson"], abs=1e-4)


def assert_the_runs_link_shows_the_trials_and_their_numbers(stdout: str, result: dict) -> None:
    """The printed MLflow link opens a view (stored where MLflow's UI reads it) whose filter finds
    the study's trials, whose sort and columns are params and metrics the trials have, and whose
    metrics draw as lines: a point per epoch."""
    from urllib.parse import parse_qs, urlsplit

    from mlflow.tracking import MlflowClient

    (link,) = [line.split("then ", 1)[1] for line in stdout.splitlines() if "#/experiments/" in line]
    route = urlsplit(urlsplit(link).fragment)
    assert route.path == f"/experiments/{result['experiment_id']}/runs"
    query = parse_qs(route.query)
    assert query["workflowType"] == ["machine_learning"] and query["viewStateShareKey"] == [result["runs_view"]]
    client = MlflowClient(result["tracking_uri"])
    tag = client.get_experiment(result["experiment_id"]).tags[f"mlflow.sharedViewState.{result['runs_view']}"]
    view = json.loads(tag)
    trials = client.search_runs([result["experiment_id"]], view["searchFilter"], order_by=[view["orderByKey"]])
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {result["parent_run_id"]} and len(trials) == 2
    assert view["orderByKey"] == "metrics.`best_val_pearson`" and view["orderByAsc"] is False  # the spec's metric
    spec = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    columns = {tuple(column.split(".", 1)) for column in view["selectedColumns"]}
    assert {name.strip("`") for kind, name in columns if kind == "params"} == set(spec["search"]["space"])
    assert ("tags", "`xattn.family`") in columns
    assert view["columnOrder"] == view["selectedColumns"]  # family, then metrics, then params
    metrics = {name.strip("`") for kind, name in columns if kind == "metrics"}
    assert {"best_val_pearson", "test_pearson"} <= metrics
    for run in trials:
        assert metrics <= set(run.data.metrics)
        for key in run.data.metrics:  # two epochs each (ASHA stops none before its grace period)
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key


def test_doctor_names_a_tracking_server_that_is_down(tmp_path):
    process = xattn(
        "doctor", "--workspace", tmp_path / "ws", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path, timeout=120
    )
    assert process.returncode == 1
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert "tracking store" in line and "http://127.0.0.1:9" in line
    assert "FAIL" in process.stdout


def test_ray_address_comes_from_the_environment_when_not_passed(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    process = xattn("doctor", "--workspace", tmp_path / "ws", "--json", cwd=tmp_path, timeout=120)
    checks = {check["name"]: check for check in json.loads(process.stdout.strip().splitlines()[-1])["checks"]}
    assert checks["Ray"]["target"] == "127.0.0.1:9" and not checks["Ray"]["ok"]
    assert "not reachable" in checks["Ray"]["detail"]


def test_help_lists_the_commands_in_their_order():
    """Each module of xattn/cli/ registers its commands when xattn/cli/__init__.py imports it:
    that order is the help's.
    """
    from xattn.cli import app
    from xattn.cli.common import data_app, study_app

    assert [command.name for command in app.registered_commands] == [
        "compare", "compare-local", "report", "doctor", "ui", "dashboard", "export", "evaluate", "attention",
    ]  # fmt: skip
    assert [group.name for group in app.registered_groups] == ["study", "data"]
    assert [command.name for command in study_app.registered_commands] == ["run", "resume", "list", "show"]
    assert [command.name for command in data_app.registered_commands] == ["list", "fetch", "info"]
