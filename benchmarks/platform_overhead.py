"""The platform's overhead: the same fixed trials through `xattn study run` and through the
trainer in a plain loop, each in a fresh process timed from launch to exit.

    overhead = (study wall - plain wall) / study wall

The issue's goal is for trials of 60 s or more, so a full run first times a 2-epoch trial
of the config in a fresh process and picks the epoch count that makes a trial last about
`trial_s` seconds (`--quick`: six short epochs on the 8-region dataset). Epoch times on a
shared 2-core machine vary by a third between runs, so the trials' measured lengths are
reported with the result, and so are the epoch times inside and outside the study.

The study's extra time is then split into what it pays once (imports of Ray, MLflow and
Optuna, the stores, Ray's start, its shutdown) and what it pays per trial (from the MLflow
runs' start and end times against the plain loop's trial times). From those two parts the
overhead of a study of the spec default's size (8 trials) and of a 32-trial study, with
trials of this length, is projected.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DATASET, PLAIN_TAG, REPO_ROOT, SEED, SPLIT, child_env, log, summary, tagged
from xattn.tracking import tags

GOAL = 0.05
TRIAL_S = 60.0  # the goal holds for trials of 60 s or more
PROJECTED_TRIALS = (8, 32)  # the spec's default budget.trials, and a larger study


def platform_spec(*, quick: bool, cpus: int, cuda: bool, epochs: int = 1) -> dict[str, Any]:
    """Two identical trials of a small cross_attention config (a one-value search space)."""
    dataset, epochs = ("hcp-s100-r08", 6) if quick else (DATASET, epochs)
    return {
        "name": "bench-platform",
        "description": "benchmarks.platform_overhead: two identical trials",
        "seed": SEED,
        "data": {"dataset": dataset, "split": {**SPLIT, "val_fraction": 0.2}, "genevec": "coexpression"},
        "model": {
            "family": "cross_attention",
            "fixed": {
                "d_model": 16,
                "nhead": 1,
                "num_layers": 1,
                "deep_hidden_dims": [64, 32],
                "transformer_dropout": 0.0,
                "dropout_rate": 0.0,
                "batch_size": 256,
            },
        },
        "search": {"metric": "val_loss", "scheduler": "none", "space": {"learning_rate": [0.001]}},
        "budget": {"trials": 2, "max_epochs": epochs, "patience_steps": 10**9, "max_concurrent": 1},
        "resources": {"cpus": cpus, "gpus": 1 if cuda else 0},
    }


def _run_plain(spec: dict[str, Any], mirror: str) -> tuple[list[float], list[list[float]]]:
    """The spec's trials through the trainer in a plain loop (what a trial runs, minus Ray,
    Optuna, MLflow and checkpoints): each trial's seconds, and the seconds from its start to
    the end of each of its epochs."""
    from xattn.training import fit
    from xattn.tuning.spec import StudySpec
    from xattn.tuning.trial import prepare_trial

    spec = StudySpec.model_validate(spec)
    sampled = {name: param.candidate_values()[0] for name, param in spec.searched.items()}
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    seconds, epoch_ends = [], []
    for _ in range(spec.budget.trials):
        start = time.perf_counter()
        ends: list[float] = []
        trial = prepare_trial(spec, sampled, mirror=mirror)  # what the Ray trainable prepares
        result = fit(trial.model, trial.experiment.pairs, trial.train_config,
                     on_epoch=lambda _, ends=ends, start=start: ends.append(time.perf_counter() - start))  # fmt: skip
        seconds.append(time.perf_counter() - start)
        epoch_ends.append(ends)
        print(f"plain trial: {seconds[-1]:.1f}s, best_val_loss {result.best_val_loss:.4f}", flush=True)
    return seconds, epoch_ends


def plain_trials(spec_path: str, mirror: str) -> None:
    """Child process (`--platform-plain SPEC`): the plain loop, its times printed tagged."""
    import yaml

    seconds, epoch_ends = _run_plain(yaml.safe_load(Path(spec_path).read_text()), mirror)
    print(PLAIN_TAG + json.dumps({"trial_seconds": seconds, "epoch_ends": epoch_ends}), flush=True)


def _plain_child(
    spec: dict[str, Any], folder: Path, mirror: str, env: dict[str, str]
) -> tuple[float, dict[str, Any] | str]:
    """`plain_trials` in a fresh process: its wall time from launch to exit, and its payload
    (or the error it printed)."""
    import yaml

    spec_path = folder / f"plain-{time.monotonic_ns()}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    plain = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--platform-plain", str(spec_path), "--mirror", mirror],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - start
    payload = tagged(plain.stdout, PLAIN_TAG)
    if plain.returncode != 0 or payload is None:
        return wall, f"plain loop failed ({plain.returncode}): {plain.stderr[-2000:]}"
    return wall, payload


def epochs_for(
    trial_s: float, *, cpus: int, cuda: bool, mirror: str, folder: Path, env: dict[str, str]
) -> dict[str, Any] | str:
    """The epoch count that makes a trial of the full-mode config last about `trial_s`, from
    a 2-epoch trial in a fresh process (its second epoch, so one-off set-up counts once)."""
    spec = platform_spec(quick=False, cpus=cpus, cuda=cuda, epochs=2)
    spec["budget"]["trials"] = 1
    _, payload = _plain_child(spec, folder, mirror, env)
    if isinstance(payload, str):
        return payload
    first, second = payload["epoch_ends"][0]
    epoch_s = second - first
    setup_s = max(0.0, first - epoch_s)
    return {"target_trial_s": trial_s, "epoch_s": epoch_s, "setup_s": setup_s,
            "epochs": max(1, math.ceil((trial_s - setup_s) / epoch_s))}  # fmt: skip


def _xattn_command() -> list[str]:
    script = Path(sys.executable).parent / "xattn"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from xattn.cli import main; main()"]


def measure_platform(*, quick: bool, cpus: int, cuda: bool, mirror: str, trial_s: float = TRIAL_S) -> dict[str, Any]:
    missing = [name for name in ("ray", "mlflow", "optuna") if importlib.util.find_spec(name) is None]
    if missing:
        return {"skipped": f"not importable here: {', '.join(missing)}"}
    import yaml

    with tempfile.TemporaryDirectory(prefix="xattn-bench-") as tmp:
        env = child_env()
        for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "XATTN_OPTUNA_STORAGE", "XATTN_WORKSPACE"):
            env.pop(name, None)
        env["XATTN_DATA_MIRROR"] = mirror
        calibration, epochs = None, 1
        if not quick:
            calibration = epochs_for(trial_s, cpus=cpus, cuda=cuda, mirror=mirror, folder=Path(tmp), env=env)
            if isinstance(calibration, str):
                return {"error": calibration}
            epochs = calibration["epochs"]
            log(
                f"platform: one epoch takes {calibration['epoch_s']:.1f}s, "
                f"so {epochs} epochs make a trial of about {trial_s:.0f}s"
            )
        spec = platform_spec(quick=quick, cpus=cpus, cuda=cuda, epochs=epochs)
        spec_path = Path(tmp) / "bench-platform.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        trials, epochs = spec["budget"]["trials"], spec["budget"]["max_epochs"]
        log(f"platform: plain loop, {trials} trials x {epochs} epoch(s) on {spec['data']['dataset']} (fresh process)")
        plain_wall, plain_payload = _plain_child(spec, Path(tmp), mirror, env)
        if isinstance(plain_payload, str):
            return {"error": plain_payload}
        log(f"platform: plain loop {plain_wall:.1f}s; now `xattn study run` (Ray Tune + Optuna + MLflow)")
        launched = time.time()
        start = time.perf_counter()
        study = subprocess.run(
            [*_xattn_command(), "study", "run", str(spec_path), "--workspace", str(Path(tmp) / "workspace"),
             "--mirror", mirror, "--json"],
            check=False, capture_output=True, text=True, cwd=tmp, env=env, timeout=1800,
        )  # fmt: skip
        study_wall = time.perf_counter() - start
        timeline = _study_timeline(Path(tmp) / "workspace", spec["name"], launched, launched + study_wall)
        result = None
        for line in reversed(study.stdout.splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    result = json.loads(line)
                    break
        if study.returncode != 0 or result is None:
            return {"error": f"xattn study run failed ({study.returncode}): {(study.stderr or study.stdout)[-2000:]}"}
    log(f"platform: study {study_wall:.1f}s")
    trial_s_measured = plain_payload["trial_seconds"]
    overhead = (study_wall - plain_wall) / study_wall
    # One run each: the spread is estimated from the plain loop's trial-to-trial variation.
    sd_trial = statistics.stdev(trial_s_measured) if len(trial_s_measured) > 1 else None
    stat = summary([overhead])
    stat["sd"] = None if sd_trial is None else sd_trial * math.sqrt(len(trial_s_measured)) / study_wall
    stat["sd_basis"] = (
        "one run each; sd estimated from the plain loop's trial-to-trial sd, sqrt(trials) * sd / study wall"
    )
    return {
        "overhead_fraction": stat,
        "study_wall_s": study_wall,
        "plain_wall_s": plain_wall,
        "plain_trial_s": summary(trial_s_measured),
        "trial_counts": result.get("trial_counts"),
        "study_timeline_s": timeline,
        "parts": overhead_parts(study_wall, plain_wall, trial_s_measured, timeline),
        # The same epochs in both: a study epoch slower by as much as its trials are slower
        # points at the host's speed drifting between the two runs, not at bookkeeping.
        "plain_epochs_after_the_first_s": summary(
            b - a for ends in plain_payload["epoch_ends"] for a, b in itertools.pairwise(ends)
        ),
        "calibration": calibration,
        "goal": GOAL,
        "spec": spec,
    }


def overhead_parts(
    study_wall: float, plain_wall: float, plain_trials: list[float], timeline: dict[str, Any]
) -> dict[str, Any]:
    """The study's extra seconds split into a per-trial part (its trials as the driver saw them,
    and the gaps between them, against the plain loop's trials) and a once-per-study part (the
    rest), and the overhead those two parts give a study of n trials of the measured length:
    (fixed + n * per_trial) / (fixed + n * (trial + per_trial))."""
    if "trials_total" not in timeline:
        return {"error": "no study timeline"}
    n = len(plain_trials)
    trial = statistics.fmean(plain_trials)
    per_trial = (timeline["trials_total"] + timeline["between_trials"] - sum(plain_trials)) / n
    fixed = (study_wall - plain_wall) - n * per_trial

    def projected(trials: int) -> float:
        return (fixed + trials * per_trial) / (fixed + trials * (trial + per_trial))

    # The smallest study whose overhead is under the goal: fixed + n p < goal (fixed + n (T + p)).
    margin = GOAL * (trial + per_trial) - per_trial
    needed = math.floor((1 - GOAL) * fixed / margin) + 1 if margin > 0 else None
    return {
        "fixed_s": fixed,
        "per_trial_s": per_trial,
        "trial_s": trial,
        "per_trial_fraction": per_trial / (trial + per_trial),
        "projected_overhead_fraction": {f"{k}_trials": projected(k) for k in PROJECTED_TRIALS},
        "trials_for_goal": needed,
    }


def _study_timeline(workspace: Path, name: str, launched: float, exited: float) -> dict[str, Any]:
    """Where the study's wall time went, from the MLflow runs' start and end times: launch to
    the parent run (imports, preflight, stores), parent run to the first trial (Ray, Optuna),
    the trials (as the driver's callback saw them: worker start to completion), between and
    after them (summary, shutdown)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        parent = next(r for r in runs if r.data.tags.get(tags.ROLE) == "study")
        trials = sorted((r for r in runs if r.data.tags.get(tags.ROLE) == "search"), key=lambda r: r.info.start_time)
        spans = [((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000 for r in trials]
        epochs = []  # the driver's view of each epoch after a trial's first: report to report
        for run in trials:
            stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "val_loss"))
            epochs += [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
        first, last = trials[0].info.start_time / 1000, max((r.info.end_time or 0) for r in trials) / 1000
        parent_start, parent_end = parent.info.start_time / 1000, (parent.info.end_time or 0) / 1000
        return {
            "launch_to_parent_run": parent_start - launched,
            "parent_run_to_first_trial": first - parent_start,
            "trials": summary(spans),
            "epochs_after_the_first": summary(epochs),
            "trials_total": sum(spans),
            "between_trials": (last - first) - sum(spans),
            "last_trial_to_parent_end": parent_end - last,
            "parent_end_to_exit": exited - parent_end,
        }
    except Exception as error:  # noqa: BLE001 - the timeline is a diagnosis, not a result
        return {"error": f"{type(error).__name__}: {error}"}
