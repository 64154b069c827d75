import os
from pathlib import Path

import pytest
import torch
from data_fixtures import DEFAULT_MIRROR, data_mirror  # noqa: F401 - a fixture for every test

# Tests read real data from the mirror beside the repository unless told otherwise.
os.environ.setdefault("XATTN_DATA_MIRROR", str(DEFAULT_MIRROR))
# Keep MLflow/Ray from reaching outside the test's own stores.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Figures cost seconds of Chromium per study: only the tests about figures ask for them.
os.environ.setdefault("XATTN_FIGURES", "0")


@pytest.fixture(scope="session")
def mirror(data_mirror) -> Path:
    """The real-data mirror; a missing one skips locally and fails in CI (XATTN_REQUIRE_DATA=1)."""
    return data_mirror


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every study test in the session."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (10x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
