"""One trial without a scheduler: a spec and a sampled configuration, made ready to fit.

The Ray Tune trainable and the local comparison runner (benchmarks/comparison.py) both go
through `prepare_trial`, so a configuration trains the same way whoever schedules it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xattn.data import build_gene_vectors
from xattn.data.gene_selection import select_genes
from xattn.data.nulls import null_data, null_seed
from xattn.data.splits import inner_folds, region_folds
from xattn.errors import DataError
from xattn.experiment import Experiment, build_trial_model, load_data, prepare_experiment, split_regions
from xattn.training.config import TrainConfig
from xattn.tuning.selection import INNER_FOLD
from xattn.tuning.spec import StudySpec

NULL_METHOD = "_null_method"  # trial config keys of a null run, beside the final runs' _fold and _seed
NULL_INDEX = "_null_index"
# A final run's configuration depends on its fold (each outer fold selects its own): the phase
# passes every fold's as {str(fold): values} and the trial takes its own.
SELECTED = "_selected"
WHOLE = "_whole"  # "selection" or "refit": the deployable model's split (xattn.experiment.WHOLE_DATA)
EPOCHS = "_epochs"  # a refit's epochs: it has no validation pairs to stop on
CELL = "_cell"  # a final run's [fold, seed]: the grid Ray searches, from which _fold and _seed are set


def own_configuration(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config with its fold's selected configuration (SELECTED) merged in."""
    config = dict(config)
    selected = config.pop(SELECTED, None)
    if selected is not None:
        config.update(selected[str(config.get("_fold", 0))])
    return config


@dataclass
class PreparedTrial:
    params: dict[str, Any]
    seed: int
    fold: int
    experiment: Experiment
    model: torch.nn.Module
    train_config: TrainConfig
    checkpoint_extra: dict[str, Any]


def prepare_trial(
    spec: StudySpec, config: dict[str, Any], *, mirror: str | None, device: str | None = None
) -> PreparedTrial:
    """Data, split, model and optimiser settings of one trial of `spec`.

    Final (comparison) runs name their outer fold and seed as `_fold` and `_seed`, and their
    fold's configuration among every fold's (`SELECTED`); the deployable model's runs name
    their whole-data split (`WHOLE`) and a refit its epochs (`EPOCHS`). The split
    itself is always drawn with the study's seed, and so is a null run's null (named as
    `_null_method` and `_null_index`, one map for every outer fold: `xattn.tuning.null_phase`), so
    every family and seed sees the same regions in fold k. A search trial of a spec with
    `split.inner_folds` names its inner fold as Ray's repeat index (`INNER_FOLD`). `device`
    defaults to CUDA when the spec asks for GPUs and one is there.
    """
    spec = spec.model_copy(deep=True)
    config = own_configuration(config)
    config.pop(CELL, None)
    whole = config.pop(WHOLE, None)
    epochs = config.pop(EPOCHS, None)
    if "_fold" in config:
        spec.data.split = spec.data.split.model_copy(update={"fold": config.pop("_fold")})
    seed = config.pop("_seed", spec.seed)
    null = null_of_trial(config, spec.seed, spec.data.split.fold)
    inner_fold = config.pop(INNER_FOLD, None) if spec.data.split.inner_folds else None
    config.pop(INNER_FOLD, None)
    params = spec.trial_params(config)
    if device is None:
        device = "cuda" if spec.resources.gpus > 0 and torch.cuda.is_available() else "cpu"

    experiment = prepare_experiment(
        spec.data, params, seed, split_seed=spec.seed, mirror=mirror, inner_fold=inner_fold, null=null, whole=whole,
        device=device,
    )  # fmt: skip
    model = build_trial_model(experiment, spec.model.family, params, seed).to(device)
    budget = spec.budget
    train_config = TrainConfig.from_params(
        params, max_epochs=int(epochs or budget.max_epochs), patience_steps=budget.patience_steps,
        min_steps=budget.min_steps, monitor=spec.search.metric, seed=seed, device=device,
    )  # fmt: skip
    extra = experiment.checkpoint_extra(spec.data, params, seed)
    if null is not None:
        extra["null"] = null
    return PreparedTrial(params, seed, spec.data.split.fold, experiment, model, train_config, extra)


def null_drawn(config: dict[str, Any]) -> tuple[str, int] | None:
    """The (method, index) of the null a null run's config names, or None for real data."""
    method = config.get(NULL_METHOD)
    return (method, int(config[NULL_INDEX])) if method is not None else None


def null_of_trial(config: dict[str, Any], seed: int, fold: int) -> dict[str, Any] | None:
    """Pop a null run's keys from its trial config; the null it trains on, or None for real data.

    The null's seed leaves out the fold: null i is one map, scored over every outer fold as the
    real expression is (the fold is recorded, not drawn from)."""
    method = config.pop(NULL_METHOD, None)
    index = config.pop(NULL_INDEX, None)
    if method is None:
        return None
    return {"method": method, "index": int(index), "fold": int(fold), "seed": null_seed(seed, method, int(index))}


def _naming_field(field: str, check):
    """`check()`, with the spec field that set its arguments named in its one-line error."""
    try:
        return check()
    except DataError as error:
        raise DataError(f"{field}: {error}") from None


def preflight(spec: StudySpec, mirror: str | None) -> None:
    """Load the data, select genes and build every gene embedding the space can ask for, so bad
    files fail now."""
    data = load_data(spec.data, mirror)
    split = _naming_field("data.split", lambda: split_regions(data, spec.data, spec.seed))
    if spec.data.split.inner_folds:
        _naming_field("data.split.inner_folds", lambda: inner_folds(data, split, spec.data.split.inner_folds))
    if spec.compares:  # the final runs' outer folds: found out after the search, this cost a whole search
        method, val_fraction = spec.data.split.method, spec.data.split.val_fraction
        _naming_field(
            "comparison.folds",
            lambda: region_folds(data, spec.comparison.folds, method=method, seed=spec.seed, val_fraction=val_fraction),
        )
    if spec.comparison.nulls is not None:
        # A one-line error where the data cannot have them.
        null_data(data, spec.comparison.nulls.method, seed=spec.seed)
    data = data.select_genes(select_genes(data, spec.data.genes, split.train))
    kinds = {spec.data.genevec, spec.model.fixed.get("genevec", spec.data.genevec)}
    if "genevec" in spec.searched:
        kinds |= set(spec.searched["genevec"].candidate_values())
    for kind in sorted(kinds):
        build_gene_vectors(data, kind, split.train, path=spec.data.gene2vec_file, seed=spec.seed)
