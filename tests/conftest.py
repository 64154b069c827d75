"""Fixtures every test can ask for: the real-data mirror, a local Ray, one torch thread, and the
small seeded data that the model, training and benchmark tests share."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import DEFAULT_MIRROR, mirror_path

# Tests read real data from the mirror beside the repository unless told otherwise.
os.environ.setdefault("XATTN_DATA_MIRROR", str(DEFAULT_MIRROR))
# Keep MLflow/Ray from reaching outside the test's own stores.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Figures cost seconds of Chromium per study: only the tests about figures ask for them.
os.environ.setdefault("XATTN_FIGURES", "0")


@pytest.fixture(scope="session")
def data_mirror() -> Path:
    """The folder holding the published files in their upstream layout."""
    path = mirror_path()
    if not (path / "enigma-extra").is_dir():
        message = f"data mirror not found at {path} (set XATTN_DATA_MIRROR)"
        if os.environ.get("XATTN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def hcp_s100(data_mirror):
    from xattn.data import load_dataset

    return load_dataset("hcp-s100", mirror=data_mirror)


@pytest.fixture(scope="session")
def mirror(data_mirror) -> Path:
    """The real-data mirror; a missing one skips locally and fails in CI (XATTN_REQUIRE_DATA=1)."""
    return data_mirror


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by playwright, for the pages a user opens (the report, the
    figures page); absent, the test skips here and fails in CI."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        message = f"no browser for the page tests (playwright and {CHROMIUM}; `make chromium` installs it)"
        if os.environ.get("XATTN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


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


# --- Small seeded data ------------------------------------------------------------------------


@pytest.fixture
def region_pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expression, coords, pair_i, pair_j): 12 regions x 16 genes, expression uniform in [0, 1)
    then coords standard normal from one generator seeded 1, and 8 pairs that repeat regions on
    both sides, region 3 among both the i and the j regions: what a forward computing each unique
    region once must get right. Fresh tensors for every test, so a test may change them in place."""
    g = torch.Generator().manual_seed(1)
    expression = torch.rand(12, 16, generator=g)
    coords = torch.randn(12, 3, generator=g)
    pair_i = torch.tensor([0, 1, 2, 3, 3, 7, 0, 11])
    pair_j = torch.tensor([1, 0, 3, 2, 5, 3, 9, 4])
    return expression, coords, pair_i, pair_j


@pytest.fixture(scope="session")
def random_pair_data():
    """Factory of `PairData` on the CPU: from numpy's generator seeded `seed`, expression uniform
    in [0, 1) (n_regions x n_genes), coords standard normal, then connectivity standard normal
    ("normal") or uniform in [0, 1) ("uniform"); the pairs are given as (train, val, test).

        data = random_pair_data(seed=1, n_regions=12, n_genes=5, splits=(train, val, test))
    """
    from xattn.training import PairData

    def make(*, seed: int, n_regions: int, n_genes: int, splits, connectivity: str = "normal"):
        rng = np.random.default_rng(seed)
        expression = rng.random((n_regions, n_genes))
        coords = rng.normal(size=(n_regions, 3))
        if connectivity == "normal":
            matrix = rng.normal(size=(n_regions, n_regions))
        elif connectivity == "uniform":
            matrix = rng.random((n_regions, n_regions))
        else:
            raise ValueError(f"connectivity must be normal or uniform, got {connectivity!r}")
        return PairData.from_numpy(expression, coords, matrix, *splits)

    return make
