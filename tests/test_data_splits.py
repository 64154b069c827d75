"""Region folds: a partition of regions, pairs inside each part, spatial compactness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from xattn.data import RegionSplit, make_synthetic, ordered_pairs, region_folds
from xattn.errors import DataError


def check_partition(folds, n_regions):
    tests = np.concatenate([fold.test for fold in folds])
    assert np.array_equal(np.sort(tests), np.arange(n_regions))
    sizes = [fold.test.size for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for fold in folds:
        everything = np.concatenate([fold.train, fold.val, fold.test])
        assert np.array_equal(np.sort(everything), np.arange(n_regions))
        assert fold.val.size >= 2 and fold.train.size >= 2
        for part in ("train", "val", "test"):
            values = getattr(fold, part)
            assert values.dtype == np.int64 and np.all(np.diff(values) > 0)


@settings(max_examples=30, deadline=None)
@given(
    n_regions=st.integers(8, 80),
    n_folds=st.integers(2, 6),
    method=st.sampled_from(["random", "spatial"]),
    seed=st.integers(0, 3),
)
def test_folds_partition_regions(n_regions, n_folds, method, seed):
    coords = np.random.default_rng(seed).normal(size=(n_regions, 3))
    if n_folds > n_regions // 2:
        with pytest.raises(DataError):
            region_folds(coords, n_folds, method=method, seed=seed)
        return
    folds = region_folds(coords, n_folds, method=method, seed=seed)
    assert [fold.fold for fold in folds] == list(range(n_folds))
    check_partition(folds, n_regions)


def test_pairs_are_distinct_and_inside_their_part():
    fold = region_folds(make_synthetic(n_regions=30), 3, seed=1)[0]
    for part in ("train", "val", "test"):
        pairs = fold.pairs(part)
        members = getattr(fold, part)
        assert pairs.shape == (members.size * (members.size - 1), 2) and pairs.dtype == np.int64
        assert np.all(pairs[:, 0] != pairs[:, 1])
        assert np.isin(pairs, members).all()
        assert len({tuple(p) for p in pairs}) == len(pairs)


def test_ordered_pairs_small_case():
    np.testing.assert_array_equal(ordered_pairs(np.array([5, 7, 9])), [[5, 7], [5, 9], [7, 5], [7, 9], [9, 5], [9, 7]])
    assert ordered_pairs(np.array([3])).shape == (0, 2)


@pytest.mark.parametrize("method", ["random", "spatial"])
def test_same_seed_same_folds_other_seed_other_folds(method):
    data = make_synthetic(n_regions=50)
    first = region_folds(data, 5, method=method, seed=4)
    assert first == region_folds(data, 5, method=method, seed=4)
    assert first != region_folds(data, 5, method=method, seed=5)


def test_spatial_test_sets_are_more_compact_than_random_ones():
    data = make_synthetic(n_regions=120, seed=3)

    def mean_spread(folds):
        return np.mean([pdist(data.coords[fold.test]).mean() for fold in folds])

    spatial = mean_spread(region_folds(data, 5, method="spatial"))
    random = mean_spread(region_folds(data, 5, method="random"))
    assert spatial < 0.7 * random


def test_json_round_trip():
    fold = region_folds(make_synthetic(n_regions=20), 4, method="spatial", seed=2)[1]
    payload = json.loads(json.dumps(fold.to_dict()))
    assert RegionSplit.from_dict(payload) == fold
    assert payload["method"] == "spatial" and payload["fold"] == 1


@pytest.mark.parametrize(
    "options",
    [{"n_folds": 1}, {"n_folds": 11}, {"val_fraction": 0.0}, {"val_fraction": 0.6}, {"method": "nearby"}],
)
def test_bad_arguments_raise_data_error(options):
    with pytest.raises(DataError):
        region_folds(make_synthetic(n_regions=20), **{"n_folds": 4, **options})


def test_spatial_folds_need_coordinates(tmp_path):
    from xattn.data import load_user_files

    (tmp_path / "e.csv").write_text("label,g1,g2\n" + "".join(f"r{k},{k / 10},{1 - k / 10}\n" for k in range(8)))
    matrix = np.ones((8, 8)) - np.eye(8)
    np.savetxt(tmp_path / "c.csv", matrix, delimiter=",")
    data = load_user_files(tmp_path / "e.csv", tmp_path / "c.csv")
    assert len(region_folds(data, 2)) == 2
    with pytest.raises(DataError, match="coordinates"):
        region_folds(data, 2, method="spatial")


def test_overlapping_parts_are_rejected():
    with pytest.raises(DataError):
        RegionSplit(train=[0, 1], val=[1, 2], test=[3, 4], fold=0, method="random", seed=0)


def mst_gap(coords: np.ndarray, regions: np.ndarray) -> float:
    """The longest edge of the minimum spanning tree of `regions`: the widest gap a patch has."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    return float(minimum_spanning_tree(cdist(coords[regions], coords[regions])).max())


