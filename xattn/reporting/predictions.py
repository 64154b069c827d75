"""A trained model's predictions on its held-out (test) regions, one row per region pair.

The model is rebuilt from its checkpoint the way `xattn evaluate` rebuilds an export: the
checkpoint's own split, genes and seed pin the data, so these predictions are exactly the
ones the trial's logged test metrics were computed from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from xattn.tracking.runs import download_checkpoint

PREDICTION_COLUMNS = ("i", "j", "label_i", "label_j", "observed", "predicted", "distance")


def checkpoint_test_predictions(directory: str | Path, *, mirror: str | None = None) -> pd.DataFrame:
    """Every ordered test pair (i, j) of the checkpoint's split: region indices and labels,
    observed and predicted connectivity, and the Euclidean distance between the two regions'
    coordinates (the dataset's units: millimetres for the named datasets)."""
    from xattn.experiment import rebuild_from_checkpoint
    from xattn.training.trainer import predict

    model, experiment, precision = rebuild_from_checkpoint(directory, mirror)
    pairs = experiment.pairs.test_pairs
    predicted = predict(model, experiment.pairs, pairs, precision=precision)
    i, j = pairs[:, 0].cpu().numpy(), pairs[:, 1].cpu().numpy()
    data = experiment.data
    labels = np.asarray(data.labels, dtype=object)
    return pd.DataFrame(
        {
            "i": i,
            "j": j,
            "label_i": labels[i],
            "label_j": labels[j],
            "observed": data.connectivity[i, j].astype(np.float64),
            "predicted": predicted.astype(np.float64),
            # raw coordinates: the normalised ones the model sees have no physical unit
            "distance": np.linalg.norm(data.coords[i] - data.coords[j], axis=1).astype(np.float64),
        },
        columns=list(PREDICTION_COLUMNS),
    )


def run_test_predictions(
    client: MlflowClient, run_id: str, *, mirror: str | None = None, checkpoints=None
) -> pd.DataFrame:
    """`checkpoint_test_predictions` of the best checkpoint logged to MLflow run `run_id`;
    `checkpoints` (an open tracking.runs.CheckpointCache) saves downloading it again."""
    if checkpoints is not None:
        return checkpoint_test_predictions(checkpoints.path(run_id), mirror=mirror)
    with tempfile.TemporaryDirectory(prefix="xattn-predictions-") as folder:
        return checkpoint_test_predictions(download_checkpoint(client, run_id, folder), mirror=mirror)
