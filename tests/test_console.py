"""What the terminal says (issue 14): one-line errors that write nothing, flags that read as
flags, a quiet console with the library logs in the workspace, and `xattn ui` ending with
every process it started. Every test runs the real CLI with its output to a pipe."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from services import free_port, port_open, wait_until
from test_cli import write_spec, xattn

NONSENSE = "nonsense://x"
NO_MIRROR = {"XATTN_DATA_MIRROR": ""}  # doctor then skips checksumming every dataset of the mirror


def one_error_line(process) -> str:
    """The exit code is 2 and stderr is exactly one line (no traceback, no framed panel)."""
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["study", "run", "SPEC"],
        ["study", "list"],
        ["study", "show", "quickstart"],
        ["study", "resume", "quickstart"],
        ["doctor"],
        ["ui"],
        ["export", "quickstart", "--out", "exported"],
        ["report", "quickstart"],
        ["compare", "quickstart"],
    ],
)
def test_a_tracking_uri_mlflow_cannot_open_is_one_line_and_writes_nothing(tmp_path, command):
    spec = write_spec(tmp_path)
    args = [str(spec) if part == "SPEC" else part for part in command]
    process = xattn(*args, "--workspace", tmp_path / "ws", "--tracking-uri", NONSENSE, cwd=tmp_path, timeout=120)
    line = one_error_line(process)
    assert NONSENSE in line and "'nonsense'" in line and "sqlite:///" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize(
    "command", [["study", "list"], ["study", "show", "quickstart"], ["export", "quickstart", "--out", "exported"]]
)
def test_a_tracking_server_that_is_down_is_one_line_within_seconds(tmp_path, command):
    process = xattn(
        *command, "--workspace", tmp_path / "ws", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path, timeout=60
    )
    assert "cannot use the tracking store http://127.0.0.1:9" in one_error_line(process)
    assert list(tmp_path.iterdir()) == []


def test_the_tracking_uri_from_the_environment_is_named_as_such(tmp_path):
    env = {"MLFLOW_TRACKING_URI": NONSENSE}
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "list", "--workspace", str(tmp_path / "ws")],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "$MLFLOW_TRACKING_URI nonsense://x" in one_error_line(process)
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command", [["study", "run", "SPEC"], ["study", "list"], ["doctor"]])
def test_a_workspace_that_is_a_file_is_called_a_file(tmp_path, command):
    spec = write_spec(tmp_path)
    blocked = tmp_path / "notes.txt"
    blocked.write_text("mine")
    args = [str(spec) if part == "SPEC" else part for part in command]
    line = one_error_line(xattn(*args, "--workspace", blocked, cwd=tmp_path, timeout=120))
    assert f"{blocked} is a file, not a folder" in line
    assert blocked.read_text() == "mine"


def test_export_to_a_file_is_called_a_file(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").touch()
    blocked = tmp_path / "notes.txt"
    blocked.write_text("mine")
    line = one_error_line(
        xattn("export", "quickstart", "--out", blocked / "best", "--workspace", tmp_path / "ws", cwd=tmp_path)
    )
    assert f"{blocked} is a file, not a folder" in line and blocked.read_text() == "mine"


UNWRITABLE = "/proc/xattn-test"  # refused even to root, on every Linux


def a_store(tmp_path: Path) -> Path:
    """A workspace whose tracking file exists (MLflow makes its tables in an empty file)."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").touch()
    return tmp_path / "ws"


