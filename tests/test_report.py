"""`xattn report`: one HTML page per study, opened in a real headless Chromium.

A real tiny study (search + a comparison with one baseline) is reported through the CLI and
must draw every figure without a console or page error, each fitting a 1280 px window; a
study whose driver was killed must still be reported, and say so.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from xattn.reporting.state import FINISHED, INTERRUPTED, RUNNING, study_state
from xattn.tracking.store import Workspace
from xattn.tracking.tags import COMPLETED

TRIALS = 3
WINDOW = {"width": 1280, "height": 900}  # a laptop's browser window: no figure may scroll sideways
COMPARISON = {"folds": 2, "seeds": 1}


def report_cli(name: str, workspace: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return subprocess.run(
        [sys.executable, "-m", "xattn.cli", "report", name, "--workspace", str(workspace), *args],
        capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip


def report_in_process(name: str, workspace: Path, *args: str) -> SimpleNamespace:
    """The same command through typer's runner: no new interpreter importing torch, Ray and MLflow."""
    from typer.testing import CliRunner

    from xattn.cli import app

    result = CliRunner().invoke(app, ["report", name, "--workspace", str(workspace), *args])
    return SimpleNamespace(
        returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr, exception=result.exception
    )


def open_report(browser, path: Path) -> SimpleNamespace:
    """Load the page from its file with the network cut off; wait for every figure to draw."""
    context = browser.new_context(viewport=WINDOW, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    figure_ids = page.eval_on_selector_all(".plotly-graph-div", "divs => divs.map(d => d.id)")
    for figure_id in figure_ids:
        page.wait_for_selector(f"#{figure_id} .main-svg", state="attached", timeout=30_000)
    drawn = {
        figure_id: page.eval_on_selector(
            f"#{figure_id}",
            """div => {
                const box = div.getBoundingClientRect();
                const svgs = Array.from(div.querySelectorAll('.main-svg'));
                const right = Math.max(box.right, ...svgs.map(svg => svg.getBoundingClientRect().right));
                return {traces: (div.data || []).length, width: box.width, height: box.height, right: right,
                        svgs: svgs.length};
            }""",
        )
        for figure_id in figure_ids
    }
    result = SimpleNamespace(
        errors=errors,
        requests=[url for url in requests if not url.startswith("file://")],
        drawn=drawn,
        sections=page.eval_on_selector_all("[data-figure]", "sections => sections.map(s => s.dataset.figure)"),
        status=page.inner_text("#status"),
        state=page.get_attribute("#status", "data-state"),
        trial_rows=page.eval_on_selector_all(
            "#trials-table tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
        ),
        comparison_rows=page.locator("#comparison-table tbody tr").count(),
        notes=page.eval_on_selector_all("#figures .note", "notes => notes.map(n => n.innerText)"),
        text=page.inner_text("body"),
        scroll_width=page.evaluate("document.documentElement.scrollWidth"),
    )
    context.close()
    return result


def assert_rendered(page: SimpleNamespace) -> None:
    assert page.errors == []
    assert page.requests == []  # offline: nothing but the file itself
    assert sorted(page.drawn) == sorted(f"figure-{name}" for name in page.sections)
    for figure_id, drawn in page.drawn.items():
        assert drawn["traces"] > 0 and drawn["svgs"] > 0, (figure_id, drawn)
        assert drawn["width"] > 200 and drawn["height"] > 200, (figure_id, drawn)
        assert drawn["right"] <= WINDOW["width"], (figure_id, drawn)  # no figure reaches past the window
    assert page.scroll_width <= WINDOW["width"]


# -- a finished study ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, ray_local):
    from xattn.studies import run_study
    from xattn.tuning.spec_file import parse_spec

    spec = parse_spec(
        {
            "name": "report-e2e",
            "seed": 1,
            "data": {
                "dataset": "synthetic",
                "synthetic": {"regions": 24, "genes": 6, "noise": 0.05},
                "split": {"folds": 3},
            },
            "model": {"fixed": {"nhead": 2, "num_layers": 1, "deep_hidden_dims": [16], "batch_size": 128}},
            "search": {
                # five parameters: Optuna's slice plot draws them 300 px each, side by side (1500 px)
                "space": {
                    "d_model": [8, 16],
                    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                    "pooling_mode": ["mean", "attention"],
                    "cls_init": ["random", "spatial"],
                    "expression_encoding": ["continuous", "quantile_bins"],
                }
            },
            "budget": {"trials": TRIALS, "max_epochs": 2},
            "compare_with": ["cge"],
            "comparison": {**COMPARISON, "tune": False},
        }
    )
    root = tmp_path_factory.mktemp("ws")
    workspace = Workspace.open(root)
    result = run_study(spec, workspace)
    return spec, workspace, result


@pytest.mark.e2e
def test_report_of_a_finished_study_draws_every_figure_offline(finished_study, browser):
    from xattn.reporting.figures import FIGURE_NAMES, NULL_FIGURES

    spec, workspace, result = finished_study
    process = report_cli(spec.name, workspace.root)
    assert process.returncode == 0, process.stderr
    path = Path(process.stdout.strip().splitlines()[-1])
    assert path == workspace.root / "reports" / f"{spec.name}.html" and path.is_file()

    page = open_report(browser, path)
    assert_rendered(page)
    # every figure is drawn, or the page says why not
    assert [name for name in FIGURE_NAMES if name in page.sections] == page.sections
    for name in set(FIGURE_NAMES) - set(page.sections) - set(NULL_FIGURES):  # this study has no nulls
        assert any(name in note for note in page.notes), name
    # what a study with a comparison must be able to show
    assert {"optimization_history", "learning_curves", "comparison_forest", "predicted_vs_observed"} <= set(
        page.sections
    )
    assert page.state == FINISHED and page.status.startswith("Status: finished")

    # Nested: the study's family searches each outer fold, then all regions, each its own Optuna study.
    searches = COMPARISON["folds"] + 1
    assert len(page.trial_rows) == TRIALS * searches
    assert sorted(row[1] for row in page.trial_rows) == sorted([str(n) for n in range(TRIALS)] * searches)
    assert {row[0] for row in page.trial_rows} == {"cross_attention"}
    assert all(row[-1] == "finished" for row in page.trial_rows)
    assert page.comparison_rows == 2  # cross_attention and cge
    for shown in (result.parent_run_id, result.best["run_id"], "study.yaml", "synthetic", "xattn commit", "optuna"):
        assert shown in page.text


@pytest.mark.e2e
def test_every_run_of_a_compared_study_carries_its_provenance(finished_study):
    """Search, final (trained, or a search winner recorded as its fold's final) and refit runs
    alike: the tags of the study run that recorded them."""
    from mlflow.tracking import MlflowClient

    from xattn.tracking import tags
    from xattn.tracking.runs import child_runs

    spec, workspace, result = finished_study
    client = MlflowClient(workspace.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    provenance = {
        key: value
        for key, value in parent.data.tags.items()
        if key in tags.PROVENANCE or key.startswith(tags.VERSION_PREFIX)
    }
    assert len(provenance) == len(tags.PROVENANCE) + 6  # python and five packages
    children = child_runs(client, parent)
    assert {run.data.tags[tags.ROLE] for run in children} == {"search", "final", "refit"}
    for run in children:
        assert {key: run.data.tags.get(key) for key in provenance} == provenance, run.data.tags[tags.RUN_NAME]


def at_80_columns(*args) -> list[str]:
    """The CLI's lines as an 80-column terminal shows them (rich takes the pipe for a terminal)."""
    environment = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "xattn.cli", *args], capture_output=True, text=True, timeout=300, env=environment
    )
    assert process.returncode == 0, process.stderr
    return [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in process.stdout.splitlines()]


