"""Named datasets: registry, mirror and cache, alignment checks, facts from the data README."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading

import numpy as np
import pandas as pd
import pooch
import pytest
from data_fixtures import upper_triangle
from scipy.spatial.distance import pdist

from xattn.data import DATASETS, datasets, fetch, load_dataset
from xattn.data import data_mirror as resolve_mirror
from xattn.errors import DataError

SMALL = "hcp-s100-r08"  # the smallest file dataset, for tests that copy or serve files


# ---------------------------------------------------------------- registry and names


def test_every_dataset_file_is_registered_with_a_pinned_url():
    for info in DATASETS.values():
        for rel in info.files:
            assert rel in datasets.REGISTRY
            url = datasets.file_url(rel)
            folder, _, inside = rel.partition("/")
            repository, commit = datasets.UPSTREAM[folder]
            assert url == f"https://raw.githubusercontent.com/{repository}/{commit}/{inside}"
            assert len(commit) == 40 and len(datasets.REGISTRY[rel]) == 64


def test_registry_listing_describes_shapes_and_targets():
    assert (DATASETS["hcp-s100"].regions, DATASETS["hcp-s100"].genes, DATASETS["hcp-s100"].target) == (100, 810, "fc")
    assert DATASETS["hcp-s100-sc"].target == "sc"
    assert DATASETS["hcp-s100-r08"].genes == 34
    assert (DATASETS["hcp-s400"].regions, DATASETS["hcp-s400"].genes) == (351, 282)
    assert DATASETS["synthetic"].files == ()


def test_unknown_name_lists_known_names_and_suggests_a_near_miss():
    with pytest.raises(DataError, match=r"did you mean 'hcp-s100'\?.*hcp-s400"):
        load_dataset("hcp-s10")


def test_mirror_comes_from_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    assert resolve_mirror() is None
    monkeypatch.setenv(datasets.MIRROR_ENV, str(tmp_path / "env"))
    assert resolve_mirror() == tmp_path / "env"
    assert resolve_mirror(tmp_path / "arg") == tmp_path / "arg"


def test_a_relative_mirror_is_made_absolute_where_it_is_given(monkeypatch, tmp_path):
    # Ray Tune runs each trial in its own working directory, where `../shared/data` names nothing.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(datasets.MIRROR_ENV, "../shared/data")
    resolved = resolve_mirror()
    monkeypatch.chdir("/")
    assert resolved == tmp_path.parent.resolve() / "shared" / "data"
    assert resolved.is_absolute()


def test_synthetic_is_dispatched_with_its_options():
    data = load_dataset("synthetic", synthetic={"n_regions": 20, "n_genes": 5, "seed": 3})
    assert (data.n_regions, data.n_genes, data.target) == (20, 5, "synthetic")
    assert fetch("synthetic") == {}
    with pytest.raises(DataError, match="unknown synthetic option"):
        load_dataset("synthetic", synthetic={"regions": 20})


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_hcp_s100_is_aligned_and_well_formed(hcp_s100, data_mirror):
    data = hcp_s100
    assert data.expression.shape == (100, 810) and data.connectivity.shape == (100, 100)
    assert data.target == "fc" and data.expression.dtype == np.float32
    atlas = pd.read_csv(data_mirror / datasets._RECIPES["hcp-s100"].atlas)
    assert data.labels == atlas["label_7network"].iloc[:100].tolist()
    assert np.allclose(data.coords, atlas[["mni_x", "mni_y", "mni_z"]].iloc[:100].to_numpy(), atol=1e-4)
    np.testing.assert_array_equal(data.connectivity, data.connectivity.T)
    assert not np.diag(data.connectivity).any()
    np.testing.assert_array_equal(data.original_index, np.arange(100))
    assert data.metadata["source_files"]["connectivity"].endswith("funcMatrix_ctx_schaefer_100.csv")


@pytest.mark.realdata
def test_hcp_s100_reproduces_reference_correlations(hcp_s100):
    fc = upper_triangle(hcp_s100.connectivity)
    gene_similarity = upper_triangle(np.corrcoef(hcp_s100.expression.astype(np.float64)))
    closeness = -pdist(hcp_s100.coords.astype(np.float64))
    assert np.corrcoef(fc, gene_similarity)[0, 1] == pytest.approx(0.29, abs=0.03)
    assert np.corrcoef(fc, closeness)[0, 1] == pytest.approx(0.25, abs=0.03)


@pytest.mark.realdata
def test_hcp_s400_drops_unsampled_parcels(data_mirror):
    data = load_dataset("hcp-s400", mirror=data_mirror)
    assert (data.n_regions, data.n_genes) == (351, 282)
    assert len(data.metadata["dropped_regions"]) == 49
    assert np.all(np.diff(data.original_index) >= 1) and data.original_index.max() < 400
    assert np.any(np.diff(data.original_index) > 1)  # gaps where parcels were dropped
    raw = pd.read_csv(data_mirror / datasets._RECIPES["hcp-s400"].connectivity, header=None).to_numpy()
    kept = data.original_index
    np.testing.assert_allclose(data.connectivity, raw[np.ix_(kept, kept)], rtol=1e-6)


@pytest.mark.realdata
def test_other_variants_load(data_mirror):
    assert load_dataset("hcp-s100-r08", mirror=data_mirror, synthetic={"seed": 1}).n_genes == 34  # options ignored
    structural = load_dataset("hcp-s100-sc", mirror=data_mirror)
    assert structural.target == "sc" and structural.connectivity.shape == (100, 100)


@pytest.mark.realdata
def test_loads_are_cached_but_return_independent_copies(data_mirror):
    first = load_dataset(SMALL, mirror=data_mirror)
    first.expression[:] = -1
    second = load_dataset(SMALL, mirror=data_mirror)
    assert second.expression.min() >= 0
    assert second.expression is not first.expression


def copy_dataset_files(name, source, target):
    for rel in DATASETS[name].files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target / rel)


@pytest.mark.realdata
def test_damaged_mirror_file_is_named(data_mirror, tmp_path):
    copy_dataset_files(SMALL, data_mirror, tmp_path)
    damaged = tmp_path / datasets._RECIPES[SMALL].connectivity
    content = bytearray(damaged.read_bytes())
    content[10] = ord("9") if content[10] != ord("9") else ord("8")
    damaged.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"funcMatrix_ctx_schaefer_100\.csv has sha256 .*replace it"):
        fetch(SMALL, mirror=tmp_path)


@pytest.mark.realdata
def test_missing_mirror_file_is_named(data_mirror, tmp_path):
    copy_dataset_files(SMALL, data_mirror, tmp_path)
    (tmp_path / datasets._RECIPES[SMALL].atlas).unlink()
    with pytest.raises(DataError, match=r"lacks .*atlas-4S156Parcels_dseg_reformatted\.csv"):
        load_dataset(SMALL, mirror=tmp_path)


@pytest.mark.realdata
def test_misaligned_labels_are_rejected(data_mirror, tmp_path, monkeypatch):
    copy_dataset_files(SMALL, data_mirror, tmp_path)
    labels_file = tmp_path / datasets._RECIPES[SMALL].labels
    labels = labels_file.read_text().strip().split(",")
    labels[3], labels[4] = labels[4], labels[3]
    labels_file.write_text(",".join(labels) + "\n")
    monkeypatch.setitem(datasets.REGISTRY, datasets._RECIPES[SMALL].labels, pooch.file_hash(str(labels_file)))
    with pytest.raises(DataError, match=r"parcel 3 is .* not aligned"):
        load_dataset(SMALL, mirror=tmp_path)


# ---------------------------------------------------------------- downloading


@pytest.fixture
def upstream_server(data_mirror, tmp_path, monkeypatch):
    """A local HTTP server laid out like raw.githubusercontent.com, holding the SMALL files."""
    root = tmp_path / "upstream"
    for rel in DATASETS[SMALL].files:
        served = root / datasets.file_url(rel).removeprefix(datasets.BASE_URL + "/")
        served.parent.mkdir(parents=True, exist_ok=True)
        served.symlink_to(data_mirror / rel)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    monkeypatch.setattr(datasets, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.realdata
def test_download_fills_a_cache_that_is_itself_a_mirror(upstream_server, tmp_path):
    cache = tmp_path / "cache"
    paths = fetch(SMALL, cache_dir=cache)
    assert set(paths) == set(DATASETS[SMALL].files)
    for rel, path in paths.items():
        assert path == cache / rel and path.is_file()
    upstream_server.shutdown()  # offline from here on: the cache must suffice
    assert load_dataset(SMALL, cache_dir=cache).n_genes == 34
    assert load_dataset(SMALL, mirror=cache).n_genes == 34


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_network_failure_suggests_a_mirror(monkeypatch, tmp_path):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    monkeypatch.setattr(datasets, "BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(DataError, match=r"could not download .*--mirror / \$XATTN_DATA_MIRROR"):
        fetch(SMALL, cache_dir=tmp_path)


def test_cache_folder_follows_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "env"))
    assert datasets.cache_folder() == tmp_path / "env"
    assert datasets.cache_folder(tmp_path / "arg") == tmp_path / "arg"
