"""benchmarks/test_set_distances.py: spatial test pairs are near pairs, random ones are not,
and the shares and the table add up (synthetic coords: no data needed)."""

import importlib
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
distances = importlib.import_module("benchmarks.test_set_distances")


def test_spatial_test_pairs_are_nearer_than_all_pairs_and_random_ones_are_not():
    coords = np.random.default_rng(0).uniform(-50, 50, size=(60, 3)) * [1.0, 1.3, 0.8]
    everything = distances.pair_distances(coords, np.arange(60))
    np.testing.assert_allclose(np.sort(everything), np.sort(pdist(coords)))
    all_pairs = distances.distance_summary(everything)
    spatial = distances.fold_test_pairs(coords, 4, method="spatial", seed=0)
    random = distances.fold_test_pairs(coords, 4, method="random", seed=0)
    # 4 test sets of 15 regions: 4 * 105 of the 1770 pairs, 105 each.
    assert spatial["n"] == random["n"] == 420 and spatial["share"] == 420 / 1770
    assert spatial["share_per_fold"] == [105 / 1770] * 4
    assert spatial["median"] < 0.75 * all_pairs["median"] < random["median"]
    assert spatial["under_60"] > all_pairs["under_60"]
    table = distances.markdown_table(all_pairs, {"spatial K = 4": spatial})
    assert table.count("\n") == 3 and "| all | 1770 | 100% |" in table and "23.7% (5.9%)" in table
