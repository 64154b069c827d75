"""A study survives its driver being killed (SIGKILL, Ctrl-C) and its trial workers dying.

Each test runs the real CLI in a subprocess with its own local Ray instance, interferes with
it from outside as a crash or a user would, and reads the stores back afterwards.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from xattn.tracking.tags import ORPHANED

pytestmark = pytest.mark.e2e

SPEC = {
    "name": "crashy",
    "seed": 0,
    "data": {"dataset": "synthetic", "synthetic": {"regions": 40, "genes": 8, "noise": 0.05, "seed": 0}},
    "model": {"fixed": {"d_model": 16, "nhead": 2, "num_layers": 1, "deep_hidden_dims": [16], "batch_size": 64}},
    "search": {"space": {"learning_rate": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2}}, "scheduler": "none"},
    "budget": {"trials": 4, "max_epochs": 120, "patience_steps": 100000, "max_concurrent": 1},
}


def write_spec(tmp_path: Path, **budget) -> Path:
    raw = {**SPEC, "budget": {**SPEC["budget"], **budget}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start(*args, cwd) -> subprocess.Popen:
    """The CLI in its own process group, as a terminal would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "xattn.cli", *map(str, args)], cwd=cwd, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    """A terminal's command takes Ctrl-C; a test runner started in the background (`nohup ... &`
    from a script) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Study:
    def __init__(self, workspace: Path) -> None:
        self.client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
        self.optuna_storage = f"sqlite:///{workspace / 'optuna.db'}"

    def parent(self):
        experiment = self.client.get_experiment_by_name(SPEC["name"])
        runs = self.client.search_runs([experiment.experiment_id], "tags.`xattn.role` = 'study'")
        assert len(runs) == 1, "a resume must reuse the study run, not start another"
        return runs[0]

    def children(self):
        parent = self.parent()
        return self.client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )

    def wait_for(self, condition, process: subprocess.Popen, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the study ended early:\n{process.stdout.read()}"
            try:
                if condition(self.children()):
                    return
            except Exception:  # noqa: BLE001 - the store is not there yet, or briefly locked
                pass
            time.sleep(0.5)
        raise AssertionError("timed out waiting for the study")

    def optuna_states(self) -> list[str]:
        name = self.parent().data.tags["xattn.optuna_study"]
        return [t.state.name for t in optuna.load_study(study_name=name, storage=self.optuna_storage).trials]


def one_finished_one_training(children) -> bool:
    statuses = [run.info.status for run in children]
    return "FINISHED" in statuses and any(
        run.info.status == "RUNNING" and "xattn.worker" in run.data.tags for run in children
    )


def assert_complete(study: Study, budget: int) -> None:
    parent = study.parent()
    assert parent.info.status == "FINISHED"
    children = [run for run in study.children() if ORPHANED not in run.data.tags]
    assert len(children) == budget
    assert all(run.info.status == "FINISHED" and "test_pearson" in run.data.metrics for run in children)
    trial_ids = [run.data.tags["xattn.ray_trial_id"] for run in study.children()]
    assert len(set(trial_ids)) == len(trial_ids), "two child runs for one Ray Tune trial"
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in study.children())
    states = study.optuna_states()
    assert states.count("COMPLETE") == budget and "RUNNING" not in states


def test_a_study_killed_with_sigkill_resumes_to_its_budget(tmp_path):
    workspace = tmp_path / "ws"
    study = Study(workspace)
    process = start("study", "run", write_spec(tmp_path, trials=3), "--workspace", workspace, cwd=tmp_path)
    study.wait_for(one_finished_one_training, process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its local Ray, as a crash would
    process.wait()
    assert study.parent().info.status == "RUNNING"

    resumed = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "resume", SPEC["name"], "--workspace", workspace],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finished trials are kept" in resumed.stdout
    assert_complete(study, budget=3)
    assert study.parent().data.tags["xattn.resumed"] == "1"
    # Every checkpoint survives while the phase runs (a killed driver's state may still name an
    # older one); once it has finished, each trial keeps its latest only.
    trial_dirs = [d for d in (workspace / "ray").glob("*/*") if d.is_dir() and d.name.startswith("run_trial")]
    assert trial_dirs and all(len(list(d.glob("checkpoint_*"))) == 1 for d in trial_dirs)


def test_ctrl_c_marks_the_study_killed_and_running_it_again_resumes_it(tmp_path):
    workspace = tmp_path / "ws"
    study = Study(workspace)
    spec = write_spec(tmp_path, trials=3)
    process = start("study", "run", spec, "--workspace", workspace, cwd=tmp_path)
    study.wait_for(one_finished_one_training, process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "xattn study resume crashy" in output
    assert study.parent().info.status == "KILLED"

    again = subprocess.run(
        [sys.executable, "-m", "xattn.cli", "study", "run", spec, "--workspace", workspace],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert_complete(study, budget=3)


def test_a_trial_whose_worker_dies_is_retried_then_failed_with_its_traceback(tmp_path):
    """max_failures 1: the first trial's worker is killed twice (it fails), the second's once (it recovers)."""
    workspace = tmp_path / "ws"
    study = Study(workspace)
    process = start(
        "study", "run", write_spec(tmp_path, trials=2, max_failures=1), "--workspace", workspace, cwd=tmp_path
    )
    kills: dict[str, list[str]] = {}

    def kill_worker_of(trial_number: str, times: int):
        def condition(children) -> bool:
            for run in children:
                tags = run.data.tags
                if tags.get("xattn.optuna_trial_number") != trial_number or run.info.status != "RUNNING":
                    continue
                worker = tags.get("xattn.worker")
                seen = kills.setdefault(trial_number, [])
                if worker and worker not in seen and len(seen) < times:
                    seen.append(worker)
                    os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
            return len(kills.get(trial_number, [])) == times

        return condition

    study.wait_for(kill_worker_of("0", times=2), process)
    study.wait_for(kill_worker_of("1", times=1), process)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output

    runs = {run.data.tags["xattn.optuna_trial_number"]: run for run in study.children()}
    failed, recovered = runs["0"], runs["1"]
    assert failed.info.status == "FAILED" and failed.data.tags["xattn.failure"]
    assert "error" in {artifact.path for artifact in study.client.list_artifacts(failed.info.run_id)}
    assert recovered.info.status == "FINISHED" and "test_pearson" in recovered.data.metrics
    assert recovered.data.tags["xattn.worker"] != kills["1"][0]  # the retry ran in a new process
    assert study.optuna_states() == ["FAIL", "COMPLETE"]
    assert study.parent().info.status == "FINISHED"
