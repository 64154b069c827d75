"""Models per CPU-second: M models of one configuration trained stacked (`fit_stacked`) against the
same M trained one after another (`fit`), in one process, on the s100-compare-cpu study's data.

    .venv/bin/python -m benchmarks.stacked_training                  # mlp and cross_attention, 16 models
    .venv/bin/python -m benchmarks.stacked_training --families mlp --models 8 --rounds 2

The M models are what a comparison trains: the study's outer folds (4 spatial folds of
hcp-s100, the 100 most variable genes of each fold's training regions) times seeds, each
prepared by `prepare_trial` as a trial prepares it, at the study's shipped CPU settings
(studies/s100-compare-cpu.yaml: the fixed settings plus one point of its search space) and
with the trial's thread count (`resources.cpus`, 1). A few epochs are enough: both ways do
the same work per epoch. Early stopping is off (patience beyond the run) so every model
trains every epoch both ways.

The ratio is of models per CPU-second (process time): the issue's measure, and much steadier
than wall time on a shared machine, where the other jobs' load moves a run's wall time by 2x.
The wall-time ratio is printed beside it. With `--rounds` > 1 the two ways alternate which goes
first and each way's fastest round counts. The stacked run's test metrics are checked against
the sequential ones (they agree to float rounding); the largest difference is printed too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, log

STUDY = REPO_ROOT / "studies" / "s100-compare-cpu.yaml"
# One point of each family's search space in the study (its grid's first values, a mid learning rate).
POINTS: dict[str, dict[str, Any]] = {
    "cross_attention": {
        "num_layers": 1, "pooling_mode": "mean", "cls_init": "random", "dropout_rate": 0.1, "learning_rate": 5e-4,
    },
    "mlp": {"pca_components": 0, "use_distance": False, "dropout_rate": 0.1, "learning_rate": 1e-3},
    "distance_decay": {"learning_rate": 1e-2},
    "cge": {"learning_rate": 1e-2},
    "bilinear_lowrank": {"rank": 8, "weight_decay": 0.01, "learning_rate": 1e-3},
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stacked_training",
        description="Models per CPU-second of fit_stacked against sequential fit on the s100-compare-cpu data.",
    )
    parser.add_argument("--families", default="mlp,cross_attention", help="comma-separated (default: %(default)s)")
    parser.add_argument("--models", type=int, default=16, help="models per family (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs each model trains (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds of both ways; the fastest counts (default: 1)"
    )
    parser.add_argument(
        "--models-per-pass", type=int, default=None, help="fit_stacked's models_per_pass (default: all models)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the study's resources.cpus, as a trial)"
    )
    parser.add_argument(
        "--mirror", default=os.environ.get("XATTN_DATA_MIRROR") or str(REPO_ROOT.parent / "shared" / "data"),
        help="data mirror holding hcp-s100 (default: $XATTN_DATA_MIRROR or ../shared/data)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def prepare(family: str, n_models: int, epochs: int, mirror: str) -> tuple[list, list, list]:
    """Models, PairData and TrainConfigs of n_models (fold, seed) trials of `family`."""
    from xattn.tuning.spec_file import load_spec
    from xattn.tuning.trial import prepare_trial

    spec = load_spec(STUDY)
    family_spec = spec if family == spec.model.family else spec.for_family(family)
    folds = spec.comparison.folds
    models, datas, configs = [], [], []
    for k in range(n_models):
        config = {"_fold": k % folds, "_seed": k // folds, **POINTS.get(family, {})}
        trial = prepare_trial(family_spec, config, mirror=mirror, device="cpu")
        train_config = trial.train_config
        train_config.max_epochs, train_config.patience_steps = epochs, 10**9
        models.append(trial.model)
        datas.append(trial.experiment.pairs)
        configs.append(train_config)
    return models, datas, configs


def measure(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both ways `args.rounds` times, alternating which goes first (the machine's load drifts)."""
    from xattn.training import fit
    from xattn.training.stacked import fit_stacked

    n = args.models
    models, datas, configs = prepare(family, n, args.epochs, args.mirror)
    log(f"{family}: {n} models, {len(datas[0].train_pairs)} training pairs (model 0), {args.epochs} epoch(s)")

    def sequential() -> list:
        copies = [copy.deepcopy(model) for model in models]
        return [fit(model, data, config) for model, data, config in zip(copies, datas, configs)]

    def stacked() -> list:
        copies = [copy.deepcopy(model) for model in models]
        return fit_stacked(copies, datas, configs, models_per_pass=args.models_per_pass)

    # Warm-up, untimed: the first fit of a process pays one-off costs (lazy imports, kernel set-up).
    fit(copy.deepcopy(models[0]), datas[0], configs[0])
    fit_stacked([copy.deepcopy(model) for model in models[:2]], datas[:2], configs[:2])
    wall: dict[str, list[float]] = {"sequential": [], "stacked": []}
    cpu: dict[str, list[float]] = {"sequential": [], "stacked": []}
    results = {}
    for r in range(args.rounds):
        for name, run in sorted({"sequential": sequential, "stacked": stacked}.items(), reverse=r % 2 == 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            log(f"{family}: {name} {wall[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU")
    differences = [
        abs(a.test["test_pearson"] - b.test["test_pearson"]) for a, b in zip(results["sequential"], results["stacked"])
    ]
    return {
        "family": family,
        "models": n,
        "models_per_pass": args.models_per_pass or "auto",
        "epochs": args.epochs,
        "wall_s": wall,
        "cpu_s": cpu,
        "sequential_models_per_cpu_s": n / min(cpu["sequential"]),
        "stacked_models_per_cpu_s": n / min(cpu["stacked"]),
        "ratio": min(cpu["sequential"]) / min(cpu["stacked"]),
        "wall_ratio": min(wall["sequential"]) / min(wall["stacked"]),
        "max_test_pearson_difference": max(differences),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from xattn.tuning.spec_file import load_spec

    threads = args.threads or max(1, int(load_spec(STUDY).resources.cpus))
    torch.set_num_threads(threads)
    log(f"torch {torch.__version__}, {threads} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    results = [measure(family, args) for family in args.families.split(",")]
    print(
        "\n| family | models | per pass | epochs | sequential models/CPU-s | stacked models/CPU-s "
        "| ratio (CPU) | ratio (wall) | max test r diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['family']} | {r['models']} | {r['models_per_pass']} | {r['epochs']} "
            f"| {r['sequential_models_per_cpu_s']:.4f} | {r['stacked_models_per_cpu_s']:.4f} | {r['ratio']:.2f} "
            f"| {r['wall_ratio']:.2f} | {r['max_test_pearson_difference']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"threads": threads, "torch": torch.__version__, "results": results}, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
