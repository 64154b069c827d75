"""From a spec and one trial's hyperparameters to tensors, a model and metrics.

This is the seam between the library's parts: the Ray Tune trainable, `xattn evaluate` and
notebooks all go through `prepare_experiment`, so a checkpoint evaluated later sees exactly
the data, genes, split and normalisation its trial trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xattn.data import (
    ConnectomeData,
    GeneVectors,
    RegionSplit,
    build_gene_vectors,
    load_dataset,
    load_user_files,
    region_folds,
)
from xattn.data.gene_selection import select_genes
from xattn.data.nulls import null_data
from xattn.data.spec import DataSpec
from xattn.data.splits import inner_folds, whole_data_split
from xattn.models.registry import build_model, fit_to_training_regions
from xattn.training.pair_data import PairData


@dataclass
class Experiment:
    """Everything one trial trains and is evaluated on, fitted on training regions only."""

    data: ConnectomeData  # restricted to the selected genes that have a vector
    split: RegionSplit
    gene_vectors: GeneVectors
    coord_mean: np.ndarray  # (3,) the training regions' centroid, in the data's units (mm for atlases)
    coord_scale: np.ndarray  # one length for all axes (shape ()); (3,) only when pinned from an old checkpoint
    pairs: PairData

    def checkpoint_extra(self, data_spec: DataSpec, params: dict[str, Any], seed: int) -> dict[str, Any]:
        """What a checkpoint's config.json needs besides the model to reproduce its test metrics."""
        return {
            "params": params,
            "seed": seed,
            "data": data_spec.model_dump(mode="json"),
            "split": self.split.to_dict(),
            "genes": list(self.data.genes),
            "coord_mean": self.coord_mean.tolist(),
            "coord_scale": self.coord_scale.tolist(),
        }


def load_data(data_spec: DataSpec, mirror: str | None = None) -> ConnectomeData:
    if data_spec.files is not None:
        files = data_spec.files
        return load_user_files(files.expression, files.connectivity, files.coords)
    options = data_spec.synthetic
    synthetic = {
        "n_regions": options.regions, "n_genes": options.genes, "noise": options.noise, "seed": options.seed,
        "similarity_weight": options.similarity,
    }  # fmt: skip
    return load_dataset(data_spec.dataset, mirror=mirror, synthetic=synthetic)


# What a trial trains on besides an outer fold: "selection", every region but a validation
# patch (the search that selects the deployable configuration); "refit", every region.
WHOLE_DATA = ("selection", "refit")


def split_regions(data: ConnectomeData, data_spec: DataSpec, seed: int, whole: str | None = None) -> RegionSplit:
    split = data_spec.split
    if whole is not None:
        if whole not in WHOLE_DATA:
            raise ValueError(f"whole-data split {whole!r}: choose one of {', '.join(WHOLE_DATA)}")
        return whole_data_split(
            data, method=split.method, seed=seed, val_fraction=split.val_fraction, refit=whole == "refit"
        )
    folds = region_folds(data, split.folds, method=split.method, seed=seed, val_fraction=split.val_fraction)
    return folds[split.fold]


