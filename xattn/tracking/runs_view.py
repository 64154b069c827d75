"""The link a study prints to its trials in MLflow's runs table.

MLflow's UI opens an experiment's runs table with the columns of the browser's last view (at
first none of the params or metrics) and folds nested runs under their parent, so a study
showed one row and no numbers. A view shared through the experiment tag
`mlflow.sharedViewState.<key>`, which the UI's own "Share" button writes, carries a filter, a
sort and the columns; the UI opens it for a link ending in `viewStateShareKey=<key>`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from xattn.errors import one_line
from xattn.tracking import tags

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: the experiment tag MLflow's UI reads a shared view from
VIEW_TAGS = (tags.FAMILY,)  # a run's name says the rest: role, fold, seed
VIEW_METRICS = ("best_val_loss", "best_val_pearson", "test_pearson", "test_spearman", "test_r2", "test_mse")


def runs_view_state(parent_run_id: str, *, params: list[str], metric: str, mode: str) -> dict:
    """The runs table of study run `parent_run_id`: its trials, best first by `best_<metric>`,
    with their family, the validation and test metrics and the tuned `params`, in that order
    (MLflow puts metrics before params unless told; a 1280 px window shows about five columns)."""
    ranked_by = f"best_{metric}"
    metrics = [ranked_by, *(name for name in VIEW_METRICS if name != ranked_by)]
    columns = [
        *(f"tags.`{name}`" for name in VIEW_TAGS),
        *(f"metrics.`{name}`" for name in metrics),
        *(f"params.`{name}`" for name in params),
    ]
    return {
        "searchFilter": f"tags.`{tags.PARENT_RUN}` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{ranked_by}`",
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
    }


def share_runs_view(
    client: MlflowClient, experiment_id: str, parent_run_id: str, *, params: list[str], metric: str, mode: str
) -> str | None:
    """Store the runs table of study run `parent_run_id` (runs_view_state) on its experiment;
    return the key that opens it, or None (logged) when the store refused it."""
    key = f"xattn-{parent_run_id}"
    state = runs_view_state(parent_run_id, params=params, metric=metric, mode=mode)
    try:
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
    except Exception as error:  # noqa: BLE001 - a plainer link beats a failed study
        logger.warning("runs table view not stored: %s", one_line(error, with_type=True))
        return None
    return key


def runs_view_url(ui_base: str, experiment_id: str, key: str | None) -> str:
    """The link to the experiment's runs table, opening the shared view `key` if there is one."""
    # MLflow 3.17's UI opens every experiment as a GenAI app unless the link asks for runs.
    query = {"workflowType": "machine_learning"}
    if key:
        query["viewStateShareKey"] = key
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"
