"""Throughput, FLOP/s, memory and platform overhead of xattn's training path on hcp-s100.

    python -m benchmarks.throughput [--json OUT] [--device cpu|cuda] [--quick] [--skip-platform]

What it measures, in one process (children only where a clean process is needed):

1. Training pairs per second of xattn's trainer against the naive reference trainer of
   `benchmarks.naive`, for `cross_attention` and the three self-attention families, at the
   model configs' default hyperparameters on `hcp-s100` (810 genes, 100 regions; spatial
   split, fold 0 of 5, co-expression gene vectors). On CPU each family's batch is the
   trainer's default (512), halved while one naive batch would take over 6 s, so the slow
   families fit the time budget; the batch used is recorded. The xattn side runs the trainer's own
   epoch loop, `xattn.training.train_epoch` (its `batch_loss`, backward,
   `loss.item()`, AdamW step), on a random subset of n_batches x batch_size training pairs;
   the naive side runs the same number of batches from a shuffling DataLoader through a
   deep copy of the same model (identical weights). After a warm-up the two alternate
   (naive first in even rounds, xattn first in odd ones); each round gives one ratio
   xattn/naive, reported as mean, sd, min and max over rounds.
2. Achieved FLOP/s of cross_attention: xattn pairs/s x `cross_attention_flops_per_pair`
   (training FLOPs of one pair, model FLOPs as the MFU convention counts them: every pair
   encoded on its own, see that function), as a fraction of fp32 and bf16 matmul peaks
   measured on the same device in the same run (large square torch.matmul).
   The trainer runs fp32 on CPU and bf16 autocast on CUDA (`--precision` overrides); the
   naive reference always runs fp32. The precisions used are recorded.
3. Peak training memory of cross_attention at 405 genes (the first 405 of hcp-s100) and
   810 genes at the same batch size, over a baseline that has data, model and optimizer
   built: CUDA `max_memory_allocated`; CPU the peak resident set size of a child process
   (VmHWM, reset to the current RSS through /proc/self/clear_refs after setup; where that
   reset is refused, the child's setup peak is the baseline).
4. Platform overhead: the same fixed trials run by `xattn study run` (Ray Tune + Optuna +
   MLflow on a temporary workspace; a one-value search space, FIFO scheduler, one trial at a
   time) and by a plain loop of `prepare_experiment` + `build_trial_model` + `fit`, each in a
   fresh process timed from launch to exit: overhead = (study - plain) / study, with trials
   of about 60 s (the goal's condition; `benchmarks.platform_overhead` says how they are
   sized and how the overhead is split into once-per-study and per-trial parts). Skipped when
   ray, mlflow or optuna is not importable, or with --skip-platform.
5. The cross_attention options (OPTIONS: bidirectional, three CLS tokens, mixed attention,
   learned bins), each alone on the reference design: training pairs/s at the same batch as
   the reference, in alternating rounds, as a ratio to the reference per round; and each
   one's peak memory at 405 vs 810 genes as in 3 (one repetition). --skip-options skips it.

Modes used by benchmarks/gpu_check.sh: `--attention-check` (FlashAttention / SDPA backends /
explicit attention, kernel and model level), `--packing-worker` (one short training run for
the packing test). `--profile` adds a torch.profiler table of cross_attention training steps.

ray, mlflow, optuna, flash_attn and rich are imported lazily: the benchmark runs where none
of them is installed (xattn's own needs, pydantic and pooch among them, must be there: on a
bare GPU machine, carry them as wheels). `--synthetic-fallback` replaces a missing hcp-s100
mirror by a synthetic connectome of the same shape (recorded under "data").

The parts: `benchmarks.harness` (settings, data, the two trainers timed in alternating
rounds), `benchmarks.flops` (FLOPs per pair, matmul peaks), `benchmarks.memory` (item 3),
`benchmarks.variants` (item 5, the attention check, the profile), `benchmarks.report`
(environment and printout), `benchmarks.platform_overhead` (item 4); this module runs them
from the command line, and holds the packing worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DATASET, PACKING_TAG, SEED, START, finite, log, summary
from benchmarks.flops import cross_attention_flops_per_pair, matmul_peak
from benchmarks.harness import (
    DATA_USED,
    FAMILIES,
    OPTIONS,
    Settings,
    bench_family,
    default_mirror,
    gene_subset,
    load_experiment,
    make_model,
    sync,
)
from benchmarks.memory import measure_memory, memory_child
from benchmarks.platform_overhead import TRIAL_S, measure_platform, plain_trials
from benchmarks.report import environment, print_report
from benchmarks.variants import attention_check, bench_options, profile_cross_attention
from xattn.training import TrainConfig, fit

# --------------------------------------------------------------------------------------------
# Packing worker (GPU script)


def _process_start_time() -> float:
    """When this process was launched (epoch seconds, from /proc), so a run's start-up (Python,
    torch, CUDA) is counted; the module's import time where /proc is not readable."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - (time.perf_counter() - START)


