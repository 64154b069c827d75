"""Which genes of region i attend to which genes of region j: a trained model's attention maps.

For the exported (or best) model on its own held-out pairs, the cross-attention weights of
every layer and head (`CrossAttentionGene2VecModel.attention_maps`) are averaged over pairs,
layers and heads into one gene x gene map: row g is query gene g of region i, column h key
gene h of region j, and each row sums to 1 (a mean of softmax rows). A bidirectional model
adds its j -> i direction to the same mean (there the queries are region j's genes). The CLS
rows are left out: they are not genes.

Written as three files: `gene_attention.csv` (the map, gene symbols as row and column
names), `top_gene_pairs.csv` (the k strongest query -> key gene pairs by mean weight,
self-pairs included) and `gene_attention.png` (a heatmap, genes in the data's order).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xattn.errors import SpecError
from xattn.paths import ensure_can_create
from xattn.tracking.runs import download_checkpoint

PAIR_SETS = ("test", "val", "train")
FILES = ("gene_attention.csv", "top_gene_pairs.csv", "gene_attention.png")
ARTIFACT_DIR = "attention"


def gene_attention(model, experiment, pairs: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    """(G, G) mean cross-attention of query gene g (region i) on key gene h (region j) over
    `pairs` (P, 2), every layer and head; rows sum to 1."""
    if not hasattr(model, "attention_maps"):
        raise SpecError(f"{type(model).__name__} has no cross-attention maps: only cross_attention models have them")
    data, n_cls = experiment.pairs, model.config.n_cls
    directions = [(0, 1), (1, 0)] if model.config.bidirectional else [(0, 1)]
    total, count = None, 0
    model.eval()
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        for a, b in directions:
            maps = model.attention_maps(data.expression, data.coords, batch[:, a], batch[:, b])
            layer_sum = torch.stack([layer[:, :, n_cls:, :].sum(dim=(0, 1)) for layer in maps]).sum(0)
            total = layer_sum if total is None else total + layer_sum
            count += len(batch) * maps[0].shape[1] * len(maps)
    return (total / count).double().cpu().numpy()


def top_gene_pairs(matrix: np.ndarray, genes: list[str], k: int) -> pd.DataFrame:
    """The k largest entries of the gene x gene map, strongest first."""
    order = np.argsort(matrix, axis=None)[::-1][:k]
    rows, cols = np.unravel_index(order, matrix.shape)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "query_gene": [genes[r] for r in rows],
            "key_gene": [genes[c] for c in cols],
            "mean_weight": matrix[rows, cols],
            "uniform_weight": 1.0 / matrix.shape[1],  # what a query that attends to nothing in particular gives
        }
    )


def write_attention(
    directory: str | Path, out: str | Path, *, pair_set: str = "test", top_k: int = 20, mirror: str | None = None
) -> dict:
    """The three files for the checkpoint or export in `directory`, on its `pair_set` pairs."""
    from xattn.experiment import rebuild_from_checkpoint

    if pair_set not in PAIR_SETS:
        raise SpecError(f"--pairs {pair_set!r} is not a pair set: choose one of {', '.join(PAIR_SETS)}")
    if top_k < 1:
        raise SpecError(f"--top-k {top_k} must be at least 1")
    ensure_can_create(Path(out), "--out", "choose another --out")
    model, experiment, _ = rebuild_from_checkpoint(directory, mirror)
    if not hasattr(model, "attention_maps"):
        raise SpecError(
            f"{directory} holds a {type(model).__name__}: attention maps exist for cross_attention models only"
        )
    pairs = getattr(experiment.pairs, f"{pair_set}_pairs")
    if len(pairs) == 0:
        raise SpecError(f"{directory}: the split has no {pair_set} pairs: choose another --pairs")
    genes = list(experiment.data.genes)
    matrix = gene_attention(model, experiment, pairs)
    top = top_gene_pairs(matrix, genes, top_k)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Staged beside the output and moved in at the end: a failure leaves no half-written set.
    with tempfile.TemporaryDirectory(prefix=".xattn-attention-", dir=out) as staging:
        staged = Path(staging)
        pd.DataFrame(matrix, index=pd.Index(genes, name="query_gene"), columns=genes).to_csv(staged / FILES[0])
        top.to_csv(staged / FILES[1], index=False)
        heatmap(matrix, genes, staged / FILES[2], title=f"Mean cross-attention on {len(pairs)} {pair_set} pairs")
        for name in FILES:
            os.replace(staged / name, out / name)
    return {"out": str(out.resolve()), "pairs": pair_set, "n_pairs": int(len(pairs)), "files": list(FILES),
            "top": top.head(5).to_dict(orient="records")}  # fmt: skip


def heatmap(matrix: np.ndarray, genes: list[str], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; set before pyplot is imported
    import matplotlib.pyplot as plt

    size = min(14.0, 4.0 + 0.08 * len(genes))
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(matrix, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="mean attention weight", shrink=0.8)
    axes.set_xlabel("key gene (region j)")
    axes.set_ylabel("query gene (region i)")
    axes.set_title(title)
    if len(genes) <= 60:  # beyond that the symbols overprint each other
        axes.set_xticks(range(len(genes)), genes, rotation=90, fontsize=6)
        axes.set_yticks(range(len(genes)), genes, fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def log_run_attention(client, run_id: str, *, mirror: str | None = None, checkpoints=None) -> None:
    """The three files for the checkpoint of MLflow run `run_id`, logged to it under attention/.
    `checkpoints` (an open tracking.runs.CheckpointCache) saves downloading it again."""
    with tempfile.TemporaryDirectory(prefix="xattn-attention-") as folder:
        if checkpoints is not None:
            directory = checkpoints.path(run_id)
        else:
            directory = download_checkpoint(client, run_id, Path(folder) / "checkpoint")
        written = Path(folder) / ARTIFACT_DIR
        write_attention(directory, written, mirror=mirror)
        client.log_artifacts(run_id, str(written), ARTIFACT_DIR)
