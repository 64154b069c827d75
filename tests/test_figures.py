"""A study's figures: drawn from what a real study recorded, logged to its MLflow run as one
interactive HTML page and a PNG each, and read back from MLflow.

The page is parsed back into the plotly figures it holds, and each figure's data is checked
against the records it was drawn from: MLflow metric histories, the final runs, the
comparison, the Optuna storage, the dataset, the best trial's logged test r. The page is
opened in headless Chromium offline, from disk and as MLflow's artifact viewer shows it.
"""

import base64
import io
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from xattn.data import load_dataset
from xattn.reporting import FIGURE_NAMES, log_study_figures, study_figures
from xattn.reporting.figures import FIGURES_PAGE, NULL_FIGURES
from xattn.reporting.plots import network_of
from xattn.reporting.study_data import epoch_curve
from xattn.studies import FIGURES_ENV, run_study
from xattn.tracking.runs import held_out_run
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import parse_spec

WITHOUT_NULLS = tuple(name for name in FIGURE_NAMES if name not in NULL_FIGURES)  # these studies have no nulls

TRIALS, EPOCHS = 3, 3
FOLDS, SEEDS = 2, 2
FAMILIES = ["cross_attention", "cge"]
PARENT_RUN_BYTES = 5_000_000  # a small study's parent run, figures included: what its data costs


# -- reading a study back (the plot builders are tested from hand-made data in test_plots.py) ---


def test_a_relogged_epoch_keeps_its_later_value():
    """A resumed trial logs the epochs after its checkpoint again: the rerun's value counts."""
    history = [
        SimpleNamespace(step=1, value=0.1, timestamp=100),
        SimpleNamespace(step=2, value=0.2, timestamp=200),
        SimpleNamespace(step=3, value=0.3, timestamp=300),
        SimpleNamespace(step=2, value=0.25, timestamp=400),  # after the resume
        SimpleNamespace(step=3, value=0.35, timestamp=500),
    ]
    assert epoch_curve(reversed(history)) == ([1, 2, 3], [0.1, 0.25, 0.35])
    assert epoch_curve([]) == ([], [])


