"""Which search configuration a study selects: one key and one rule for the finals, progress view and registered model.

A configuration is one search trial or, when the spec asks for inner folds, every trial of the
same values: each inner fold of a suggestion, and of any other suggestion of the same values.
Its score is the mean of its finished trials' selection metric, and the best score wins
(`tracking.runs.best_group`, ties to the smaller key). The search phase records each trial's
key on its MLflow run (tags.CONFIGURATION), so `tracking.runs.best_child`, which picks the
registered model, groups the runs exactly as the summary and the progress view group trials.

Also here: how well a search's validation metric ranked its configurations by test r.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xattn.tracking.runs import best_group

# The key Ray Tune's Repeater sets in each repeat's config (ray.tune.search.repeater.TRIAL_INDEX):
# a search trial's inner fold when the spec asks for inner folds.
INNER_FOLD = "__trial_index__"

ALL_FAMILIES = "all"  # the key of the agreement over every family's search trials


def configuration_key(config: Mapping[str, Any], trial_id: str) -> str:
    """The configuration a trial with this config belongs to: the trial alone, or with inner
    folds the hash of its values without the fold (a tag value of bounded length)."""
    if INNER_FOLD not in config:
        return str(trial_id)
    values = repr(sorted((k, v) for k, v in config.items() if k != INNER_FOLD))
    return f"config-{hashlib.sha256(values.encode()).hexdigest()[:16]}"


def searched_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's configuration without its inner-fold index: what the finals retrain."""
    return {k: v for k, v in config.items() if k != INNER_FOLD}


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


@dataclass
class Configuration:
    key: str
    values: dict[str, Any]
    trials: list[dict[str, float]] = field(default_factory=list)  # the last result of each finished trial


def configurations(results) -> dict[str, Configuration]:
    """The finished trials of a search (a Ray Tune ResultGrid, or results alike) by configuration."""
    groups: dict[str, Configuration] = {}
    for result in results:
        if result.error is None and result.metrics:
            key = configuration_key(result.config, result.metrics.get("trial_id", str(id(result))))
            groups.setdefault(key, Configuration(key, searched_values(result.config))).trials.append(
                dict(result.metrics)
            )
    return groups


def mean_metrics(trials: list[dict[str, float]]) -> dict[str, float]:
    """Every numeric metric all `trials` reported, averaged over them."""
    keys = set.intersection(*(set(k for k, v in trial.items() if isinstance(v, (int, float))) for trial in trials))
    return {k: sum(float(trial[k]) for trial in trials) / len(trials) for k in keys}


def best_of(results, metric: str, mode: str) -> Configuration | None:
    """The search's best configuration by `best_<metric>`, or None when no trial finished."""
    groups = configurations(results)
    selected = f"best_{metric}"
    scores = {key: [trial[selected] for trial in group.trials if selected in trial] for key, group in groups.items()}
    key = best_group(scores, mode)
    return groups[key] if key is not None else None


def best_configuration(results, metric: str, mode: str) -> dict[str, Any]:
    """The values of the search's best configuration by `best_<metric>`, or {} when no trial finished."""
    best = best_of(results, metric, mode)
    return dict(best.values) if best is not None else {}


class Agreement:
    """Per family, and over every family's searches together, the Spearman correlation of the
    search's validation metric with test r across its configurations (comparison.validation_test_agreement)."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.by_family: dict[str, dict[str, Any]] = {}
        self._trials: dict[str, list[dict[str, float]]] = {}  # a family's configurations over its searches
        self._pooled: list[dict[str, float]] = []  # every family's configurations, for ALL_FAMILIES
        self._searches: dict[str, list[int]] = {}

    def add(self, family: str, results, *, prefix: str, pooled: bool) -> dict[str, dict[str, Any]]:
        """Record one search of `family` (a nested study searches once per outer fold); return the
        agreements so far to log, by metric prefix."""
        from xattn.tuning.comparison import GROUP

        search = len(self._searches.setdefault(family, []))  # a nested study searches once per outer fold
        self._searches[family].append(search)
        trials = [
            {**mean_metrics(group.trials), GROUP: f"{family}-{search}"} for group in configurations(results).values()
        ]
        self._trials.setdefault(family, []).extend(trials)
        logged = {prefix: self._record(family, self._trials[family])}
        if pooled:
            # Across every family's trials too: the study as a whole selects on this signal.
            self._pooled.extend(trials)
            logged["search.all."] = self._record(ALL_FAMILIES, self._pooled)
        return logged

    def _record(self, key: str, trials: list[dict[str, float]]) -> dict[str, Any]:
        from xattn.tuning.comparison import validation_test_agreement  # scipy: not for the progress view's import

        self.by_family[key] = validation_test_agreement(trials, self.metric, self.mode)
        return self.by_family[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.by_family.get(key, default)
