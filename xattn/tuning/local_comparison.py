"""A study's comparison grid without Ray, Optuna or MLflow: every family at its fixed settings.

`xattn study run` with `comparison.tune: false` retrains each family's fixed configuration
on K outer region folds for S seeds through Ray Tune and logs every run to MLflow. This runs
the same grid (the same `prepare_trial`, splits, seeds and budget) one run after another in
this process, for a machine that has torch but not the platform (a bare GPU node) or for a
second, independent check of a logged comparison. Nothing is written to any store; a JSON file
of the comparison and its runs is, where asked for (`xattn compare-local --json-out`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xattn.data.datasets import data_mirror
from xattn.errors import PathError, SpecError
from xattn.paths import ensure_can_create
from xattn.training.trainer import fit
from xattn.tuning.comparison import FinalResult, compare_results
from xattn.tuning.spec import StudySpec
from xattn.tuning.trial import preflight, prepare_trial


@dataclass(frozen=True)
class LocalRun:
    result: FinalResult
    epochs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The run as the JSON file lists it: family, fold, seed, metrics, epochs, seconds."""
        return {**self.result.__dict__, "epochs": self.epochs, "seconds": self.seconds}


def check_json_out(path: Path) -> None:
    """A one-line PathError unless `path` names a file that can be written, in a folder that exists."""
    if path.is_dir():
        raise PathError(f"--json-out {path} is a folder: name a file, e.g. {path / 'comparison.json'}")
    if not path.parent.is_dir():
        raise PathError(f"--json-out {path}: folder {path.parent} does not exist")
    ensure_can_create(path.parent, "--json-out", "choose another --json-out")


def write_json_out(path: Path, comparison: dict[str, Any] | None, runs: list[LocalRun]) -> None:
    """`{"comparison": ..., "runs": [...]}` written whole (staged beside `path`, then moved in), so
    a reader never sees half a file; `comparison` is None until every run has finished."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"comparison": comparison, "runs": [run.to_dict() for run in runs]}, indent=2) + "\n")
    partial.replace(path)


def run_local_comparison(
    spec: StudySpec,
    *,
    mirror: str | Path | None = None,
    device: str | None = None,
    on_run: Callable[[LocalRun, int, int], None] | None = None,
    json_out: Path | None = None,
    source: str = "spec",
) -> tuple[dict[str, Any], list[LocalRun]]:
    """Train `spec.model.family` and every `compare_with` family on K folds x S seeds.

    Checks first, before any training: the spec names families to compare (`source` names the
    spec in that error), its data loads (`mirror`, else $XATTN_DATA_MIRROR), `json_out` can be
    written. Returns the comparison (as `xattn compare --format json` prints it) and every run;
    `json_out`, where given, is rewritten after every run (a grid cut short keeps what it
    finished) and at the end with the comparison; `on_run(run, done, total)` is called after each
    run, for progress.
    """
    if not spec.compare_with:
        raise SpecError(
            f"{source}: the spec has no compare_with: name the baselines, e.g. --set compare_with=all_baselines"
        )
    mirror_path = data_mirror(mirror)
    mirror = str(mirror_path) if mirror_path else None
    preflight(spec, mirror)
    if json_out is not None:
        check_json_out(json_out)

    families = [spec.model.family, *spec.compare_with]
    folds, seeds = spec.comparison.folds, [spec.seed + offset for offset in range(spec.comparison.seeds)]
    total = len(families) * folds * len(seeds)
    runs: list[LocalRun] = []
    for family in families:
        final = spec.for_family(family).model_copy(deep=True)
        final.data.split = final.data.split.model_copy(update={"folds": folds, "fold": 0})
        for fold in range(folds):
            for seed in seeds:
                start = time.perf_counter()
                trial = prepare_trial(final, {"_fold": fold, "_seed": seed}, mirror=mirror, device=device)
                fitted = fit(trial.model, trial.experiment.pairs, trial.train_config)
                run = LocalRun(FinalResult(family, str(fold), str(seed), fitted.test), fitted.epochs_run,
                               time.perf_counter() - start)  # fmt: skip
                runs.append(run)
                if json_out is not None:
                    write_json_out(json_out, None, runs)
                if on_run is not None:
                    on_run(run, len(runs), total)
    comparison = compare_results([run.result for run in runs], reference=spec.model.family)
    if json_out is not None:
        write_json_out(json_out, comparison, runs)
    return comparison, runs
