"""GPU trials through Ray, on a real local cluster whose GPUs are logical (`ray start --num-gpus`):
Ray schedules them and sets each trial's CUDA_VISIBLE_DEVICES as on a GPU node, so the scheduling
half of GPU studies is tested on every machine. Trials run the study command a user types.

What the trials then find is a machine without CUDA: they train on CPU, say so once, and record
where they trained; `resources.require_gpu` refuses instead.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from services import ray_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def write_spec(folder: Path, name: str) -> Path:
    spec = {
        "name": name,
        "data": {"dataset": "hcp-s100-r08"},
        "model": {"fixed": {"d_model": 8, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [16]}},
        "search": {"space": {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}, "scheduler": "none"},
        "budget": {"trials": 4, "max_epochs": 2},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study(folder: Path, spec: Path, address: str, env: dict, *flags) -> subprocess.CompletedProcess:
    """`xattn study run` in a fresh process; an `env` value of None removes that variable."""
    merged = {**os.environ, "COLUMNS": "300", "XATTN_FIGURES": "0", **env}
    return subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "run", str(spec), "--workspace", str(folder / "ws"),
         "--address", address, *map(str, flags)],
        cwd=folder, capture_output=True, text=True, timeout=600,
        env={key: value for key, value in merged.items() if value is not None},
    )  # fmt: skip


def trial_runs(folder: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'ws' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return [run for run in runs if run.data.tags.get("xattn.role") == "search"]


def most_at_once(runs) -> int:
    """The most runs whose [start, end] intervals overlap at one moment."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory):
    """A head node with 4 logical CPUs and 1 logical GPU: with 0.5 CPU per trial the GPU, not
    the CPUs, limits how many trials run at once."""
    folder = tmp_path_factory.mktemp("one-gpu")
    with ray_cluster(folder, head_cpus=4, head_gpus=1, workers=0) as (address, env):
        yield address, env


@pytest.mark.parametrize("fraction, at_once", [(0.25, 4), (0.5, 2)])
def test_fractional_gpus_pack_trials_side_by_side(one_gpu, tmp_path, fraction, at_once):
    address, env = one_gpu
    name = f"gpu{int(fraction * 100)}"
    process = study(tmp_path, write_spec(tmp_path, name), address, env,
                    "--set", f"resources.gpus={fraction}", "--set", "resources.cpus=0.5")  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr
    runs = trial_runs(tmp_path, name)
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    assert most_at_once(runs) == at_once
    # Where each trial trained: Ray's GPU id, and the CPU it fell back to, said once.
    for run in runs:
        assert run.data.tags["xattn.gpu_ids"] == "0"
        assert run.data.tags["xattn.device"] == "cpu" and run.data.tags["xattn.precision"] == "fp32"
        assert "torch sees no CUDA device" in run.data.tags["xattn.gpu_fallback"]
    fallback = f"asked for {fraction:g} GPU per trial, but torch sees no CUDA device on "
    assert process.stdout.count(fallback) == 1 and ": training on CPU" in process.stdout
    parent = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}").search_runs(
        [runs[0].info.experiment_id], "tags.`xattn.role` = 'study'"
    )[0]
    assert parent.data.tags["xattn.cluster_resources"].startswith("CPU 4, GPU 1")


def test_require_gpu_refuses_before_any_trial_starts(one_gpu, tmp_path):
    address, env = one_gpu
    process = study(tmp_path, write_spec(tmp_path, "strict"), address, env,
                    "--set", "resources.gpus=0.25", "--set", "resources.require_gpu=true")  # fmt: skip
    assert process.returncode != 0
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert "torch sees no CUDA device" in line and "resources.require_gpu: false" in line
    assert not (tmp_path / "ws" / "mlflow.db").exists() or not trial_runs(tmp_path, "strict")


def test_a_driver_without_the_clusters_token_is_told_how_to_send_it(one_gpu, tmp_path):
    address, _ = one_gpu
    tokenless = {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None}  # it sends none
    process = study(tmp_path, write_spec(tmp_path, "tokenless"), address, tokenless)
    assert process.returncode != 0
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert "RAY_AUTH_MODE=token" in line and "auth_token" in line


def test_whole_gpus_go_one_trial_to_each_gpu(tmp_path):
    with ray_cluster(tmp_path, head_cpus=2, head_gpus=2, workers=0) as (address, env):
        spec = write_spec(tmp_path, "gpu2")
        process = study(tmp_path, spec, address, env, "--set", "resources.gpus=1", "--set", "resources.cpus=0.5",
                        "--trials", 2)  # fmt: skip
    assert process.returncode == 0, process.stdout + process.stderr
    runs = trial_runs(tmp_path, "gpu2")
    assert most_at_once(runs) == 2
    assert sorted(run.data.tags["xattn.gpu_ids"] for run in runs) == ["0", "1"]


GPU_SPECS = sorted(
    path for path in (REPO / "studies").glob("*.yaml") if yaml.safe_load(path.read_text())["resources"]["gpus"] > 0
)


@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda path: path.stem)
def test_the_shipped_gpu_specs_run_on_a_gpu_cluster(one_gpu, tmp_path, spec):
    """Each shipped spec that asks for GPUs passes preflight and trains one trial of one epoch per
    phase on the logical-GPU cluster (small data, two outer folds), so a change that breaks one
    fails here rather than on a user's GPU node."""
    address, env = one_gpu
    name = yaml.safe_load(spec.read_text())["name"]
    smaller = ["--set", "data.dataset=hcp-s100-r08"]
    if yaml.safe_load(spec.read_text()).get("compare_with"):
        smaller += ["--set", "comparison.folds=2", "--set", "comparison.seeds=1"]
    process = study(tmp_path, spec, address, env, "--trials", 1, "--max-epochs", 1, *smaller)
    assert process.returncode == 0, process.stdout + process.stderr
    runs = trial_runs(tmp_path, name)
    assert runs and all(run.info.status == "FINISHED" for run in runs)
    assert {run.data.tags["xattn.gpu_ids"] for run in runs} == {"0"}  # Ray gave each its GPU share
    assert all("torch sees no CUDA device" in run.data.tags["xattn.gpu_fallback"] for run in runs)
