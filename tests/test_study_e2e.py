"""A real study: Ray Tune runs trials suggested by Optuna, the driver records them in MLflow.

Read back with the MLflow client and the Optuna storage, then export the best trial and
check that evaluating the export reproduces its logged test metric. The model is the
cross-attention model with every planned extension on (bidirectional, two CLS tokens,
mixed attention, learned bins), so the study also shows they train end to end, and the
best trial's attention maps are logged and written again by `xattn attention`.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from xattn.errors import DataError
from xattn.export import evaluate_export, export_best, verify_export
from xattn.reporting.figures import FIGURES_PAGE
from xattn.studies import FIGURES_ENV, run_study
from xattn.tracking.store import Workspace
from xattn.tuning.spec_file import parse_spec

pytestmark = pytest.mark.e2e

TRIALS = 4
EPOCHS = 3


EXTENSIONS = {"bidirectional": True, "n_cls": 2, "query_self_attention": True, "expression_encoding": "learned_bins"}


@pytest.fixture(scope="module")
def study(tmp_path_factory, mirror, ray_local):
    spec = parse_spec(
        {
            "name": "r08-e2e",
            "seed": 3,
            "data": {"dataset": "hcp-s100-r08", "split": {"method": "spatial", "folds": 4}},
            "model": {"fixed": {"num_layers": 1, "deep_hidden_dims": [16], "batch_size": 256, **EXTENSIONS}},
            "search": {
                "space": {
                    "direction_combine": ["sum", "concat"],
                    "d_model": [8, 16],
                    "nhead": [2],
                    "expression_bins": [3, 5],
                    "cls_init": ["random", "spatial"],
                    "pooling_mode": ["mean", "attention"],
                    "learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                },
                "grace_period": 2,
            },
            "budget": {"trials": TRIALS, "max_epochs": EPOCHS, "patience_steps": 100000},
        }
    )
    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    download = MlflowClient.download_artifacts

    def counted(self, run_id, path, dst_path=None):
        if path.strip("/") == "checkpoint":
            CHECKPOINT_DOWNLOADS.append(run_id)
        return download(self, run_id, path, dst_path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FIGURES_ENV, "1")  # the suite turns figures off; the attention maps are among them
        patch.setattr(MlflowClient, "download_artifacts", counted)
        result = run_study(spec, workspace, mirror=str(mirror))
    return spec, workspace, result


CHECKPOINT_DOWNLOADS: list[str] = []  # the run of every checkpoint the study downloaded


def test_the_study_downloads_the_best_checkpoint_once_for_manifest_figures_and_attention(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    # all three were made from it: the registered version's manifest, a figure of the best
    # model's predictions, and the attention maps
    assert client.get_model_version(spec.name, result.best["model_version"]).tags
    page = client.download_artifacts(result.parent_run_id, f"figures/{FIGURES_PAGE}")
    assert 'data-figure="predicted_vs_observed"' in Path(page).read_text()
    assert client.list_artifacts(result.best["run_id"], "attention")
    assert CHECKPOINT_DOWNLOADS == [result.best["run_id"]]


def test_every_trial_is_a_nested_child_run(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.experiment_id == result.experiment_id
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["xattn.role"] == "study"
    children = client.search_runs([experiment.experiment_id], "tags.`xattn.role` = 'search'")
    assert len(children) == TRIALS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.parent_run_id}
    assert len({c.data.tags["xattn.ray_trial_id"] for c in children}) == TRIALS
    assert sorted(int(c.data.tags["xattn.optuna_trial_number"]) for c in children) == list(range(TRIALS))
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"d_model", "learning_rate", "pooling_mode", "cls_init", "expression_bins"} <= set(child.data.params)
        assert {name: child.data.params[name] for name in EXTENSIONS} == {k: str(v) for k, v in EXTENSIONS.items()}
        assert child.data.params["direction_combine"] in ("sum", "concat")
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert 1 <= len(history) <= EPOCHS
        assert -1 <= child.data.metrics["test_pearson"] <= 1
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/weights.safetensors", "checkpoint/config.json"}


def test_parent_holds_spec_best_and_table(study):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"study.yaml", "trials.csv"}
    assert parent.data.tags["xattn.best_run_id"] == result.best["run_id"]
    assert parent.data.metrics["best.best_val_loss"] == pytest.approx(result.best["metrics"]["best_val_loss"])
    best_losses = [c["metrics"]["best_val_loss"] for c in _children(client, result)]
    assert result.best["metrics"]["best_val_loss"] == pytest.approx(min(best_losses))
    assert result.trial_counts == {"finished": TRIALS}
    # how well validation ranked the trials by test r: computed from the trials, logged, returned
    assert parent.data.metrics["search.val_test_n_trials"] == TRIALS
    agreement = result.agreement[spec.model.family]
    assert agreement["n_trials"] == TRIALS and -1 <= agreement["spearman"] <= 1
    assert parent.data.metrics["search.val_test_spearman"] == pytest.approx(agreement["spearman"])
    from scipy import stats

    children = _children(client, result)
    rho = stats.spearmanr(
        [-c["metrics"]["best_val_loss"] for c in children], [c["metrics"]["test_pearson"] for c in children]
    )[0]
    assert agreement["spearman"] == pytest.approx(rho)


def test_optuna_storage_holds_the_study(study):
    spec, workspace, result = study
    loaded = optuna.load_study(study_name=result.optuna_study, storage=workspace.optuna_storage)
    assert len(loaded.trials) == TRIALS
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in loaded.trials)
    assert {t.params["d_model"] for t in loaded.trials} <= {8, 16}
    assert {t.params["direction_combine"] for t in loaded.trials} <= {"sum", "concat"}


def test_the_best_trials_attention_maps_are_logged_to_its_run(study, tmp_path):
    spec, workspace, result = study
    client = MlflowClient(workspace.tracking_uri)
    logged = {a.path for a in client.list_artifacts(result.best["run_id"], "attention")}
    assert logged == {
        f"attention/{name}" for name in ("gene_attention.csv", "top_gene_pairs.csv", "gene_attention.png")
    }
    matrix = pd.read_csv(
        client.download_artifacts(result.best["run_id"], "attention/gene_attention.csv", str(tmp_path)), index_col=0
    )
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)


def test_xattn_attention_writes_the_gene_maps_of_an_export(study, tmp_path, mirror):
    spec, workspace, result = study
    export = tmp_path / "export"
    export_best(spec.name, export, workspace)
    out = tmp_path / "maps"
    command = [sys.executable, "-m", "xattn.cli", "attention", str(export), "--pairs", "test", "--out", str(out),
               "--top-k", "5", "--mirror", str(mirror), "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gene_attention.csv", "gene_attention.png", "top_gene_pairs.csv"]
    genes = json.loads((export / "config.json").read_text())["genes"]
    matrix = pd.read_csv(out / "gene_attention.csv", index_col=0)
    assert list(matrix.index) == genes and list(matrix.columns) == genes
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    top = pd.read_csv(out / "top_gene_pairs.csv")
    assert len(top) == 5 and set(top.query_gene) | set(top.key_gene) <= set(genes)
    assert top.mean_weight.is_monotonic_decreasing
    assert top.mean_weight.iloc[0] == pytest.approx(matrix.to_numpy().max())
    assert (out / "gene_attention.png").read_bytes()[:4] == b"\x89PNG"

    not_cross = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "attention", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert not_cross.returncode == 2 and len(not_cross.stderr.strip().splitlines()) == 1


def test_export_then_evaluate_reproduces_test_metrics(study, tmp_path, mirror):
    spec, workspace, result = study
    out = tmp_path / "export"
    info = export_best(spec.name, out, workspace)
    assert info["run_id"] == result.best["run_id"]
    manifest = verify_export(out)
    assert set(manifest["files"]) == {"weights.safetensors", "config.json", "metrics.json"}
    evaluated = evaluate_export(out, mirror=str(mirror))
    for key in ("test_pearson", "test_mse", "test_r2", "test_spearman"):
        assert evaluated["metrics"][key] == pytest.approx(result.best["metrics"][key], abs=1e-4)

    # An export whose files no longer match the manifest is refused.
    config = json.loads((out / "config.json").read_text())
    config["seed"] = config["seed"] + 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="does not match its sha256"):
        evaluate_export(out, mirror=str(mirror))


def test_a_changed_byte_in_a_named_dataset_is_refused_in_one_line(study, tmp_path, mirror):
    """A named dataset's files are checked against their pinned sha256 on every read, so data
    that differs from what the model saw never gets as far as evaluation."""
    import shutil

    from xattn.data.datasets import DATASETS

    spec, workspace, _ = study
    export = tmp_path / "export"
    export_best(spec.name, export, workspace)
    copy = tmp_path / "mirror"
    for relative in DATASETS["hcp-s100-r08"].files:
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / relative, copy / relative)
    changed = copy / DATASETS["hcp-s100-r08"].files[1]  # the connectivity matrix
    data = bytearray(changed.read_bytes())
    data[-2] = ord("1") if data[-2] != ord("1") else ord("2")
    changed.write_bytes(bytes(data))
    command = [sys.executable, "-m", "xattn.cli", "evaluate", str(export), "--mirror", str(copy)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stdout + process.stderr
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith(f"error: {changed} has sha256 ") and "damaged or a different version" in line


def _children(client, result):
    runs = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return [{"metrics": r.data.metrics} for r in runs]