# -- a real comparison study ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory, mirror, ray_local):
    spec = parse_spec(
        {
            "name": "figures-e2e",
            "seed": 2,
            "data": {"dataset": "hcp-s100-r08", "split": {"method": "spatial", "folds": 4}},
            "model": {"fixed": {"num_layers": 1, "nhead": 2, "deep_hidden_dims": [16], "batch_size": 512}},
            "search": {
                "metric": "val_pearson",
                "space": {"d_model": [8, 16], "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
                "grace_period": 1,
            },
            "budget": {"trials": TRIALS, "max_epochs": EPOCHS},
            "compare_with": ["cge"],
            "comparison": {"folds": FOLDS, "seeds": SEEDS, "tune": False},
        }
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    # The study logs its own figures at its end (the suite turns that off elsewhere).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FIGURES_ENV, "1")
        result = run_study(spec, workspace, mirror=str(mirror))
    client = MlflowClient(workspace.tracking_uri)
    first = tmp_path_factory.mktemp("first")
    names = list(figures_in(client.download_artifacts(result.parent_run_id, f"figures/{FIGURES_PAGE}", str(first))))
    started = time.perf_counter()
    relogged = log_study_figures(client, result.parent_run_id, workspace.optuna_storage, mirror=str(mirror))
    seconds = time.perf_counter() - started
    print(f"\nlog_study_figures: {seconds:.1f} s for {len(relogged)} figures")
    assert relogged == names  # logging again (a resumed study) rewrites the same figures
    folder = tmp_path_factory.mktemp("figures")
    client.download_artifacts(result.parent_run_id, "figures", str(folder))
    return SimpleNamespace(
        spec=spec, workspace=workspace, result=result, client=client, names=names, folder=folder / "figures",
        page=folder / "figures" / FIGURES_PAGE, seconds=seconds,
    )  # fmt: skip


@pytest.mark.e2e
def test_every_figure_of_a_comparison_study_is_logged_in_one_page_and_as_png(compared):
    assert compared.names == list(WITHOUT_NULLS)
    logged = {a.path for a in compared.client.list_artifacts(compared.result.parent_run_id, "figures")}
    assert logged == {f"figures/{FIGURES_PAGE}"} | {f"figures/{name}.png" for name in WITHOUT_NULLS}
    for name in WITHOUT_NULLS:
        assert_real_png(compared.folder / f"{name}.png")
    assert script_sources(compared.page.read_text()) == []  # plotly.js is inside the page: it opens offline


@pytest.mark.e2e
def test_the_parent_run_of_a_small_study_costs_what_its_data_costs(compared):
    """plotly.js once, compressed (2 MB), not once per figure (4.8 MB each: 48 MB for a study)."""
    sizes = artifact_sizes(compared.client, compared.result.parent_run_id)
    assert compared.page.read_text().count('id="plotly-js-gzip-base64"') == 1
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    print(f"\nparent run: {sum(sizes.values()):,} bytes in {len(sizes)} files; largest {largest}")
    assert sum(sizes.values()) < PARENT_RUN_BYTES, largest


@pytest.mark.e2e
def test_the_figures_page_draws_every_figure_offline_from_disk_and_in_mlflows_artifact_viewer(compared, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(compared.page.as_uri())
        drawn = figures_drawn(page.main_frame)
        assert drawn["figures"] == compared.names and drawn["plotted"] == compared.names, drawn
        assert drawn["widest"] <= 1280 and drawn["scroll_width"] <= 1280, drawn  # no figure scrolls sideways
        # MLflow's UI shows an HTML artifact in an iframe sandboxed to scripts, from a blob: URL
        # (mlflow/server/js ShowArtifactHtmlView): nothing beside the page can load there.
        page.set_content('<iframe id="artifact" sandbox="allow-scripts" style="width:1200px;height:800px"></iframe>')
        page.evaluate(
            "html => { document.getElementById('artifact').src ="
            " URL.createObjectURL(new Blob([html], {type: 'text/html'})); }",
            compared.page.read_text(),
        )
        frame = None
        for _ in range(100):
            frame = next((f for f in page.frames if f.url.startswith("blob:")), None)
            if frame is not None:
                break
            page.wait_for_timeout(100)
        assert figures_drawn(frame)["plotted"] == compared.names
        assert errors == []
    finally:
        context.close()


@pytest.mark.e2e
def test_optuna_figures_show_the_studys_trials(compared):
    result = compared.result
    study = optuna.load_study(study_name=result.optuna_study, storage=compared.workspace.optuna_storage)
    values = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    data, layout = figure_in(compared.page, "optimization_history")
    assert sorted(array(data[0]["y"]).tolist()) == pytest.approx(values)
    assert layout["yaxis"]["title"]["text"] == "best_val_pearson"  # the spec's metric names the objective
    data, _ = figure_in(compared.page, "param_importances")
    assert set(data[0]["y"]) <= {"d_model", "learning_rate"}


@pytest.mark.e2e
def test_learning_curves_have_one_line_per_trial_with_its_logged_history(compared):
    client, result = compared.client, compared.result
    runs = client.search_runs(
        [result.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.parent_run_id}' and tags.`xattn.role` = 'search' "
        "and tags.`xattn.family` = 'cross_attention'",
    )
    data, _ = figure_in(compared.page, "learning_curves")
    # nested: the study's family searches each outer fold, then all regions
    assert len(data) == len(runs) == TRIALS * (FOLDS + 1)
    by_name = {trace["meta"]["trial"]: trace for trace in data}
    for run in runs:
        trace = by_name[run.data.tags["mlflow.runName"]]
        history = sorted(client.get_metric_history(run.info.run_id, "val_pearson"), key=lambda m: m.step)
        assert array(trace["x"]).tolist() == [m.step for m in history]
        assert array(trace["y"]).tolist() == pytest.approx([m.value for m in history])
        # stopped by ASHA (or patience): fewer epochs than the budget, marked in the figure
        assert trace["meta"]["stopped_early"] == (int(run.data.tags["xattn.epochs_run"]) < EPOCHS)


@pytest.mark.e2e
def test_comparison_figures_pair_each_fold_and_seed_across_families(compared):
    client, result = compared.client, compared.result
    finals = client.search_runs(
        [result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}' and tags.`xattn.role` = 'final'"
    )
    test_r = {
        (r.data.tags["xattn.family"], r.data.tags["xattn.fold"], r.data.tags["xattn.seed"]): r.data.metrics[
            "test_pearson"
        ]
        for r in finals
    }
    data, _ = figure_in(compared.page, "comparison_runs")
    assert len(data) == FOLDS * SEEDS  # one line per (fold, seed)
    for family in FAMILIES:
        assert sum(list(trace["x"]).count(family) for trace in data) == FOLDS * SEEDS
    for trace in data:
        fold, seed = trace["name"].removeprefix("fold ").split(", seed ")
        assert list(trace["x"]) == FAMILIES
        assert array(trace["y"]).tolist() == pytest.approx([test_r[(family, fold, seed)] for family in FAMILIES])

    comparison = json.loads(open(client.download_artifacts(result.parent_run_id, "comparison.json")).read())
    data, _ = figure_in(compared.page, "comparison_forest")
    baseline = comparison["families"][1]["vs_reference"]
    assert list(data[0]["y"]) == ["cge"]
    assert array(data[0]["x"]).tolist() == pytest.approx([baseline["mean_difference"]])
    assert array(data[0]["error_x"]["array"])[0] == pytest.approx(baseline["ci95_high"] - baseline["mean_difference"])


@pytest.mark.e2e
def test_best_model_figures_reproduce_its_test_predictions(compared, mirror):
    client, result = compared.client, compared.result
    # Nested: the study's selection on all regions has no test regions; outer fold 0's final stands for it.
    best = held_out_run(client, client.get_run(result.parent_run_id))
    assert best.data.tags["xattn.role"] == "final" and best.data.tags["xattn.fold"] == "0"
    config = json.loads(open(client.download_artifacts(best.info.run_id, "checkpoint/config.json")).read())
    test_regions = config["split"]["test"]
    n_pairs = len(test_regions) * (len(test_regions) - 1)

    data, layout = figure_in(compared.page, "predicted_vs_observed")
    observed, predicted = array(data[0]["x"]), array(data[0]["y"])
    assert len(observed) == n_pairs
    # the predictions are the ones the trial's logged test r was computed from
    assert stats.pearsonr(predicted, observed)[0] == pytest.approx(best.data.metrics["test_pearson"], abs=1e-4)
    assert f"r = {best.data.metrics['test_pearson']:.3f}" in layout["title"]["text"]

    dataset = load_dataset("hcp-s100-r08", mirror=str(mirror))
    index_of = {label: k for k, label in enumerate(dataset.labels)}
    data, _ = figure_in(compared.page, "connectivity_matrices")
    assert [trace["type"] for trace in data] == ["heatmap", "heatmap"]
    labels = list(data[0]["x"])
    regions = [index_of[label] for label in labels]
    assert sorted(regions) == sorted(test_regions)
    observed_matrix, predicted_matrix = array(data[0]["z"]), array(data[1]["z"])
    assert observed_matrix.shape == predicted_matrix.shape == (len(regions), len(regions))
    expected = dataset.connectivity[np.ix_(regions, regions)].astype(np.float64)
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_allclose(observed_matrix, expected, rtol=1e-6, equal_nan=True)
    assert np.isfinite(predicted_matrix[~np.eye(len(regions), dtype=bool)]).all()
    # Schaefer labels: each network is one contiguous block, in order of first appearance
    networks = [network_of(label) for label in labels]
    blocks = [n for k, n in enumerate(networks) if k == 0 or n != networks[k - 1]]
    assert len(blocks) == len(set(networks)) > 1
    assert blocks == sorted(blocks, key=[network_of(dataset.labels[k]) for k in sorted(test_regions)].index)

    data, _ = figure_in(compared.page, "error_vs_distance")
    distance, error = array(data[0]["x"]), array(data[0]["y"])
    assert len(distance) == n_pairs and (distance > 0).all()
    assert sorted(error.tolist()) == pytest.approx(sorted((predicted - observed).tolist()), abs=1e-9)


@pytest.mark.e2e
def test_study_figures_are_the_logged_figures_in_display_order(compared, mirror):
    figures = study_figures(
        compared.client, compared.result.parent_run_id, compared.workspace.optuna_storage, mirror=str(mirror)
    )
    assert list(figures) == list(WITHOUT_NULLS)
    assert all(len(figure.data) > 0 for figure in figures.values())


# -- a one-trial study on a machine without a browser ------------------------------------------


@pytest.mark.e2e
def test_a_one_trial_study_without_a_browser_still_logs_its_html_figures(
    tmp_path, mirror, ray_local, monkeypatch, caplog
):
    spec = parse_spec(
        {
            "name": "figures-one-trial",
            "data": {"dataset": "synthetic", "synthetic": {"regions": 24, "genes": 8}},
            "model": {"fixed": {"d_model": 8, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [8], "batch_size": 128}},
            "search": {"space": {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "budget": {"trials": 1, "max_epochs": 1},
        }
    )
    workspace = Workspace.open(tmp_path / "ws")
    result = run_study(spec, workspace, mirror=str(mirror))
    client = MlflowClient(workspace.tracking_uri)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))  # where kaleido looks first
    with caplog.at_level(logging.WARNING, logger="xattn.reporting"):  # figures.py and render.py say why
        names = log_study_figures(client, result.parent_run_id, workspace.optuna_storage, mirror=str(mirror))
    # one trial: no importances (said why); no comparison in the spec: no comparison figures
    assert names == [n for n in WITHOUT_NULLS if n not in ("param_importances", "comparison_runs", "comparison_forest")]
    assert any(
        "param_importances skipped" in r.getMessage() and "2 completed trials" in r.getMessage() for r in caplog.records
    )
    assert any("no PNGs" in r.getMessage() for r in caplog.records)
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "figures")}
    assert logged == {f"figures/{FIGURES_PAGE}"}
    page = client.download_artifacts(result.parent_run_id, f"figures/{FIGURES_PAGE}", str(tmp_path))
    assert list(figures_in(page)) == names
    data, _ = figure_in(page, "learning_curves")
    assert len(data) == 1 and array(data[0]["x"]).tolist() == [1]


# -- reading a logged figure back ----------------------------------------------------------------


def figures_in(page) -> dict[str, tuple[list[dict], dict]]:
    """The data and layout of every plotly figure in a figures page, by name, in page order."""
    from html.parser import HTMLParser

    figures: dict[str, tuple[list[dict], dict]] = {}

    class Figures(HTMLParser):
        name, text = None, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "section" and "data-figure" in attrs:
                self.name = attrs["data-figure"]
            if tag == "script" and attrs.get("class") == "figure-json":
                self.text = []

        def handle_data(self, data):
            if self.text is not None:
                self.text.append(data)

        def handle_endtag(self, tag):
            if tag == "script" and self.text is not None:
                figure = json.loads("".join(self.text))
                figures[self.name] = (figure["data"], figure["layout"])
                self.text = None

    Figures().feed(Path(page).read_text(encoding="utf-8"))
    return figures


def figure_in(page, name: str) -> tuple[list[dict], dict]:
    """The data and layout of figure `name` in a figures page."""
    return figures_in(page)[name]


def figures_drawn(frame) -> dict:
    """Once the page says it is done: the figures it holds, those plotly drew, and how wide they are."""
    frame.wait_for_function("document.querySelector('#status') === null", timeout=60_000)
    return frame.evaluate(
        """() => {
            const sections = Array.from(document.querySelectorAll('section[data-figure]'));
            const drawn = sections.filter(s => s.querySelector('.figure')._fullLayout && s.querySelector('.main-svg'));
            const rights = Array.from(document.querySelectorAll('.main-svg'), svg => svg.getBoundingClientRect().right);
            return {figures: sections.map(s => s.dataset.figure), plotted: drawn.map(s => s.dataset.figure),
                    widest: Math.max(0, ...rights), scroll_width: document.documentElement.scrollWidth};
        }"""
    )


def artifact_sizes(client, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every artifact file of a run, with its size in bytes."""
    sizes = {}
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            sizes.update(artifact_sizes(client, run_id, entry.path))
        else:
            sizes[entry.path] = entry.file_size
    return sizes


def array(value) -> np.ndarray:
    """A plotly array as numpy: a list, or plotly's base64 typed array {"dtype", "bdata", "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.array(value, dtype=np.float64)  # JSON null (NaN in the figure) becomes NaN again


def script_sources(html: str) -> list[str]:
    """The src of every <script> tag: what a browser would have to fetch."""
    from html.parser import HTMLParser

    sources = []

    class Scripts(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "script" and dict(attrs).get("src"):
                sources.append(dict(attrs)["src"])

    Scripts().feed(html)
    return sources


def assert_real_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    image = Image.open(io.BytesIO(data))
    image.verify()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.width >= 600 and image.height >= 400, f"{path.name} is {image.size}"
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, f"{path.name} is nearly blank ({len(colours)} colours)"


def test_attention_maps_that_cannot_be_logged_warn_instead_of_failing_the_study(monkeypatch):
    import xattn.reporting.attention
    from xattn.studies import _log_attention

    def broken(*args, **kwargs):
        raise RuntimeError("the checkpoint's model has no attention\nsecond line")

    monkeypatch.setattr(xattn.reporting.attention, "log_run_attention", broken)
    with pytest.warns(
        UserWarning, match=r"^attention maps not logged to run r1: the checkpoint's model has no attention$"
    ):
        _log_attention(None, "r1", None)
