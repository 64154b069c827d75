"""A study's comparison grid without Ray, Optuna or MLflow: every family at its fixed settings.

`xattn study run` with `comparison.tune: false` retrains each family's fixed configuration
on K outer region folds for S seeds through Ray Tune and logs every run to MLflow. This runs
the same grid (the same `prepare_trial`, splits, seeds and budget) one run after another in
this process, for a machine that has torch but not the platform (a bare GPU node) or for a
second, independent check of a logged comparison. Nothing is written to any store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from xattn.training.trainer import fit
from xattn.tuning.comparison import FinalResult, compare_results
from xattn.tuning.spec import StudySpec
from xattn.tuning.trial import prepare_trial


@dataclass(frozen=True)
class LocalRun:
    result: FinalResult
    epochs: int
    seconds: float


def run_local_comparison(
    spec: StudySpec,
    *,
    mirror: str | None,
    device: str | None = None,
    on_run: Callable[[LocalRun, int, int], None] | None = None,
) -> tuple[dict[str, Any], list[LocalRun]]:
    """Train `spec.model.family` and every `compare_with` family on K folds x S seeds.

    Returns the comparison (as `xattn compare --format json` prints it) and every run;
    `on_run(run, done, total)` is called after each run, for progress.
    """
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
                if on_run is not None:
                    on_run(run, len(runs), total)
    comparison = compare_results([run.result for run in runs], reference=spec.model.family)
    return comparison, runs