def packing_worker(s: Settings, epochs: int, train_pairs: int | None = None) -> dict[str, Any]:
    """One short training run: `fit` of cross_attention (defaults) for `epochs` epochs, on the
    first `train_pairs` training pairs when given (all by default)."""
    process_start = _process_start_time()
    experiment = load_experiment(s.mirror, s.device, synthetic_fallback=s.synthetic_fallback)
    pairs, vectors = gene_subset(experiment, None)
    if train_pairs:
        pairs = dataclasses.replace(pairs, train_pairs=pairs.train_pairs[:train_pairs])
    model = make_model(experiment, "cross_attention", vectors).to(s.device)
    config = TrainConfig(batch_size=s.batch_size, max_epochs=epochs, patience_steps=10**9, device=s.device,
                         precision=s.precision, seed=SEED)  # fmt: skip
    sync(s.device)
    train_start = time.time()
    result = fit(model, pairs, config)
    sync(s.device)
    train_end = time.time()
    return {
        "process_start": process_start, "train_start": train_start, "train_end": train_end,
        "train_pairs": epochs * len(pairs.train_pairs), "epochs": epochs, "batch_size": s.batch_size,
        "precision": s.precision, "best_val_loss": result.best_val_loss,
    }  # fmt: skip


def run_benchmark(args: argparse.Namespace, s: Settings) -> dict[str, Any]:
    from xattn.models.cross_attention import CrossAttentionConfig

    report = environment(s)
    report.update(batch_size=s.batch_size, precision={"xattn": s.precision, "naive": "fp32"})
    log(f"device {s.device} ({report['device_name']}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"loading {DATASET} from {s.mirror}")  # fmt: skip
    experiment = load_experiment(s.mirror, s.device, synthetic_fallback=s.synthetic_fallback)
    report["dataset"] = DATA_USED.get("dataset", DATASET)
    n_genes = experiment.data.n_genes
    report["n_genes"] = n_genes
    report["n_regions"] = experiment.data.n_regions
    report["train_pairs"] = len(experiment.pairs.train_pairs)
    config = CrossAttentionConfig(n_genes=n_genes)
    report["model_defaults"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "n_genes"}
    flops = cross_attention_flops_per_pair(config)
    report["flops_per_pair"] = {"cross_attention_train": flops, "cross_attention_forward": flops / 3}

    log("matmul peaks (fp32, bf16)")
    peaks = {
        "fp32": matmul_peak(torch.float32, s.device, s.quick),
        "bf16": matmul_peak(torch.bfloat16, s.device, s.quick),
    }
    report["peaks"] = peaks
    log(f"peaks: fp32 {peaks['fp32']['peak'] / 1e9:.1f} GFLOP/s ({peaks['fp32']['size']}^3), "
        f"bf16 {peaks['bf16']['peak'] / 1e9:.1f} GFLOP/s ({peaks['bf16']['size']}^3)")  # fmt: skip

    for family in s.families:
        result = bench_family(experiment, family, s, flops=flops if family == "cross_attention" else None)
        if family == "cross_attention":
            for kind in ("fp32", "bf16"):
                result[f"{kind}_peak_fraction"] = summary(
                    v / peaks[kind]["peak"] for v in result["achieved_flops"]["values"]
                )
            # Without bf16 matrix units bf16 is emulated and slower than fp32: its "peak" is then
            # no hardware limit, and a fraction of it above 1 means nothing.
            result["bf16_peak_below_fp32_peak"] = peaks["bf16"]["peak"] < peaks["fp32"]["peak"]
        report[family] = result

    if args.profile:
        log("profile: cross_attention training step(s)")
        report["profile"] = profile_cross_attention(experiment, s, steps=args.profile_steps)

    if args.skip_memory:
        report["memory"] = {"skipped": "--skip-memory"}
    else:
        report["memory"] = measure_memory(experiment, s)

    if args.skip_options:
        report["options"] = {"skipped": "--skip-options"}
    else:
        report["options"] = bench_options(experiment, s, memory=not args.skip_memory)

    if args.skip_platform:
        report["platform"] = {"skipped": "--skip-platform"}
    else:
        report["platform"] = measure_platform(
            quick=s.quick, cpus=s.threads or 2, cuda=s.device == "cuda", mirror=s.mirror, trial_s=args.platform_trial_s
        )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute version (fewer, smaller batches)")
    parser.add_argument("--skip-platform", action="store_true", help="skip the Ray Tune + MLflow overhead measurement")
    parser.add_argument("--platform-trial-s", type=float, default=TRIAL_S,
                        help=f"length of each platform trial, seconds (default {TRIAL_S:.0f}; "
                             "--quick: six short epochs)")  # fmt: skip
    parser.add_argument("--skip-memory", action="store_true", help="skip the 405/810-gene memory measurement")
    parser.add_argument("--families", help=f"comma-separated subset of {','.join(FAMILIES)} (default: all)")
    parser.add_argument("--skip-options", action="store_true",
                        help="skip the cross_attention options beside the reference design "
                             f"({', '.join(OPTIONS)})")  # fmt: skip
    parser.add_argument("--batch-size", type=int,
                        help="every batch (default: on CPU, throughput at the trainer's default 512, halved while "
                             "one naive batch takes over 6 s (2 s with --quick) but not below 32 (16), memory at "
                             "32 (16); 256 on CUDA)")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="alternating timed rounds (default 3, 2 with --quick)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="xattn trainer precision; auto: bf16 on CUDA, fp32 on CPU")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    parser.add_argument("--mirror", default=None, help="data mirror (default $XATTN_DATA_MIRROR or ../shared/data)")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of cross_attention steps")
    parser.add_argument("--profile-steps", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, help="training steps per memory run (default 2, 1 with --quick)")
    parser.add_argument("--attention-check", action="store_true", help="only the attention backend comparison")
    parser.add_argument("--options-only", action="store_true", help="only the cross_attention options (item 5)")
    parser.add_argument("--packing-worker", action="store_true", help="only one short training run (packing test)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of a --packing-worker run")
    parser.add_argument("--train-pairs", type=int, help="limit a --packing-worker run to this many training pairs")
    parser.add_argument("--synthetic-fallback", action="store_true",
                        help="without hcp-s100 in the mirror, use a synthetic connectome of its shape")  # fmt: skip
    parser.add_argument("--memory-child", type=int, metavar="GENES", help=argparse.SUPPRESS)
    parser.add_argument("--memory-option", default="reference", choices=tuple(OPTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--platform-plain", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mirror = args.mirror or default_mirror()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is false", file=sys.stderr)
        return 2
    s = Settings.from_args(args)
    if s.threads:
        torch.set_num_threads(s.threads)
    if args.platform_plain:
        plain_trials(args.platform_plain, args.mirror)
        return 0
    if args.memory_child:
        memory_child(s, args.memory_child, args.memory_option)
        return 0

    if args.options_only:
        report = environment(s)
        report.update(dataset=DATASET, batch_size=s.batch_size, precision={"xattn": s.precision})
        experiment = load_experiment(s.mirror, s.device, synthetic_fallback=s.synthetic_fallback)
        report["options"] = bench_options(experiment, s, memory=not args.skip_memory)
    elif args.attention_check:
        report = environment(s)
        experiment = load_experiment(s.mirror, s.device, synthetic_fallback=s.synthetic_fallback)
        report["attention"] = attention_check(experiment, s)
    elif args.packing_worker:
        report = {**environment(s), "packing_worker": packing_worker(s, args.epochs, args.train_pairs)}
        print(PACKING_TAG + json.dumps(report["packing_worker"]), flush=True)
    else:
        report = run_benchmark(args, s)
    report["data"] = dict(DATA_USED)
    report["wall_s"] = time.perf_counter() - START
    if not (args.attention_check or args.packing_worker):
        print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite(report), indent=2, default=str, allow_nan=False))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