def spacing(coords: np.ndarray, regions: np.ndarray) -> float:
    """The largest nearest-neighbour distance among `regions`: the data's own spacing."""
    from scipy.spatial.distance import cdist

    distance = cdist(coords[regions], coords[regions])
    np.fill_diagonal(distance, np.inf)
    return float(distance.min(axis=1).max())


@pytest.mark.parametrize("dataset", ["hcp-s100", "hcp-s400", "synthetic"])
def test_spatial_validation_is_a_contiguous_patch_outside_the_test_patch(dataset, data_mirror):
    """In a spatial fold the validation regions form a patch with no gap wider than the spacing
    of the candidate regions, more compact than random draws of the same size, and disjoint
    from the test patch."""
    from xattn.data import load_dataset

    data = load_dataset(dataset, mirror=data_mirror, synthetic={"n_regions": 96, "n_genes": 8, "seed": 2})
    rng = np.random.default_rng(0)
    for seed in range(3):
        for split in region_folds(data, 4, method="spatial", seed=seed, val_fraction=0.2):
            candidates = np.concatenate([split.train, split.val])
            assert np.intersect1d(split.val, split.test).size == 0
            assert split.val.size == round(0.2 * candidates.size)
            assert mst_gap(data.coords, split.val) <= 1.25 * spacing(data.coords, candidates)
            random_spread = np.mean(
                [pdist(data.coords[rng.choice(candidates, split.val.size, replace=False)]).mean() for _ in range(20)]
            )
            assert pdist(data.coords[split.val]).mean() < 0.85 * random_spread  # 0.54-0.82 measured


def test_random_folds_validate_on_scattered_regions():
    coords = np.random.default_rng(0).normal(size=(80, 3))
    scattered = region_folds(coords, 4, method="random", seed=0)[0]
    patch = region_folds(coords, 4, method="spatial", seed=0)[0]
    assert scattered.val.size == patch.val.size
    assert mst_gap(coords, scattered.val) > 1.25 * mst_gap(coords, patch.val)


@pytest.mark.parametrize("method", ["spatial", "random"])
def test_inner_folds_partition_the_non_test_regions_with_the_same_test_set(method):
    from xattn.data.splits import inner_folds

    coords = np.random.default_rng(1).normal(size=(90, 3))
    split = region_folds(coords, 3, method=method, seed=4)[1]
    inner = inner_folds(coords, split, 4)
    non_test = np.sort(np.concatenate([split.train, split.val]))
    assert np.array_equal(np.sort(np.concatenate([s.val for s in inner])), non_test)
    for s in inner:
        assert np.array_equal(s.test, split.test) and (s.fold, s.method, s.seed) == (1, method, 4)
        assert np.array_equal(np.sort(np.concatenate([s.train, s.val])), non_test)
    sizes = [s.val.size for s in inner]
    assert max(sizes) - min(sizes) <= 1
    spreads = [pdist(coords[s.val]).mean() for s in inner]
    random_spread = pdist(coords[non_test]).mean()
    assert (max(spreads) < 0.9 * random_spread) == (method == "spatial")
    assert [s.to_dict() for s in inner_folds(coords, split, 4)] == [s.to_dict() for s in inner]  # seeded
    with pytest.raises(DataError, match="inner_folds=1 does not fit"):
        inner_folds(coords, split, 1)


def test_the_deployed_models_splits_see_every_region():
    """Selection on all regions validates on a patch of them and tests on none; a refit trains on
    every region; both are drawn from their own seeded stream, apart from every outer fold's."""
    from xattn.data.splits import whole_data_split

    coords = np.random.default_rng(0).normal(size=(40, 3))
    selection = whole_data_split(coords, method="spatial", seed=3, val_fraction=0.2)
    assert selection.test.size == 0 and selection.val.size == 8 and selection.fold == -1
    assert sorted([*selection.train, *selection.val]) == list(range(40))
    assert whole_data_split(coords, method="spatial", seed=3, val_fraction=0.2) == selection
    assert not any(
        np.array_equal(selection.val, fold.val) for fold in region_folds(coords, 4, method="spatial", seed=3)
    )
    refit = whole_data_split(coords, method="spatial", seed=3, val_fraction=0.2, refit=True)
    assert refit.train.tolist() == list(range(40)) and refit.val.size == refit.test.size == 0
    assert refit.pairs("val").shape == (0, 2)