@pytest.mark.e2e
def test_the_tables_fit_80_columns_and_show_every_value_whole(finished_study):
    """`study show`, `study list` and `compare` of a nested study with a baseline: no line past
    80 columns, nothing cut off with an ellipsis; `study show --wide` has the full names and values."""
    from xattn.tracking.store import connect
    from xattn.tracking.study_index import show_table, study_summary

    spec, workspace, result = finished_study
    store = ["--workspace", str(workspace.root)]
    summary = study_summary(connect(workspace), spec.name)
    compact = at_80_columns("study", "show", spec.name, *store)
    listed = at_80_columns("study", "list", *store)
    compared = at_80_columns("compare", spec.name, *store)
    for lines in (compact, listed, compared):
        assert max(map(len, lines)) <= 80 and not any("…" in line for line in lines), "\n".join(lines)
    # every changed param whole on a line of its own, each family's table under its name
    cells = {cell for line in compact for cell in line.split()}
    for row in show_table(summary).rows:
        assert set(row[-1].split(", ")) - {""} <= cells, row
    assert {"cross_attention", "cge"} <= {line.split()[0].rstrip(",") for line in compact if line}
    assert any(result.parent_run_id in line for line in listed)
    assert {"cross_attention", "cge", "diff", "test", "MDD"} <= {word for line in compared for word in line.split()}

    wide = at_80_columns("study", "show", spec.name, "--wide", *store)
    full = show_table(summary, full_values=True)
    for row in full.rows:  # one line each: its full run name and every value
        (line,) = [line for line in wide if f" {row[1]} " in line]
        assert all(cell in line for cell in row)


