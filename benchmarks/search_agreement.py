"""Does a study's search select on a signal that predicts test r? Read back from its MLflow runs.

Per family, and over all families, the Spearman correlation of each search trial's validation
metric (`best_<metric>`) with its test r: pooled over the outer folds' searches, and within
folds (both centred on each fold's means, so an easy fold does not make the search look
predictive: `xattn.tuning.comparison.validation_test_agreement`). A study run since the
within-fold figure exists has both in `comparison.json`; this recomputes them for any study.

    python -m benchmarks.search_agreement s100-compare-cpu --workspace .xattn
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict


def agreement_table(study: str, workspace: str) -> list[dict]:
    from xattn.tracking import tags
    from xattn.tracking.runs import child_runs, find_parent_run
    from xattn.tracking.store import Workspace, connect
    from xattn.tuning.comparison import GROUP, validation_test_agreement

    client = connect(Workspace.open(workspace))
    parent = find_parent_run(client, study)
    metric = parent.data.tags.get(tags.METRIC, "best_val_pearson").removeprefix("best_")
    mode = parent.data.tags.get(tags.MODE, "max")
    trials: dict[str, list[dict]] = defaultdict(list)
    for run in child_runs(client, parent):
        run_tags = run.data.tags
        if run_tags.get(tags.ROLE) != "search" or run.info.status != "FINISHED":
            continue
        if run_tags.get(tags.FOLD) == tags.WHOLE_DATA_FOLD:  # the deployed model's search: no test regions
            continue
        family = run_tags[tags.FAMILY]
        trials[family].append({**run.data.metrics, GROUP: f"{family}-{run_tags.get(tags.FOLD)}"})
    rows = []
    for family, family_trials in [*sorted(trials.items()), ("all", [t for ts in trials.values() for t in ts])]:
        agreement = validation_test_agreement(family_trials, metric, mode)
        rows.append(
            {
                "family": family,
                "trials": agreement["n_trials"],
                "pooled": agreement["spearman"],
                "within_folds": agreement.get("spearman_within_folds", math.nan),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_agreement", description=__doc__.split("\n")[0])
    parser.add_argument("study")
    parser.add_argument("--workspace", default=".xattn")
    args = parser.parse_args(argv)
    print("| family | search trials | Spearman(val, test), pooled | within folds |")
    print("| --- | --- | --- | --- |")
    for row in agreement_table(args.study, args.workspace):
        print(f"| {row['family']} | {row['trials']} | {row['pooled']:+.2f} | {row['within_folds']:+.2f} |")


if __name__ == "__main__":
    main()
