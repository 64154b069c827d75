"""False-positive rate and power of each spatial null method in simulated worlds.

Worlds keep hcp-s100's 100 cortical regions and replace expression and connectivity by
draws whose dependence is known (tests/null_worlds.py): in the "distance" and "field" worlds
connectivity does not read expression (a function of distance plus noise; the similarity of
an independent spatial field plus noise), so a calibrated null rejects at p <= alpha in a
share alpha of worlds; in the "effect" world it does read expression, and the share is the
power. The statistic is cge's test r without training (Pearson r between the expression
correlation of a pair and its connectivity, over the test pairs of 4 spatial folds, averaged
over folds), null i is one map for every fold, and p = (1 + #nulls >= real) / (1 + N).

    OMP_NUM_THREADS=1 python -m benchmarks.null_calibration --worlds 200 --nulls 19 \\
        --variogram-worlds 40 --json-out null_calibration.json

Variogram surrogates (brainsmash, one fit per gene and null) cost ~0.07 s per gene and null
on 100 regions, hundreds of times the others: they run on the first `--variogram-worlds`
worlds of each scenario only (the same worlds the other methods see first).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from benchmarks.common import log

# The world simulator is the tests' helper (tests/ is not a package): one definition of a world
# for the tests' bounds and for these measurements.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from null_worlds import Connectivity, Expression, rejection_rate, schaefer100  # noqa: E402

DEFAULT_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("msr", "spin", "shuffle", "variogram")

# name -> (expression, connectivity): "distance" and "field" worlds have no gene signal.
SCENARIOS: dict[str, tuple[Expression, Connectivity]] = {
    "distance / exponential 20 mm": (Expression(kernel="exponential", length=20.0), Connectivity("distance")),
    "distance / gaussian 40 mm": (Expression(kernel="gaussian", length=40.0), Connectivity("distance")),
    "distance / 3 latent fields, matern32 30 mm": (
        Expression(kernel="matern32", length=30.0, latent=3, noise=0.3),
        Connectivity("distance"),
    ),
    "distance / symmetric matern32 60 mm, sigmoid (AHBA-like)": (
        Expression(kernel="matern32", length=60.0, noise=0.35, symmetric=True, sigmoid=True),
        Connectivity("distance"),
    ),
    "distance / two scales: exponential 15 mm + gaussian 60 mm": (
        Expression(kernel="exponential", length=15.0, second=("gaussian", 60.0, 0.5)),
        Connectivity("distance"),
    ),
    "distance, noisy (sd 0.3) / exponential 20 mm": (
        Expression(kernel="exponential", length=20.0),
        Connectivity("distance", noise=0.3),
    ),
    "field / exponential 20 mm": (Expression(kernel="exponential", length=20.0), Connectivity("field")),
    "field / gaussian 40 mm": (Expression(kernel="gaussian", length=40.0), Connectivity("field")),
    "field / 3 latent symmetric fields, matern32 40 mm, sigmoid": (
        Expression(kernel="matern32", length=40.0, latent=3, noise=0.3, symmetric=True, sigmoid=True),
        Connectivity("field"),
    ),
    "effect 0.15 (power) / exponential 20 mm": (
        Expression(kernel="exponential", length=20.0),
        Connectivity("expression", effect=0.15),
    ),
    "effect 0.05 (power) / exponential 20 mm": (
        Expression(kernel="exponential", length=20.0),
        Connectivity("expression", effect=0.05),
    ),
}


def measure(args: argparse.Namespace) -> list[dict]:
    regions = schaefer100(args.mirror)
    rows = []
    chosen = [name for name in SCENARIOS if not args.only or any(part in name for part in args.only)]
    for name in chosen:
        expression, connectivity = SCENARIOS[name]
        expression = Expression(**{**expression.__dict__, "genes": args.genes})
        cheap = tuple(m for m in args.methods if m != "variogram")
        results = {}
        if cheap:
            results |= rejection_rate(regions, expression, connectivity, cheap, args.worlds, args.nulls, seed=args.seed)
        if "variogram" in args.methods and args.variogram_worlds:
            results |= rejection_rate(
                regions, expression, connectivity, ("variogram",), args.variogram_worlds, args.nulls, seed=args.seed
            )
        for method, entry in results.items():
            rate, worlds = entry["rate"], entry["worlds"]
            row = {"scenario": name, "method": method, "rate": rate, "rejected": entry["rejected"],
                   "worlds": worlds, "nulls": entry["nulls"], "se": math.sqrt(max(rate * (1 - rate), 1e-12) / worlds),
                   "gap": entry["gap"], "seconds_per_world": entry["seconds"] / worlds}  # fmt: skip
            rows.append(row)
            log(f"{name:62s} {method:9s} rate {rate:.3f} ({entry['rejected']}/{worlds}) gap {entry['gap']:+.3f} "
                f"{row['seconds_per_world']:.2f} s/world")  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| scenario | method | p <= 0.05 in | rate ± se | real - null mean | s / world |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['method']} | {row['rejected']}/{row['worlds']} | "
            f"{row['rate']:.3f} ± {row['se']:.3f} | {row['gap']:+.3f} | {row['seconds_per_world']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(DEFAULT_MIRROR), help="the data mirror (for hcp-s100's regions)")
    parser.add_argument("--worlds", type=int, default=200, help="worlds per scenario")
    parser.add_argument("--variogram-worlds", type=int, default=40, help="worlds per scenario for variogram")
    parser.add_argument("--nulls", type=int, default=19, help="nulls N per world (alpha 0.05 is exact at N = 19)")
    parser.add_argument("--genes", type=int, default=12)
    parser.add_argument("--methods", type=lambda text: tuple(text.split(",")), default=METHODS)
    parser.add_argument("--only", nargs="*", help="scenarios whose name contains one of these")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if 1 / (args.nulls + 1) > 0.05:
        parser.error(f"--nulls {args.nulls}: the smallest p is 1 / (N + 1) > 0.05, so nothing could be rejected")
    start = time.perf_counter()
    rows = measure(args)
    print(markdown(rows))
    log(f"{time.perf_counter() - start:.0f} s")
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