def an_empty_export(tmp_path: Path) -> Path:
    """A folder that passes the manifest check (it lists no files) but rebuilds nothing."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text('{"files": {}}')
    return export


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            ["export", "quickstart", "--out", f"{UNWRITABLE}/best"],
            f"--out {UNWRITABLE}/best cannot be written in /proc",
        ),
        (["report", "quickstart", "--out", f"{UNWRITABLE}.html"], "--out /proc cannot be written"),
        (
            ["report", "quickstart", "--out", "SPEC"],
            "is a file, not a folder: give a folder, or a file name ending in .html",
        ),
        (["attention", "EXPORT", "--out", UNWRITABLE], f"--out {UNWRITABLE} cannot be written"),
        (
            ["data", "fetch", "hcp-s100-r08", "--cache-dir", UNWRITABLE],
            f"download cache {UNWRITABLE} cannot be written",
        ),
        (
            ["study", "run", "SPEC", "--optuna-storage", f"sqlite:///{UNWRITABLE}/optuna.db"],
            f"Optuna storage sqlite:///{UNWRITABLE}/optuna.db: its folder {UNWRITABLE} cannot be written in /proc",
        ),
        (
            ["study", "run", "SPEC", "--tracking-uri", f"sqlite:///{UNWRITABLE}/mlflow.db"],
            f"tracking store sqlite:///{UNWRITABLE}/mlflow.db: its folder {UNWRITABLE} cannot be written in /proc",
        ),
        (
            ["compare-local", "SPEC", "--set", "compare_with=[distance_decay]", "--json-out", f"{UNWRITABLE}.json"],
            "--json-out /proc cannot be written",
        ),
    ],
    ids=[
        "export",
        "report",
        "report-to-a-file",
        "attention",
        "data-cache",
        "optuna-sqlite",
        "tracking-sqlite",
        "compare-local",
    ],
)
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path, command, expected):
    """Checked before a study, a render or a download starts: nothing is left anywhere."""
    spec, workspace, export = write_spec(tmp_path), a_store(tmp_path), an_empty_export(tmp_path)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    args = [{"SPEC": spec, "EXPORT": export}.get(part, part) for part in command]
    process = xattn(*args, "--workspace", workspace, cwd=tmp_path, env=NO_MIRROR, timeout=120) if command[0] not in (
        "attention", "data", "compare-local") else xattn(*args, cwd=tmp_path, env=NO_MIRROR, timeout=120)  # fmt: skip
    assert expected in one_error_line(process)
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--tracking-uri", "file:///tmp/mlruns"],
            "MLflow 3 no longer opens folder (file) stores; use sqlite:///PATH.db",
        ),
        (["--tracking-uri", "mlruns"], "MLflow 3 no longer opens folder (file) stores"),
        (["--tracking-uri", "sqlite://mlflow.db"], "three or four slashes"),
        (["--optuna-storage", "sqlite://"], "is in memory: the study would vanish with this process"),
        # MLflow's own engine retried this refused port for minutes
        (
            ["--tracking-uri", "postgresql://127.0.0.1:PORT/x"],
            "cannot use the tracking store postgresql://127.0.0.1:PORT/x",
        ),
    ],
    ids=["file-store", "bare-path", "sqlite-two-slashes", "optuna-in-memory", "database-refused"],
)
def test_store_uris_a_study_cannot_use_are_one_line_within_seconds(tmp_path, flags, expected):
    port = str(free_port())
    flags, expected = [flag.replace("PORT", port) for flag in flags], expected.replace("PORT", port)
    process = xattn(
        "study", "run", write_spec(tmp_path), "--workspace", tmp_path / "ws", *flags, cwd=tmp_path, timeout=60
    )
    assert expected in one_error_line(process)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_a_ray_cluster_that_is_not_there_is_one_line_and_writes_nothing(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    process = xattn(
        "study",
        "run",
        write_spec(tmp_path),
        "--workspace",
        tmp_path / "ws",
        "--address",
        address,
        cwd=tmp_path,
        timeout=120,
    )
    line = one_error_line(process)
    assert f"cannot reach the Ray cluster at {address} (Connection refused)" in line and "ray start --head" in line
    assert not (tmp_path / "ws").exists()


def test_a_trial_larger_than_the_machine_is_refused_instead_of_waiting_forever(tmp_path):
    """Ray would queue the trials for resources that never come, and print nothing."""
    spec = write_spec(tmp_path, **{"resources.gpus": 64})
    line = one_error_line(xattn("study", "run", spec, "--workspace", tmp_path / "ws", cwd=tmp_path, timeout=120))
    assert "resources.gpus 64 per trial, but this machine has" in line and "GPUs" in line
    assert not (tmp_path / "ws").exists()


def test_sigterm_leaves_the_study_killed_and_resumable(tmp_path):
    """`kill PID` of a running study: Ray's own SIGTERM handler would print a stack and leave
    the run FAILED; the CLI's marks it KILLED and prints the resume command."""
    spec = write_spec(tmp_path, **{"budget.trials": 1, "budget.max_epochs": 100_000})
    study = subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", "study", "run", str(spec), "--workspace", str(tmp_path / "ws")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in study.stdout:
            if line.startswith("started"):
                break
        os.kill(study.pid, signal.SIGTERM)
        _, stderr = study.communicate(timeout=120)
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "interrupted: the study run is marked KILLED; "
        f"continue it with `xattn study resume quickstart --workspace {tmp_path / 'ws'}`"
    ]
    (listed,) = json.loads(
        xattn("study", "list", "--workspace", tmp_path / "ws", "--json", cwd=tmp_path, check=True).stdout
    )
    assert listed["latest_status"] == "KILLED"


