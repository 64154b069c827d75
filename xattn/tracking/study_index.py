"""Study listings from a tracking store: its studies, one study run's trials, and what its search changed.

What `xattn study list` and `xattn study show` print, as plain records a notebook can use too:

    ws = Workspace.open("path/to/workspace", create=False)
    list_studies(ws)                        # one row per study
    summary = study_summary(connect(ws), "quickstart")
    compact_tables(summary)                 # the tables `xattn study show` prints, one per family
    show_table(summary, full_values=True)   # the one table of `xattn study show --wide`
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

from xattn.tracking import tags
from xattn.tracking.runs import child_runs, find_parent_run, trial_row
from xattn.tracking.store import Workspace, connect

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

# A trial of `study_summary` (and of `xattn study show --json`): these fields of `trial_row`, in
# this order, with "family" the run's comparison arm (its family, or "family:variant").
SUMMARY_FIELDS = ("run_id", "parent_run_id", "ray_trial_id", "optuna_trial_number", "role", "family", "run_name",
                  "status", "best", "epochs", "stopped_early_at", "params", "metrics")  # fmt: skip


class ShowTable(NamedTuple):
    """`xattn study show`'s table: its header, one row of cells per trial, and per family the
    params its runs share, as text (families that share none left out)."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    fixed: dict[str, str]


def list_studies(workspace: Workspace) -> list[dict[str, Any]]:
    """One row per study in the workspace's tracking store (name, experiment, how many study runs,
    the newest one and its status); a store not created yet holds none, and stays uncreated."""
    if workspace.missing_store() is not None:
        return []
    client = connect(workspace)
    return [
        study_row(client, experiment) for experiment in client.search_experiments() if tags.STUDY in experiment.tags
    ]


def study_row(client: MlflowClient, experiment: Experiment) -> dict[str, Any]:
    """The row of `list_studies` for one study's experiment."""
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`{tags.ROLE}` = 'study'", order_by=["attributes.start_time DESC"]
    )
    latest = runs[0] if runs else None
    return {
        "name": experiment.name,
        "experiment_id": experiment.experiment_id,
        "study_runs": len(runs),
        "latest_run_id": latest.info.run_id if latest else None,
        "latest_status": latest.info.status if latest else None,
    }


def study_summary(client: MlflowClient, name: str, run_id: str | None = None) -> dict[str, Any]:
    """A study run (the newest, or `run_id`) and its trials: which is best, the epochs each ran,
    where the scheduler stopped it early. Raises StudyNotFound for a study or run that is not there."""
    parent = find_parent_run(client, name, run_id)
    best_run_id = parent.data.tags.get(tags.BEST_RUN_ID)
    max_epochs = int(parent.data.params.get("max_epochs", 0)) or None
    return {
        "name": name,
        "experiment_id": parent.info.experiment_id,
        "parent_run_id": parent.info.run_id,
        "status": parent.info.status,
        "best_run_id": best_run_id,
        "metric": parent.data.tags.get(tags.METRIC, "best_val_loss"),
        "max_epochs": max_epochs,
        "trials": [summary_trial(run, max_epochs, best_run_id) for run in child_runs(client, parent)],
    }


def summary_trial(run: Run, max_epochs: int | None, best_run_id: str | None) -> dict[str, Any]:
    """One child run as `study_summary` lists it: its `trial_row`, narrowed to SUMMARY_FIELDS."""
    row = trial_row(run, max_epochs)
    row = {**row, "family": row["arm"], "best": row["run_id"] == best_run_id}
    return {field: row[field] for field in SUMMARY_FIELDS}


def split_params(trials: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, dict[str, str]]]:
    """Per family (or arm): the params whose values differ between its runs, and the rest with
    their one value, so a table shows what the search changed and not the same settings 50 times."""
    by_family: dict[str, list[dict[str, str]]] = {}
    for trial in trials:
        by_family.setdefault(trial["family"], []).append(trial["params"])
    varying, fixed = {}, {}
    for family, params in by_family.items():
        keys = set().union(*params)
        varying[family] = {k for k in keys if len({p.get(k) for p in params}) > 1}
        fixed[family] = {k: params[0][k] for k in keys - varying[family] if k in params[0]}
    return varying, fixed


def short_number(text: str) -> str:
    """MLflow params are strings: show long floats with 3 significant digits."""
    try:
        return text if "." not in text and "e" not in text else f"{float(text):.3g}"
    except ValueError:
        return text


