"""A study read back from MLflow and Optuna as the plain data its figures are drawn from.

Each reader raises plots.CannotDraw when the study has nothing to draw that group from (no
Optuna study, no checkpoint, no finished run): a normal state for a young or small study.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xattn.reporting.plots import CannotDraw, TrialCurve
from xattn.tracking import tags
from xattn.tracking.runs import arm_of, child_runs, held_out_run
from xattn.tuning.comparison import FinalResult

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow.entities import Metric, Run
    from mlflow.tracking import MlflowClient

    from xattn.tracking.runs import CheckpointCache

COMPARISON_ARTIFACT = "comparison.json"  # written by xattn.tuning.comparison.log_comparison


def optuna_study(parent: Run, storage: str) -> optuna.Study:
    """The Optuna study that searched for study run `parent`."""
    import optuna

    name = parent.data.tags.get(tags.OPTUNA_STUDY)
    if not name:
        raise CannotDraw(f"study run {parent.info.run_id} has no tag xattn.optuna_study")
    return optuna.load_study(study_name=name, storage=storage)


def max_epochs(parent: Run) -> int | None:
    """The study's epoch budget per trial, when its run logged one."""
    value = parent.data.params.get("max_epochs")
    return int(value) if value is not None and value.isdigit() else None


# -- the search: learning curves -------------------------------------------------------------


def epoch_curve(history: Iterable[Metric]) -> tuple[list[int], list[float]]:
    """Epochs and values of a metric history, one value per epoch: a resumed trial logs the
    epochs after its checkpoint again, and the later value is the one its run went on from."""
    latest: dict[int, float] = {}
    for metric in sorted(history, key=lambda m: m.timestamp):  # stable: ties keep logging order
        latest[int(metric.step)] = float(metric.value)
    epochs = sorted(latest)
    return epochs, [latest[epoch] for epoch in epochs]


def trial_curves(client: MlflowClient, parent: Run, metric: str) -> list[TrialCurve]:
    """The per-epoch `metric` of every search trial of the study's own family, by trial."""
    family = parent.data.tags.get(tags.FAMILY)
    curves = []
    for run in child_runs(client, parent):
        run_tags = run.data.tags
        if (
            run_tags.get(tags.ROLE, "search") != "search"
            or run_tags.get(tags.FAMILY, family) != family
            or tags.ORPHANED in run_tags
        ):
            continue  # other families are in the comparison figures; orphans ran again as another trial
        epochs, values = epoch_curve(client.get_metric_history(run.info.run_id, metric))
        if epochs:
            epochs_run = int(run_tags.get(tags.EPOCHS_RUN, epochs[-1]))
            curves.append(
                TrialCurve(run_tags.get(tags.RUN_NAME, run.info.run_id), epochs, values, run.info.status, epochs_run)
            )
    return curves


# -- the comparison of families --------------------------------------------------------------


def has_comparison(client: MlflowClient, parent: Run) -> bool:
    return any(artifact.path == COMPARISON_ARTIFACT for artifact in client.list_artifacts(parent.info.run_id))


def read_comparison(client: MlflowClient, parent: Run) -> dict[str, Any]:
    """The comparison of families logged to study run `parent` (its comparison.json)."""
    from xattn.tuning.comparison import load_comparison

    return load_comparison(client, parent.data.tags.get(tags.STUDY, ""), parent.info.run_id)


def final_results(client: MlflowClient, parent: Run, metric: str = "test_pearson") -> list[FinalResult]:
    """The finished final (comparison) runs of a study that logged `metric`."""
    return [
        FinalResult(arm_of(run), run.data.tags.get(tags.FOLD), run.data.tags.get(tags.SEED), dict(run.data.metrics))
        for run in child_runs(client, parent)
        if run.data.tags.get(tags.ROLE) == "final" and run.info.status == "FINISHED" and metric in run.data.metrics
    ]  # fmt: skip


# -- the best trial on its held-out regions --------------------------------------------------


def best_predictions(
    client: MlflowClient, parent: Run, mirror: str | None, checkpoints: CheckpointCache | None = None
) -> tuple[str, pd.DataFrame]:
    """The best trial's run name and its predictions on its test pairs (reporting.predictions);
    in a nested study, the run that stands for it on held-out regions (`held_out_run`)."""
    from xattn.errors import StudyNotFound
    from xattn.reporting.predictions import run_test_predictions

    try:
        best = held_out_run(client, parent)
    except StudyNotFound as error:
        raise CannotDraw(str(error)) from None
    if not any(a.path == "checkpoint" for a in client.list_artifacts(best.info.run_id)):
        raise CannotDraw(f"the best trial's run {best.info.run_id} has no checkpoint")
    predictions = run_test_predictions(client, best.info.run_id, mirror=mirror, checkpoints=checkpoints)
    return best.data.tags.get(tags.RUN_NAME, best.info.run_id), predictions