def test_one_database_for_both_stores_is_refused_before_anything_starts(tmp_path):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    process = xattn(
        "study", "run", write_spec(tmp_path), "--workspace", tmp_path / "ws",
        "--tracking-uri", shared, "--optuna-storage", shared,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    line = one_error_line(process)
    assert "one database" in line and "alembic_version" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.fixture(scope="module")
def mlflow_database(tmp_path_factory) -> Path:
    """A database that holds MLflow's schema (a workspace's mlflow.db, or a tracking server's backend)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def test_an_optuna_storage_in_mlflow_s_database_is_refused_by_run_and_doctor(tmp_path, mlflow_database):
    storage = ["--optuna-storage", f"sqlite:///{mlflow_database}"]
    before = mlflow_database.read_bytes()
    process = xattn(
        "study", "run", write_spec(tmp_path), "--workspace", tmp_path / "ws", *storage, cwd=tmp_path, timeout=120
    )
    line = one_error_line(process)
    assert "already holds MLflow's schema" in line and "Optuna needs one of its own" in line
    assert not (tmp_path / "ws").exists() and mlflow_database.read_bytes() == before

    # `xattn doctor`'s row for that storage (the whole doctor takes 15 s of imports and probes)
    from xattn.doctor import check_optuna

    row = check_optuna(f"sqlite:///{mlflow_database}")
    assert not row.ok and "already holds MLflow's schema" in row.detail


def test_flags_read_as_flags_in_help():
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "run", "--help"], capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 0
    assert "<bool>" not in process.stdout
    (json_line,) = [line for line in process.stdout.splitlines() if "--json" in line]
    assert "Print one JSON object" in json_line
    (trials_line,) = [line for line in process.stdout.splitlines() if "--trials" in line]
    assert " N " in trials_line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["study", "run"], "Missing argument 'SPEC'"),
        (["study", "list", "--bogus"], "No such option: --bogus"),
        (["ui", "--port", "eighty"], "Invalid value for '--port'"),
        (["ui", "--port", "70000"], "less than or equal to 65535"),
        (["dashboard", "--port", "0"], "greater than or equal to 1"),
    ],
)
def test_usage_errors_are_one_line_too(tmp_path, args, expected):
    line = one_error_line(xattn(*args, cwd=tmp_path))
    assert expected in line and "--help" in line


def test_max_epochs_in_scientific_notation(tmp_path):
    raw = yaml.safe_load(write_spec(tmp_path).read_text())
    raw["budget"]["max_epochs"] = "1e9"  # what YAML makes of `max_epochs: 1e9`
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    line = one_error_line(xattn("study", "run", spec, "--workspace", tmp_path / "ws", cwd=tmp_path))
    assert "budget.max_epochs" in line and "less than or equal to 100000" in line
    assert not (tmp_path / "ws").exists()
    # Whole numbers in that notation pass; the study then stops on the next mistake.
    line = one_error_line(
        xattn(
            "study",
            "run",
            spec,
            "--max-epochs",
            "2e1",
            "--trials",
            "1e0",
            "--set",
            "budget.min_steps=1e9x",
            cwd=tmp_path,
        )
    )
    assert "budget.min_steps" in line and "budget.max_epochs" not in line


def write_matrix(path: Path, labels: list[str], genes: list[str] | None = None) -> Path:
    columns = genes or labels
    rows = [",".join(["label", *columns])]
    rows += [
        ",".join([label, *(f"{(i * 7 + j) % 5 / 10:.1f}" for j in range(len(columns)))])
        for i, label in enumerate(labels)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_labelled_files_of_different_sizes_name_the_labels_that_differ(tmp_path):
    regions = [f"R{i}" for i in range(12)]
    write_matrix(tmp_path / "expression.csv", regions[:10], genes=["G1", "G2", "G3"])
    write_matrix(tmp_path / "connectivity.csv", regions)
    spec = write_spec(
        tmp_path,
        **{"data.dataset": None, "data.files": {"expression": "expression.csv", "connectivity": "connectivity.csv"}},
    )
    line = one_error_line(xattn("study", "run", spec, "--workspace", tmp_path / "ws", cwd=tmp_path))
    assert "R10" in line and "R11" in line and "add labels" not in line
    assert not (tmp_path / "ws").exists()


def exit_and_heavy_imports(args: list, cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI; return the process and which of Ray, torch, MLflow and Optuna it had imported on exit."""
    probe = (
        "import sys\n"
        "from xattn.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as stop:\n"
        "    print(','.join(m for m in ('ray', 'torch', 'mlflow', 'optuna') if m in sys.modules), file=sys.stderr)\n"
        "    sys.exit(stop.code)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", probe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    *lines, imported = process.stderr.splitlines()
    return subprocess.CompletedProcess(args, process.returncode, process.stdout, "\n".join(lines)), [
        m for m in imported.split(",") if m
    ]


def test_a_data_error_comes_before_ray_mlflow_and_optuna_are_imported(tmp_path):
    spec = write_spec(
        tmp_path, **{"data.dataset": None, "data.files": {"expression": "gone.csv", "connectivity": "gone.csv"}}
    )
    process, imported = exit_and_heavy_imports(["study", "run", spec, "--workspace", tmp_path / "ws"], tmp_path)
    assert "gone.csv" in one_error_line(process)
    assert imported == ["torch"]  # the spec's model families are checked with torch


def test_report_of_an_unknown_study_does_not_import_ray_or_torch(tmp_path, mlflow_database):
    process, imported = exit_and_heavy_imports(["report", "nope", "--workspace", mlflow_database.parent], tmp_path)
    assert "no study named 'nope'" in one_error_line(process)
    assert imported == ["mlflow"]


def test_verbose_shows_the_library_logs_that_also_go_to_the_workspace(tmp_path):
    """MLflow logs its schema migrations at INFO when it opens a new store (here an empty file).
    That the console stays quiet without -v is checked on a whole study, in test_progress.py."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").touch()
    verbose = xattn("-v", "study", "list", "--workspace", tmp_path / "ws", cwd=tmp_path, timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    assert "mlflow.store.db.utils" in verbose.stderr
    assert "mlflow.store.db.utils" in (tmp_path / "ws" / "xattn.log").read_text()


# --- xattn ui -------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ui_on_a_port_in_use_is_one_line(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").touch()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = one_error_line(xattn("ui", "--workspace", tmp_path / "ws", "--port", port, cwd=tmp_path, timeout=60))
    assert f"port {port} on 127.0.0.1 is in use" in line


def test_ui_says_one_line_logs_the_server_and_ends_with_every_process_it_started(tmp_path):
    """Stopped by its pid (`kill PID`). MLflow's notices, Starlette's deprecation and uvicorn's
    line per request go to the workspace log, not the terminal."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").touch()  # a store (MLflow creates its tables on an empty file)
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", "ui", "--workspace", str(tmp_path / "ws"), "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started: set[int] = set()
    try:
        wait_until(lambda: port_open(port), "xattn ui", ui)
        started = descendants(ui.pid)
        assert len(started) >= 2, started  # mlflow, and the server (and job runner) under it
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health?from=the-test", timeout=30) as response:
            assert response.status == 200
        os.kill(ui.pid, signal.SIGTERM)  # `kill PID`
        stdout, stderr = ui.communicate(timeout=60)
        assert stdout.splitlines() == [
            f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it); studies are under Model training in its "
            f"sidebar; server messages go to ws/xattn.log"
        ]
        assert stderr == ""
        log = (tmp_path / "ws" / "xattn.log").read_text()
        assert "GET /health?from=the-test" in log and "Uvicorn running" in log
        deadline = time.monotonic() + 60
        while (port_open(port) or any(alive(pid) for pid in started)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_open(port), "the port still answers"
        assert not [pid for pid in started if alive(pid)], "processes of the UI are still running"
    finally:
        for pid in [ui.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_mlflow_ui_gets_a_store_s_password_by_environment_and_logs_it_masked(tmp_path, monkeypatch, caplog):
    """`ps` shows a command line to every user of the machine; the log is read by people too."""
    from xattn import dashboard

    started = {}
    monkeypatch.setattr(dashboard, "run_server", lambda command, **kwargs: started.update(command=command, **kwargs))
    uri = "postgresql://me:s3cret-pw@db.example/mlflow"
    with caplog.at_level("INFO", logger="xattn.dashboard"):
        dashboard.serve_mlflow_ui(uri, "127.0.0.1", free_port(), announce=lambda url: None, log=tmp_path / "x.log")
    assert not any("s3cret-pw" in part for part in started["command"])
    assert started["env"]["MLFLOW_BACKEND_STORE_URI"] == uri and started["log"] == tmp_path / "x.log"
    assert "me:***@db.example" in caplog.text and "s3cret-pw" not in caplog.text


SERVER_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "parent-killed"])
def test_a_server_and_its_children_end_when_the_command_that_started_them_does(tmp_path, stop):
    """run_server (what `xattn ui` runs mlflow under) with a small server tree: SIGKILL leaves
    the parent no chance to clean up, as when it dies."""
    runner = (
        "import sys\n"
        "from xattn.processes import run_server\n"
        f"sys.exit(run_server([sys.executable, '-c', {SERVER_TREE!r}]))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
    server_child = int(parent.stdout.readline())
    started = descendants(parent.pid)
    assert server_child in started and len(started) >= 3  # the guard, the server, its child
    os.kill(parent.pid, stop)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [pid for pid in started if alive(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "the server or its child outlived the command"
    if stop == signal.SIGINT:
        assert parent.returncode == 0


@pytest.mark.e2e  # MLflow's migrations on PostgreSQL take 20 s; the SQLite test above checks the same refusal
def test_optuna_in_the_database_behind_the_tracking_server_is_refused(tmp_path):
    """The table's case: a tracking server whose backend is database D, and --optuna-storage D."""
    from mlflow.tracking import MlflowClient
    from services import postgres_database

    with postgres_database() as database:
        MlflowClient(database).search_experiments()  # the server's schema, as `mlflow server` makes it
        process = xattn(
            "study",
            "run",
            write_spec(tmp_path),
            "--workspace",
            tmp_path / "ws",
            "--optuna-storage",
            database,
            cwd=tmp_path,
            timeout=120,
        )
        line = one_error_line(process)
        assert "already holds MLflow's schema" in line and "create another database" in line
        assert not (tmp_path / "ws").exists()


def test_printed_commands_name_the_stores_they_need_and_paste_whole(tmp_path, monkeypatch):
    """What `study run` prints after a study (xattn ui, show, export, report, resume ...)."""
    from xattn.tracking.store import Workspace, store_flags

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XATTN_WORKSPACE", raising=False)
    assert store_flags(Workspace.open(None, create=False), optuna=True) == ""
    spaced = tmp_path / "my studies"
    assert store_flags(Workspace.open(spaced, create=False)) == f" --workspace '{spaced}'"
    other = Workspace.open(None, f"sqlite:///{tmp_path / 'lab.db'}", "postgresql://me:secret@db/optuna", create=False)
    assert (
        store_flags(other, optuna=True)
        == f" --tracking-uri sqlite:///{tmp_path / 'lab.db'} --optuna-storage postgresql://me@db/optuna"
    )


def test_an_os_error_no_check_foresaw_is_one_line_too(capsys):
    """The CLI's last net (a disk that fills, a permission that changes mid-command)."""
    import typer

    from xattn.cli.common import friendly

    @friendly
    def command() -> None:
        raise PermissionError(13, "Permission denied", "/data/out/metrics.json")

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == "error: /data/out/metrics.json: Permission denied (-v shows the traceback)\n"


def test_ctrl_c_in_a_command_other_than_a_study_is_one_line_and_exit_130(capsys):
    import typer

    from xattn.cli.common import friendly

    @friendly
    def command() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 130
    assert capsys.readouterr().err.startswith("interrupted: stopped;")


def test_export_force_replaces_only_an_earlier_export(tmp_path):
    """`--out . --force` in a folder of other things (a workspace, a home) would delete them all."""
    workspace = a_store(tmp_path)
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    line = one_error_line(
        xattn("export", "quickstart", "--out", mine, "--force", "--workspace", workspace, cwd=tmp_path)
    )
    assert f"{mine} is not an earlier export (no manifest.json)" in line
    assert (mine / "notes.txt").read_text() == "mine"
    line = one_error_line(
        xattn("export", "quickstart", "--out", tmp_path, "--force", "--workspace", workspace, cwd=tmp_path)
    )
    assert "is not an earlier export" in line and (workspace / "mlflow.db").exists()