def coordinate_normalisation(coords_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre and the one scale that map coordinates to what every model sees,
    (coords - centre) / scale: the training regions' centroid, and the root mean square of
    their offsets from it over all three axes (the square root of the mean per-axis variance).

    One length for the three axes keeps geometry: a distance between normalised coords is the
    data's distance (mm for the atlases) over the scale, so distance_decay's lambda times the
    scale is its decay length in mm and the networks' distance features rank pairs as mm do. A
    scale per axis would shrink the brain's long axis (y) more than its short one (z). The one
    scale still keeps coordinates near unit size for the networks' inputs (about 33 mm on
    hcp-s100). Coordinates that are all equal (a dataset without coords: zeros) get scale 1.
    """
    coords_train = np.asarray(coords_train)
    centre = coords_train.mean(axis=0)
    scale = np.sqrt(np.square(coords_train - centre).mean())
    return centre, np.asarray(scale if scale > 0 else 1.0, dtype=coords_train.dtype)


def prepare_experiment(
    data_spec: DataSpec,
    params: dict[str, Any],
    seed: int,
    *,
    split_seed: int | None = None,
    mirror: str | None = None,
    split: RegionSplit | None = None,
    inner_fold: int | None = None,
    genes: list[str] | None = None,
    null: dict[str, Any] | None = None,
    coord_normalisation: tuple[Any, Any] | None = None,
    whole: str | None = None,
    device: str = "cpu",
) -> Experiment:
    """Load, split by region, select and embed genes and normalise coordinates using training
    regions only.

    `split_seed` draws the region folds (default: `seed`, which also seeds the gene vectors);
    `inner_fold` k trains on inner fold k of the split's non-test regions
    (`data_spec.split.inner_folds` of them); `split` and `genes` pin a stored experiment
    (from a checkpoint) instead of recomputing it. `null` ({"method", "seed"}, see
    `xattn.data.nulls`) replaces the expression of every region by a null draw after the split
    (which depends on coordinates only, so it is the real runs' split); genes are then
    selected and embedded on the null's training regions. `coord_normalisation` (centre,
    scale) pins a stored coordinate normalisation (`coordinate_normalisation` otherwise).
    `whole` ("selection" or "refit") replaces the outer fold by a split with no test regions
    (`WHOLE_DATA`).
    """
    data = load_data(data_spec, mirror)
    split = split or split_regions(data, data_spec, seed if split_seed is None else split_seed, whole)
    if null is not None:
        data = null_data(data, null["method"], null["seed"])
    if inner_fold is not None:
        split = inner_folds(data, split, data_spec.split.inner_folds)[inner_fold]
    data = data.select_genes(select_genes(data, data_spec.genes, split.train))
    vectors = build_gene_vectors(
        data, params.get("genevec", data_spec.genevec), split.train, path=data_spec.gene2vec_file, seed=seed
    )
    data = data.select_genes(vectors.gene_index)
    if genes is not None and list(data.genes) != list(genes):
        raise ValueError("the data's genes differ from the checkpoint's: the data files changed since training")
    if coord_normalisation is None:
        coord_mean, coord_scale = coordinate_normalisation(data.coords[split.train])
    else:
        coord_mean, coord_scale = (np.asarray(value, dtype=np.float32) for value in coord_normalisation)
    pairs = PairData(
        expression=torch.as_tensor(data.expression, dtype=torch.float32),
        coords=torch.as_tensor((data.coords - coord_mean) / coord_scale, dtype=torch.float32),
        connectivity=torch.as_tensor(data.connectivity, dtype=torch.float32),
        train_pairs=torch.as_tensor(split.pairs("train")),
        val_pairs=torch.as_tensor(split.pairs("val")),
        test_pairs=torch.as_tensor(split.pairs("test")),
    ).to(device)
    return Experiment(data, split, vectors, coord_mean, coord_scale, pairs)


def build_trial_model(experiment: Experiment, family: str, params: dict[str, Any], seed: int) -> torch.nn.Module:
    """A freshly initialised model, seeded so that (spec, params, seed) fixes its weights, with
    its data-fitted statistics (token bins, PCA, ...) fitted on the training regions only."""
    torch.manual_seed(seed)
    vectors = experiment.gene_vectors
    model = build_model(
        family,
        params,
        n_genes=experiment.data.n_genes,
        gene_vectors=torch.as_tensor(vectors.vectors, dtype=torch.float32),
        learn_gene_vectors=vectors.learnable,
    )
    fit_to_training_regions(model, torch.as_tensor(experiment.data.expression[experiment.split.train]))
    return model


def rebuild_from_checkpoint(directory, mirror: str | None = None) -> tuple[torch.nn.Module, Experiment, str]:
    """A checkpoint's model, the experiment it trained on (same data, genes and split) and the
    precision it trained in: a bf16 model evaluated in fp32 would not reproduce its metrics."""
    from xattn.data import data_mirror
    from xattn.training.checkpoint import load_checkpoint
    from xattn.training.config import TrainConfig

    model, config = load_checkpoint(directory)
    mirror_path = data_mirror(mirror)
    experiment = prepare_experiment(
        DataSpec.model_validate(config["data"]),
        config["params"],
        config["seed"],
        mirror=str(mirror_path) if mirror_path else None,
        split=RegionSplit.from_dict(config["split"]),
        genes=config["genes"],
        null=config.get("null"),
        coord_normalisation=stored_coordinate_normalisation(config),
    )
    return model, experiment, TrainConfig.from_params(config["params"]).precision


def stored_coordinate_normalisation(config: dict[str, Any]) -> tuple[Any, Any] | None:
    """The (centre, scale) a checkpoint's model saw its coordinates through: its one
    `coord_scale`, or the per-axis `coord_std` of a checkpoint written before coordinates were
    scaled isotropically, whose learnt lengths (distance_decay's lambda) are in those units;
    None for a checkpoint that stored neither (recomputed from its training regions)."""
    scale = config.get("coord_scale", config.get("coord_std"))
    if "coord_mean" not in config or scale is None:
        return None
    return config["coord_mean"], scale
