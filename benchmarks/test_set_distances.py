"""How far apart the regions of a test pair are, against all pairs: what a spatial test set holds.

A spatial fold's test set is one compact patch of regions (balanced k-means on the
coordinates, `xattn.data.splits.region_folds`), and its test pairs are the pairs of regions
inside that patch. They are therefore much nearer to each other than the typical pair, and
connectivity is strongest at short distance: a test r on spatial folds measures prediction
among neighbours, not over the whole brain. This prints, as a markdown table, the Euclidean
distance (the dataset's units: mm for the named atlases) of the unordered test pairs of all
K folds taken together against all unordered pairs: median, quartiles, the fraction under
30 mm and 60 mm, the range of the folds' medians, and the test pairs' share of all pairs
(each fold's, and all folds' together).

    python -m benchmarks.test_set_distances                      # hcp-s100, spatial, K = 4 and 10
    python -m benchmarks.test_set_distances --folds 5 --method random --mirror ../shared/data
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

NEAR_MM = (30.0, 60.0)  # the table's "fraction under" columns


def pair_distances(coords: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Euclidean distances of the unordered pairs (i < j) of `regions`."""
    regions = np.sort(np.asarray(regions))
    first, second = np.triu_indices(len(regions), k=1)
    c = np.asarray(coords, dtype=np.float64)
    return np.linalg.norm(c[regions[first]] - c[regions[second]], axis=1)


def distance_summary(distances: np.ndarray) -> dict[str, Any]:
    """n, median, quartiles and the fraction of distances under each of NEAR_MM."""
    q1, median, q3 = np.percentile(distances, [25, 50, 75])
    return {
        "n": int(len(distances)),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        **{f"under_{limit:g}": float(np.mean(distances < limit)) for limit in NEAR_MM},
    }


# Not named test_*: pytest would collect it if this file were named on its command line.
def fold_test_pairs(coords: np.ndarray, n_folds: int, *, method: str, seed: int) -> dict:
    """The summary of the test pairs of all `n_folds` folds together, each fold's median and
    the test pairs' share of all pairs, per fold and in all. The test sets do not depend on
    the validation share (it only splits the remaining regions); the default 0.2 is passed."""
    from xattn.data.splits import region_folds

    folds = region_folds(np.asarray(coords), n_folds, method=method, seed=seed, val_fraction=0.2)
    per_fold = [pair_distances(coords, split.test) for split in folds]
    n_all = len(coords) * (len(coords) - 1) // 2
    pooled = np.concatenate(per_fold)
    return {
        **distance_summary(pooled),
        "fold_medians": [float(np.median(d)) for d in per_fold],
        "share_per_fold": [len(d) / n_all for d in per_fold],
        "share": len(pooled) / n_all,
    }


def markdown_table(all_pairs: dict[str, Any], rows: dict[str, dict[str, Any]], unit: str = "mm") -> str:
    """One line for all pairs, then one per fold count."""
    under = " | ".join(f"< {limit:g} {unit}" for limit in NEAR_MM)
    lines = [
        f"| pairs | n | share of all pairs (per fold) | median {unit} (folds' range) | quartiles {unit} | {under} |",
        "|---|---|---|---|---|" + "---|" * len(NEAR_MM),
    ]

    def cells(s: dict[str, Any]) -> str:
        return " | ".join(f"{s[f'under_{limit:g}']:.0%}" for limit in NEAR_MM)

    lines.append(
        f"| all | {all_pairs['n']} | 100% | {all_pairs['median']:.0f} | "
        f"{all_pairs['q1']:.0f}-{all_pairs['q3']:.0f} | {cells(all_pairs)} |"
    )
    for name, s in rows.items():
        share = min(s["share_per_fold"]), max(s["share_per_fold"])
        per_fold = f"{share[0]:.1%}" if share[0] == share[1] else f"{share[0]:.1%}-{share[1]:.1%}"
        lines.append(
            f"| {name} | {s['n']} | {s['share']:.1%} ({per_fold}) | {s['median']:.0f} "
            f"({min(s['fold_medians']):.0f}-{max(s['fold_medians']):.0f}) | {s['q1']:.0f}-{s['q3']:.0f} | {cells(s)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.test_set_distances",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--dataset", default="hcp-s100", help="a named dataset (default hcp-s100)")
    parser.add_argument("--folds", type=int, nargs="+", default=[4, 10], help="fold counts K (default: 4 10)")
    parser.add_argument("--method", choices=("spatial", "random"), default="spatial", help="split method")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--mirror", default=None, help="data mirror (default $XATTN_DATA_MIRROR, else download)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from xattn.data import load_dataset

    args = parse_args(argv)
    data = load_dataset(args.dataset, mirror=args.mirror)
    coords = data.coords
    all_pairs = distance_summary(pair_distances(coords, np.arange(len(coords))))
    rows = {
        f"test, {args.method} K = {k}": fold_test_pairs(coords, k, method=args.method, seed=args.seed)
        for k in args.folds
    }
    print(f"{args.dataset}: {len(coords)} regions, {args.method} folds, seed {args.seed}\n")
    print(markdown_table(all_pairs, rows))


if __name__ == "__main__":
    main()