# -- an interrupted study ------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_study(tmp_path_factory):
    """A study run as a killed driver leaves it: KILLED, no completed tag, one trial finished
    and one cut off mid-way, no checkpoint, and no Optuna study in the storage."""
    from mlflow.entities import Metric

    from xattn.studies import open_stores, study_run
    from xattn.tracking import parent_run
    from xattn.tuning.spec_file import parse_spec

    spec = parse_spec(
        {"name": "report-killed", "search": {"space": {"d_model": [8, 16]}}, "budget": {"trials": 4, "max_epochs": 5}}
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    client = open_stores(workspace)
    experiment_id = parent_run.open_experiment(client, workspace, study_run(spec))
    parent_run_id, _ = parent_run.start(client, experiment_id, study_run(spec))
    for number, epochs, status in ((0, 5, "FINISHED"), (1, 2, "RUNNING")):
        run = client.create_run(
            experiment_id,
            tags={
                "mlflow.parentRunId": parent_run_id, "mlflow.runName": f"cross_attention-trial-{number}",
                "xattn.role": "search", "xattn.family": "cross_attention", "xattn.optuna_trial_number": str(number),
            },
        )  # fmt: skip
        client.log_param(run.info.run_id, "d_model", str(8 * (number + 1)))
        curve = [
            Metric(name, 1.0 / epoch, 0, epoch) for epoch in range(1, epochs + 1) for name in ("val_loss", "train_loss")
        ]
        curve += [Metric("val_pearson", 0.1 * epoch, 0, epoch) for epoch in range(1, epochs + 1)]
        client.log_batch(run.info.run_id, metrics=curve)
        if status == "FINISHED":
            for key, value in {"best_val_loss": 0.2, "test_pearson": 0.3, "test_mse": 0.5}.items():
                client.log_metric(run.info.run_id, key, value)
            client.set_tag(run.info.run_id, "xattn.epochs_run", str(epochs))
            client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent_run_id, "KILLED")
    return spec, workspace, parent_run_id


def test_report_of_an_interrupted_study_renders_and_says_so(interrupted_study, browser, tmp_path):
    spec, workspace, parent_run_id = interrupted_study
    process = report_in_process(spec.name, workspace.root, "--out", str(tmp_path), "--run-id", parent_run_id)
    assert process.returncode == 0, (process.stderr, process.exception)
    out = tmp_path / f"{spec.name}.html"
    assert process.stdout.strip().splitlines()[-1] == str(out)

    page = open_report(browser, out)
    assert_rendered(page)
    assert page.state == INTERRUPTED and page.status.startswith("Status: interrupted")
    # the command, with the flags that reach this workspace from where the report was written
    assert f"`xattn study resume {spec.name} --workspace {workspace.root}` continues it" in page.status
    assert [(row[1], row[-1]) for row in page.trial_rows] == [("0", "finished"), ("1", "running")]
    assert page.trial_rows[1][-2] == "2"  # epochs so far, from the metric history
    assert "Best trial so far" in page.text
    assert page.comparison_rows == 0