def params_text(
    params: dict[str, str], keys: set[str] | None = None, *, full_values: bool = False, separator: str = ", "
) -> str:
    """`name=value, ...` sorted by name, floats shortened unless `full_values`; only `keys` where given."""
    value = str if full_values else short_number
    return separator.join(f"{k}={value(v)}" for k, v in sorted(params.items()) if keys is None or k in keys)


def show_table(summary: dict[str, Any], *, full_values: bool = False) -> ShowTable:
    """The table of a `study_summary`: the best trial starred, each trial's status (or the epoch
    the scheduler stopped it at), epochs, selection metric, test r and the params that differ."""
    metric = summary["metric"]
    varying, fixed = split_params(summary["trials"])
    rows = []
    for trial in summary["trials"]:
        m = trial["metrics"]
        status = (
            trial["status"]
            if trial["stopped_early_at"] is None
            else f"stopped early (epoch {trial['stopped_early_at']})"
        )
        rows.append((
            "*" if trial["best"] else "",
            trial["run_name"] or trial["run_id"],
            status,
            _epochs(trial, summary["max_epochs"]),
            f"{m[metric]:.4f}" if metric in m else "-",
            f"{m['test_pearson']:.3f}" if "test_pearson" in m else "-",
            params_text(trial["params"], varying[trial["family"]], full_values=full_values),
        ))  # fmt: skip
    columns = ("", "run", "status", "epochs", metric, "test_pearson", "params that differ")
    fixed_text = {family: params_text(params, full_values=full_values) for family, params in fixed.items() if params}
    return ShowTable(columns, rows, fixed_text)


class FamilyTable(NamedTuple):
    """One family's (or arm's) runs in `xattn study show`'s compact view, for an 80-column
    terminal: run names without the family and without the fold, seed and inner fold every run
    of the family shares (`shared`, e.g. "fold 0, seed 0"), one changed param a line."""

    family: str
    shared: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    fixed: str


# The parts of a run name (xattn.tracking.callback) that say where it trained: fold0, seed1, inner2, foldall.
_PLACE = re.compile(r"(fold|seed|inner)(\w+)")


def compact_tables(summary: dict[str, Any]) -> list[FamilyTable]:
    """The study's runs as one compact table per family, in the order the families first appear."""
    metric = summary["metric"]
    varying, fixed = split_params(summary["trials"])
    families: dict[str, list[dict[str, Any]]] = {}
    for trial in summary["trials"]:
        families.setdefault(trial["family"], []).append(trial)
    tables = []
    for family, trials in families.items():
        names = [_name_parts(trial, family) for trial in trials]
        # a place every run of the family shares goes to the title, not to each row
        shared = {
            key: value for key, value in names[0][1].items() if all(places.get(key) == value for _, places in names)
        }
        rows = []
        for trial, (label, places) in zip(trials, names):
            m = trial["metrics"]
            where = [f"{key} {value}" for key, value in places.items() if key not in shared]
            rows.append((
                "*" if trial["best"] else "",
                ", ".join([label, *where]) if label else trial["run_id"],
                "stopped early" if trial["stopped_early_at"] is not None else trial["status"].lower(),
                _epochs(trial, summary["max_epochs"]),
                f"{m[metric]:.4f}" if metric in m else "-",
                f"{m['test_pearson']:.3f}" if "test_pearson" in m else "-",
                params_text(trial["params"], varying[family], separator="\n"),
            ))  # fmt: skip
        # "_" to " ": a long metric name then wraps in its header instead of widening its column
        columns = ("", "run", "status", "epochs", metric.replace("_", " "), "test r", "params that differ")
        shared_text = ", ".join(f"{key} {value}" for key, value in shared.items())
        tables.append(FamilyTable(family, shared_text, columns, rows, params_text(fixed.get(family, {}))))
    return tables


def _name_parts(trial: dict[str, Any], family: str) -> tuple[str, dict[str, str]]:
    """A run name as (what the run is, where it trained): "cross_attention-trial-3-fold0-seed0"
    is ("trial-3", {"fold": "0", "seed": "0"}); a run without a name is ("", {})."""
    name = trial["run_name"] or ""
    for prefix in (f"{family}-", f"{family.split(':')[0]}-"):
        name = name.removeprefix(prefix)
    label, places = [], {}
    for part in name.split("-") if name else []:
        place = _PLACE.fullmatch(part)
        if place:
            places[place[1]] = place[2]
        else:
            label.append(part)
    return "-".join(label), places  # "trial-3", not "trial 3": a table wraps between words, not inside a name


def _epochs(trial: dict[str, Any], max_epochs: int | None) -> str:
    if trial["epochs"] is None:
        return "-"
    return f"{trial['epochs']}/{max_epochs}" if max_epochs else str(trial["epochs"])
