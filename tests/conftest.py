import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO.parent / "shared" / "data"

# Tests read real data from the mirror beside the repository unless told otherwise.
os.environ.setdefault("XATTN_DATA_MIRROR", str(DEFAULT_MIRROR))
# Keep MLflow/Ray from reaching outside the test's own stores.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real-data mirror; a missing one skips locally and fails in CI (XATTN_REQUIRE_DATA=1)."""
    path = Path(os.environ["XATTN_DATA_MIRROR"])
    if not (path / "enigma-extra").is_dir():
        message = f"data mirror not found at {path}: set XATTN_DATA_MIRROR"
        if os.environ.get("XATTN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every study test in the session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