def test_out_is_a_folder_or_an_html_file(tmp_path):
    from xattn.reporting.report import _output_path

    workspace = Workspace.open(tmp_path / "ws", create=False)
    assert _output_path(workspace, "s", None) == workspace.root / "reports" / "s.html"
    assert _output_path(workspace, "s", tmp_path / "pages") == tmp_path / "pages" / "s.html"
    assert _output_path(workspace, "s", tmp_path / "mine.html") == tmp_path / "mine.html"


def test_unknown_study_is_one_line(interrupted_study):
    _, workspace, _ = interrupted_study
    process = report_in_process("no-such-study", workspace.root)
    assert process.returncode == 2
    assert (
        process.stderr.strip()
        == "error: no study named 'no-such-study' in this tracking store; studies here: report-killed"
    )
    wrong_run = report_in_process("report-killed", workspace.root, "--run-id", "0" * 32)
    assert wrong_run.returncode == 2 and len(wrong_run.stderr.strip().splitlines()) == 1
    no_store = report_in_process("report-killed", workspace.root / "elsewhere")
    assert no_store.returncode == 2 and "no tracking store at" in no_store.stderr


# -- the status line -----------------------------------------------------------------------


def parent(status: str, driver: str | None = None, completed: bool = False) -> SimpleNamespace:
    tags = {"xattn.study": "s"}
    if driver:
        tags["xattn.driver"] = driver
    if completed:
        tags[COMPLETED] = "true"
    return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_driver():
    """Another live process on this host, as a study's driver would be."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield f"{socket.gethostname()}:{process.pid}"
    process.kill()
    process.wait()


def test_status_follows_run_status_completed_tag_and_driver(live_driver):
    host = socket.gethostname()
    assert study_state(parent("FINISHED", f"{host}:1", completed=True)).state == FINISHED
    assert study_state(parent("FAILED", completed=True)).state == FINISHED  # it ended; no trial succeeded
    assert study_state(parent("RUNNING", live_driver)).state == RUNNING
    assert study_state(parent("RUNNING", f"{host}:{dead_pid()}")).state == INTERRUPTED  # SIGKILLed driver
    assert study_state(parent("RUNNING")).state == INTERRUPTED
    assert study_state(parent("KILLED", live_driver)).state == INTERRUPTED  # Ctrl-C: the run says so
    assert study_state(parent("FAILED", f"{host}:1")).state == INTERRUPTED  # the driver crashed
    elsewhere = study_state(parent("RUNNING", "another-host:1234"))
    assert elsewhere.state == RUNNING and "another host" in elsewhere.detail


@pytest.mark.e2e
def test_the_printed_mlflow_link_opens_the_trials_with_their_numbers_in_mlflows_ui(finished_study, browser):
    """The link `study run` prints, opened in MLflow's own UI (`xattn ui`) in Chromium: the runs
    table lists the study's trials with the tuned parameters and the metrics as columns."""
    from mlflow.tracking import MlflowClient
    from services import free_port, port_open, wait_until

    from xattn.tracking.runs_view import runs_view_url

    spec, workspace, result = finished_study
    assert result.runs_view, "the study stored no shared view"
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", "ui", "--workspace", str(workspace.root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # wide enough that the grid draws every column: it leaves out those scrolled out of sight
    context = browser.new_context(viewport={"width": 3600, "height": 1000})
    try:
        wait_until(lambda: port_open(port), "xattn ui", ui)
        page = context.new_page()
        page.goto(runs_view_url(f"http://127.0.0.1:{port}", result.experiment_id, result.runs_view))
        client = MlflowClient(workspace.tracking_uri)
        trials = client.search_runs(
            [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'", max_results=1000
        )
        names = {run.data.tags["mlflow.runName"] for run in trials}
        page.get_by_text(sorted(names)[0], exact=True).first.wait_for(timeout=90_000)
        shown = page.inner_text("body")
        assert sum(name in shown for name in names) >= min(len(names), 5), shown[:2000]
        for column in ("best_val_pearson", "test_pearson", *spec.search.space):
            assert column in shown, (column, shown[:3000])
    finally:
        context.close()
        ui.terminate()
        ui.communicate(timeout=60)
