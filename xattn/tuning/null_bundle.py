"""Null runs trained as one stack: a Ray trial that fits a bundle of nulls of one outer fold and seed.

A null phase trains one configuration many times over data that differ only in the null map
(`comparison.nulls`: n nulls x K folds x S seeds). Apart from its arithmetic, each such run
costs a Ray trial and an MLflow run's per-epoch writes (about 2 s on 2 cores), which is most
of a reference family's run. Here one trial trains NULLS_PER_TRIAL of them through
`fit_stacked` (the same result as training each alone, xattn/training/stacked.py) and writes
each member's history, metrics and checkpoint into its one Ray checkpoint; the driver records
every member as its own MLflow null run (xattn.tracking.stacked_runs), as a null run trained
alone would be recorded.

The MLP and the reference families are bundled: their stacked training is `fit`'s exactly and
their runs are mostly overhead. On hcp-s100 (s100-nulls-cpu, 8 nulls x 4 folds, 2 cores) a
reference's 32 null runs took 3-4 s bundled, against about 1.5 s each one per trial, and the
MLP's 25 s against about 3 s each. cross_attention is not: its step is already compute, and 8
stacked took as long as 8 alone (24.6 against 25 s a run), while one run per trial keeps each
null's own live progress and resume point. Nor are the self-attention families (their stacked
dropout masks are not `fit`'s) or a spec that asks for GPUs.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from xattn.tracking.stacked_runs import MEMBER_FOLDER, MEMBERS_FILE
from xattn.training.checkpoint import save_checkpoint
from xattn.training.stacked import fit_stacked
from xattn.training.trainer import TrainingDiverged
from xattn.tuning.spec import StudySpec
from xattn.tuning.trainable import where_it_trains
from xattn.tuning.trial import CELL, NULL_INDEX, prepare_trial

STACKED_FAMILIES = frozenset({"mlp", "distance_decay", "cge", "bilinear_lowrank"})
# Enough models a stack to amortise a trial, few enough that a spec's 99 nulls over 4 folds
# still make 12 trials to share out among the workers.
NULLS_PER_TRIAL = 33


def bundles(family: str, spec: StudySpec) -> bool:
    """Whether the null phase trains `family`'s nulls in bundles."""
    return family in STACKED_FAMILIES and spec.resources.gpus == 0


def bundle_cells(folds: int, seeds: list[int], n: int) -> list[list[int]]:
    """[fold, seed, first null index] of every bundle, its Ray grid cell: each fold and seed's n
    nulls, NULLS_PER_TRIAL at a time."""
    return [[fold, seed, first] for fold in range(folds) for seed in seeds for first in range(0, n, NULLS_PER_TRIAL)]


def members_of(config: dict[str, Any], n: int) -> list[int]:
    """The null indices a bundle trial trains."""
    first = int(config[CELL][2])
    return list(range(first, min(first + NULLS_PER_TRIAL, n)))


def run_bundle(config: dict[str, Any], *, spec_json: dict[str, Any], mirror: str | None, n: int) -> None:
    spec = StudySpec.model_validate(spec_json)
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    own = {k: v for k, v in config.items() if k != CELL}
    indices = members_of(config, n)
    trials = [prepare_trial(spec, {**own, NULL_INDEX: index}, mirror=mirror) for index in indices]
    where = where_it_trains(spec, trials[0].train_config)
    results = fit_stacked(
        [trial.model for trial in trials],
        [trial.experiment.pairs for trial in trials],
        [trial.train_config for trial in trials],
        # The progress view shows the bundle's epoch; members are recorded from the last report.
        on_epoch_end=lambda epoch, reports: tune.report({"epoch": epoch, "members_training": len(reports)}),
    )
    members: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        for index, trial, result in zip(indices, trials, results):
            if isinstance(result, TrainingDiverged):
                members[str(index)] = {"failure": f"TrainingDiverged: {result}"}
                continue
            final = {**result.metrics(), **result.test}
            members[str(index)] = {"history": result.history, "final": final, "epochs_run": result.epochs_run}
            extra = {**trial.checkpoint_extra, "epoch": result.best_epoch, "metrics": final}
            save_checkpoint(Path(directory) / MEMBER_FOLDER.format(index=index), trial.model, extra=extra)
        document = {"where": where, "stacked": len(indices), "members": members}
        (Path(directory) / MEMBERS_FILE).write_text(json.dumps(document, default=_plain) + "\n")
        tested = [m["final"].get("test_pearson", math.nan) for m in members.values() if "final" in m]
        summary = {
            **where,
            "epoch": max((m.get("epochs_run", 0) for m in members.values()), default=0),
            "members": len(indices),
            "test_pearson": float(sum(tested) / len(tested)) if tested else math.nan,
        }
        tune.report(summary, checkpoint=tune.Checkpoint.from_directory(directory))


def bundle_trainable(spec: StudySpec, mirror: str | None, n: int) -> Any:
    """The trainable of a bundled null phase, with one trial's CPU share attached."""
    fn = tune.with_parameters(run_bundle, spec_json=spec.model_dump(mode="json"), mirror=mirror, n=n)
    return tune.with_resources(fn, {"cpu": spec.resources.cpus, "gpu": 0})


def _plain(value: Any) -> Any:
    """History entries hold numpy or torch scalars now and then: JSON takes their numbers."""
    return value.item() if hasattr(value, "item") else str(value)
