"""Throughput, FLOP/s, memory and platform overhead of xattn's training path on hcp-s100.

    python -m benchmarks.throughput [--json OUT] [--device cpu|cuda] [--quick] [--skip-platform]

What it measures, in one process (children only where a clean process is needed):

1. Training pairs per second of xattn's trainer against the naive reference trainer of
   `benchmarks.naive`, for `cross_attention` and the three self-attention families, at the
   model configs' default hyperparameters on `hcp-s100` (810 genes, 100 regions; spatial
   split, fold 0 of 5, co-expression gene vectors). On CPU each family's batch is the
   trainer's default (512), halved while one naive batch would take over 6 s, so the slow
   families fit the time budget; the batch used is recorded. The xattn side runs the trainer's own
   epoch loop, `xattn.training.trainer._train_epoch` (its `_batch_loss`, backward,
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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DATASET,
    MEMORY_TAG,
    PACKING_TAG,
    REPO_ROOT,
    SEED,
    SPLIT,
    START,
    child_env,
    finite,
    fmt,
    log,
    summary,
    tagged,
)
from benchmarks.platform_overhead import TRIAL_S, measure_platform, plain_trials

# The cross-attention model's options (xattn/models/cross_attention.py), each alone on top of
# the reference design: measured beside it at the same batch (`bench_options`).
OPTIONS: dict[str, dict[str, Any]] = {
    "reference": {},
    "bidirectional": {"bidirectional": True, "direction_combine": "sum"},
    "n_cls=3": {"n_cls": 3, "cls_init": "random+spatial+expression"},
    "query_self_attention": {"query_self_attention": True},
    "learned_bins": {"expression_encoding": "learned_bins"},
}

FAMILIES = (
    "cross_attention",
    "shared_self_attention",
    "shared_self_attention_pooling",
    "shared_self_attention_gene2vec",
)
# --------------------------------------------------------------------------------------------
# FLOPs


def cross_attention_flops_per_pair(config: Any, n_genes: int | None = None, *, training: bool = True) -> float:
    """Matmul FLOPs of one region pair through CrossAttentionGene2VecModel (a multiply-add = 2).

    `config` is a CrossAttentionConfig (or anything with its fields); `n_genes` defaults to
    config.n_genes. With G genes, d = d_model,
    L = num_layers, Lq = G + 1 query tokens (CLS + region i's genes), Lk = G key tokens:

        gene tokens                 0 per pair                      identity_proj runs once per
                                                                    forward on the G gene vectors
        CLS token                   2*6*d                           cls_proj
        each of the L blocks        2*Lq*d*d + 2*Lq*d*d             q_proj, out_proj
                                    2*Lk*d*2d                       kv_proj
                                    2*Lq*Lk*d + 2*Lq*Lk*d           Q K^T, A V (all heads)
                                    2*Lq*d*4d + 2*Lq*4d*d           feed-forward
        attention pooling           2*Lq*d                          only pooling_mode "attention"
        MLP head                    sum of 2*w_in*w_out over d -> deep_hidden_dims... -> 1

    A training step is counted as 3 x forward (the backward computes gradients with respect to
    both inputs and weights, each about one forward). These are *model* FLOPs: both regions
    are counted for every pair, as the model is defined; xattn's forward encodes each unique
    region of a batch once and projects each unique key/value region once per block, so it
    executes somewhat fewer (the K/V terms). Element-wise token values, LayerNorm, softmax,
    GELU and the optimizer are not counted.

    At the defaults (G = 810, d = 128, 4 blocks, head 512-256-128) this is
    2.62 GFLOP forward and 7.86 GFLOP per training pair; the attention products are half of
    it. (The issue quotes "about 6 GFLOP per pair per training step".)
    """
    G = int(config.n_genes if n_genes is None else n_genes)
    d = int(config.d_model)
    lq, lk = G + 1, G
    cls = 2 * 6 * d
    block = 2 * lq * d * d * 2 + 2 * lk * d * 2 * d + 2 * lq * lk * d * 2 + 2 * lq * d * 4 * d * 2
    pooling = 2 * lq * d if config.pooling_mode == "attention" else 0
    widths = [d, *config.deep_hidden_dims, 1]
    head = sum(2 * a * c for a, c in itertools.pairwise(widths))
    forward = cls + int(config.num_layers) * block + pooling + head
    return float(3 * forward if training else forward)


# --------------------------------------------------------------------------------------------
# Settings and data


@dataclass
class Settings:
    device: str
    quick: bool
    batch_size: int
    rounds: int
    warmup: int
    target_s: float  # wall time of one round of the slower trainer the batch count is chosen for
    max_batches: int
    precision: str  # the xattn trainer's precision
    threads: int | None
    mirror: str
    memory_steps: int
    memory_reps: int
    families: tuple[str, ...]
    # Throughput batches start at the trainer's default (512) and are halved while one naive
    # batch would take longer than this (None: every family at batch_size).
    naive_batch_cap_s: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        cuda = args.device == "cuda"
        quick = bool(args.quick)
        if cuda:
            defaults = {"batch_size": 256, "rounds": 2 if quick else 3, "warmup": 3, "target_s": 0.5 if quick else 1.0,
                        "max_batches": 100}  # fmt: skip
        elif quick:
            defaults = {"batch_size": 16, "rounds": 2, "warmup": 1, "target_s": 1.5, "max_batches": 10}
        else:
            defaults = {"batch_size": 32, "rounds": 3, "warmup": 1, "target_s": 4.0, "max_batches": 40}
        precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
        return cls(
            device=args.device,
            quick=quick,
            batch_size=args.batch_size or defaults["batch_size"],
            rounds=args.rounds or defaults["rounds"],
            warmup=defaults["warmup"],
            target_s=defaults["target_s"],
            max_batches=defaults["max_batches"],
            precision=precision,
            threads=None if cuda else args.threads,
            mirror=args.mirror,
            memory_steps=args.memory_steps or (1 if quick else 2),
            memory_reps=1 if quick else 2,
            families=tuple(args.families.split(",")) if args.families else FAMILIES,
            naive_batch_cap_s=None if (cuda or args.batch_size) else (2.0 if quick else 6.0),
        )


def default_mirror() -> str:
    return os.environ.get("XATTN_DATA_MIRROR") or str(REPO_ROOT.parent / "shared" / "data")


_SYNTHETIC_FALLBACK = False  # set by --synthetic-fallback
DATA_USED: dict[str, Any] = {}


def load_experiment(mirror: str, device: str):
    """hcp-s100, spatial split (fold 0 of 5), co-expression gene vectors, data on `device`.

    With --synthetic-fallback and no usable hcp-s100 in the mirror, a synthetic connectome of
    the same shape (100 regions x 810 genes) stands in: speed and memory depend on the shapes
    only. Which one was used is recorded under "data" in the report.
    """
    from xattn.errors import DataError

    try:
        experiment = _prepare(DATASET, None, mirror, device)
        DATA_USED.update(dataset=DATASET, mirror=mirror)
    except DataError as error:
        if not _SYNTHETIC_FALLBACK:
            raise
        synthetic = {"regions": 100, "genes": 810, "noise": 0.1, "seed": SEED}
        experiment = _prepare("synthetic", synthetic, None, device)
        DATA_USED.update(dataset="synthetic", synthetic=synthetic, reason=f"{DATASET} unavailable: {error}")
        log(f"{DATASET} unavailable ({error}); using a synthetic connectome of the same shape")
    DATA_USED["prepared_by"] = type(experiment).__module__
    return experiment


def _prepare(dataset: str, synthetic: dict | None, mirror: str | None, device: str):
    from xattn.experiment import prepare_experiment
    from xattn.data.spec import DataSpec

    spec = DataSpec(dataset=dataset, synthetic=synthetic or {}, split=SPLIT, genevec="coexpression")
    return prepare_experiment(spec, {}, seed=SEED, mirror=mirror, device=device)


def gene_subset(experiment, n_genes: int | None):
    """(PairData, gene vectors) restricted to the first n_genes genes (None: all)."""
    pairs = experiment.pairs
    vectors = torch.as_tensor(experiment.gene_vectors.vectors, dtype=torch.float32)
    if n_genes is None or n_genes >= vectors.shape[0]:
        return pairs, vectors
    return dataclasses.replace(pairs, expression=pairs.expression[:, :n_genes].contiguous()), vectors[:n_genes]


def make_model(experiment, family: str, vectors: torch.Tensor, params: dict | None = None) -> torch.nn.Module:
    """A seeded model as `build_trial_model` builds it, for the given gene vectors."""
    from xattn.models.registry import build_model

    torch.manual_seed(SEED)
    return build_model(
        family, params or {}, n_genes=vectors.shape[0], gene_vectors=vectors,
        learn_gene_vectors=experiment.gene_vectors.learnable,
    )  # fmt: skip


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# The two trainers, timed


class XattnRunner:
    """xattn's trainer: `_train_epoch` over a fresh random subset of n x batch training pairs."""

    def __init__(self, model: torch.nn.Module, pairs, batch_size: int, precision: str, device: str) -> None:
        from xattn.training.trainer import TrainConfig

        self.model = model.to(device)
        self.pairs = pairs.to(device)
        self.device = device
        # The naive trainer is plain AdamW: no warm-up, schedule or clipping here either.
        self.config = TrainConfig(batch_size=batch_size, device=device, precision=precision, seed=SEED,
                                  warmup_steps=0, lr_schedule="constant", grad_clip=0.0)  # fmt: skip
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(SEED + 1)
        self.epoch = 0
        self.last_loss = math.nan

    def data_for(self, n_batches: int):
        train = self.pairs.train_pairs
        need = n_batches * self.config.batch_size
        draws = [torch.randperm(len(train), generator=self.generator) for _ in range(math.ceil(need / len(train)))]
        index = torch.cat(draws)[:need].to(train.device)
        return dataclasses.replace(self.pairs, train_pairs=train[index])

    def run(self, n_batches: int) -> float:
        """Seconds for n_batches training steps through the trainer's epoch loop."""
        from xattn.training.trainer import _train_epoch

        data = self.data_for(n_batches)
        self.epoch += 1
        sync(self.device)
        start = time.perf_counter()
        self.last_loss = _train_epoch(self.model, data, self.optimizer, self.config, self.epoch)
        sync(self.device)
        return time.perf_counter() - start


class NaiveRunner:
    """The naive reference trainer (benchmarks.naive) on the same training pairs."""

    def __init__(self, model: torch.nn.Module, pairs, batch_size: int, device: str) -> None:
        from benchmarks.naive import NaiveTrainer, PairDataset

        dataset = PairDataset(pairs.expression, pairs.coords, pairs.connectivity, pairs.train_pairs)
        self.device = device
        self.trainer = NaiveTrainer(model, dataset, batch_size=batch_size, device=device, seed=SEED + 2)
        self.last_loss = math.nan

    def run(self, n_batches: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.last_loss = self.trainer.train_batches(n_batches)
        sync(self.device)
        return time.perf_counter() - start


def batch_within(family: str, pairs, model: torch.nn.Module, s: Settings) -> int:
    """The trainer's default batch, halved (not below batch_size) while one naive batch would
    take over `naive_batch_cap_s`, from two probe batches of batch_size on a copy of `model`."""
    from xattn.training.trainer import TrainConfig

    probe = NaiveRunner(copy.deepcopy(model), pairs, s.batch_size, s.device)
    per_pair = min(probe.run(1) for _ in range(2)) / s.batch_size  # the first pays one-off set-up
    bs = TrainConfig.batch_size
    while bs > s.batch_size and bs * per_pair > s.naive_batch_cap_s:
        bs //= 2
    log(f"{family}: naive {1 / per_pair:.1f} pairs/s at batch {s.batch_size}, so batch {bs} "
        f"(the default {TrainConfig.batch_size}, halved while a naive batch takes over {s.naive_batch_cap_s:.0f}s)")  # fmt: skip
    return bs


def bench_family(experiment, family: str, s: Settings, flops: float | None = None) -> dict[str, Any]:
    """Alternating timed rounds of xattn's trainer and the naive one; see the module doc."""
    pairs, vectors = gene_subset(experiment, None)
    model = make_model(experiment, family, vectors)
    naive_model = copy.deepcopy(model)  # identical weights, its own optimizer
    bs = s.batch_size if s.naive_batch_cap_s is None else batch_within(family, pairs, naive_model, s)
    xattn = XattnRunner(model, pairs, bs, s.precision, s.device)
    naive = NaiveRunner(naive_model, pairs, bs, s.device)

    log(f"{family}: warm-up ({s.warmup} batch(es) of {bs} pairs each way)")
    # One batch at a time; the fastest one sets the batch count (the first pays one-off set-up).
    t_xattn = min(xattn.run(1) for _ in range(s.warmup))
    t_naive = min(naive.run(1) for _ in range(s.warmup))
    n = max(1, min(s.max_batches, math.ceil(s.target_s / max(t_xattn, t_naive, 1e-6))))
    log(
        f"{family}: warm-up {bs / t_xattn:.1f} pairs/s xattn, {bs / t_naive:.1f} naive; {s.rounds} rounds of {n} batch(es)"
    )

    times: dict[str, list[float]] = {"xattn": [], "naive": []}
    for r in range(s.rounds):
        order = ("naive", "xattn") if r % 2 == 0 else ("xattn", "naive")
        for who in order:
            times[who].append((naive if who == "naive" else xattn).run(n))
        pps = {who: n * bs / times[who][-1] for who in times}
        log(f"{family}: round {r + 1}/{s.rounds}: xattn {pps['xattn']:.1f} pairs/s, naive {pps['naive']:.1f}, "
            f"ratio {pps['xattn'] / pps['naive']:.2f}")  # fmt: skip

    pps_x = [n * bs / t for t in times["xattn"]]
    pps_n = [n * bs / t for t in times["naive"]]
    result: dict[str, Any] = {
        "pairs_per_s": {"xattn": summary(pps_x), "naive": summary(pps_n)},
        "speedup_vs_naive": summary(x / y for x, y in zip(pps_x, pps_n)),
        "batch_size": bs,
        "batches_per_round": n,
        "rounds": s.rounds,
        "precision": {"xattn": s.precision, "naive": "fp32"},
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "last_loss": {"xattn": xattn.last_loss, "naive": naive.last_loss},
    }
    if flops is not None:
        result["flops_per_pair_train"] = flops
        result["achieved_flops"] = summary(p * flops for p in pps_x)
        result["naive_achieved_flops"] = summary(p * flops for p in pps_n)
    del xattn, naive, model, naive_model
    if s.device == "cuda":
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------
# Matmul peaks


def matmul_peak(dtype: torch.dtype, device: str, quick: bool) -> dict[str, Any]:
    """FLOP/s of a square torch.matmul: 8192^3 on CUDA; on CPU the size is chosen from a
    512^3 probe so that one product takes at most about 0.5 s (512..2048), since bf16 can be emulated."""
    cuda = device == "cuda"
    if cuda:
        size, reps, inner = 8192, (5 if quick else 10), 5
    else:
        probe_a = torch.randn(512, 512, dtype=dtype)
        probe_a @ probe_a
        start = time.perf_counter()
        probe_a @ probe_a
        rate = 2 * 512**3 / max(time.perf_counter() - start, 1e-9)
        size = round((0.5 * rate / 2) ** (1 / 3) / 256) * 256
        size = max(512, min(2048, size))
        reps, inner = (3 if quick else 5), 1
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        rates.append(inner * 2 * size**3 / (time.perf_counter() - start))
    stat = summary(rates)
    stat.update(size=size, dtype=str(dtype).replace("torch.", ""), peak=max(rates))
    return stat


# --------------------------------------------------------------------------------------------
# Memory


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_setup(experiment, n_genes: int, s: Settings, option: str = "reference") -> XattnRunner:
    pairs, vectors = gene_subset(experiment, n_genes)
    model = make_model(experiment, "cross_attention", vectors, OPTIONS[option])
    runner = XattnRunner(model, pairs, s.batch_size, s.precision, s.device)
    runner.data_for(s.memory_steps)  # warms the index path; the step data is drawn again in run()
    return runner


def memory_child(s: Settings, n_genes: int, option: str = "reference") -> None:
    """Child process (CPU): peak RSS of `memory_steps` training steps over the set-up RSS."""
    import gc

    experiment = load_experiment(s.mirror, "cpu")
    runner = memory_setup(experiment, n_genes, s, option)
    gc.collect()
    hwm_setup = _proc_status_kib("VmHWM")
    rss_before = _proc_status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        hwm_now, rss_now = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
        reset = None not in (hwm_now, rss_now) and hwm_now <= rss_now + 1024
    except OSError:
        reset = False
    seconds = runner.run(s.memory_steps)
    hwm_after = _proc_status_kib("VmHWM")
    baseline = rss_before if reset else hwm_setup
    payload = {
        "n_genes": n_genes, "steps": s.memory_steps, "batch_size": s.batch_size, "reset": reset,
        "rss_before_kib": rss_before, "hwm_setup_kib": hwm_setup, "hwm_after_kib": hwm_after,
        "peak_bytes": (hwm_after - baseline) * 1024, "seconds": seconds,
    }  # fmt: skip
    print(MEMORY_TAG + json.dumps(payload), flush=True)


def measure_memory(experiment, s: Settings, option: str = "reference", reps: int | None = None) -> dict[str, Any]:
    """Peak training memory of cross_attention (with `option`) at 405 and 810 genes; the ratio per repetition."""
    peaks: dict[int, list[float]] = {405: [], 810: []}
    details = []
    for rep in range(reps or s.memory_reps):
        for n_genes in (405, 810):
            log(
                f"memory: {option}, {n_genes} genes, {s.memory_steps} step(s) of {s.batch_size} pairs (repetition {rep + 1})"
            )
            if s.device == "cuda":
                runner = memory_setup(experiment, n_genes, s, option)
                data = runner.data_for(s.memory_steps)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                from xattn.training.trainer import _train_epoch

                runner.epoch += 1
                _train_epoch(runner.model, data, runner.optimizer, runner.config, runner.epoch)
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
                details.append({"n_genes": n_genes, "peak_bytes": peak, "baseline_bytes": base})
                del runner, data
                torch.cuda.empty_cache()
            else:
                cmd = [sys.executable, "-m", "benchmarks.throughput", "--memory-child", str(n_genes),
                       "--device", "cpu", "--batch-size", str(s.batch_size), "--memory-steps", str(s.memory_steps),
                       "--threads", str(s.threads or 2), "--mirror", s.mirror, "--precision", s.precision,
                       "--memory-option", option]  # fmt: skip
                if _SYNTHETIC_FALLBACK:
                    cmd.append("--synthetic-fallback")
                proc = subprocess.run(
                    cmd, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), timeout=900
                )
                payload = tagged(proc.stdout, MEMORY_TAG)
                if proc.returncode != 0 or payload is None:
                    raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
                peak = payload["peak_bytes"]
                details.append(payload)
            peaks[n_genes].append(float(peak))
            log(f"memory: {n_genes} genes: {peak / 2**20:.0f} MiB over the baseline")
    ratios = [b / a for a, b in zip(peaks[405], peaks[810])]
    method = (
        "torch.cuda.max_memory_allocated over memory_allocated after set-up"
        if s.device == "cuda"
        else "child process peak RSS (VmHWM) over its RSS after set-up (VmHWM reset via /proc/self/clear_refs)"
    )
    return {
        "peak_ratio_810_over_405": summary(ratios),
        "peak_bytes_405": summary(peaks[405]),
        "peak_bytes_810": summary(peaks[810]),
        "goal": 2.2,
        "family": "cross_attention",
        "option": option,
        "batch_size": s.batch_size,
        "steps": s.memory_steps,
        "precision": s.precision,
        "method": method,
        "runs": details,
    }


def bench_options(experiment, s: Settings, *, memory: bool) -> dict[str, Any]:
    """Training pairs/s of cross_attention with each option of OPTIONS beside the reference
    design: the same batch and pairs, rounds alternating over the options (order rotating), a
    ratio to the reference per round; with `memory`, each option's peak at 405 vs 810 genes.

    Mixed attention cannot use the region-deduplicated encoding beyond the tokens (nor can the
    reference: the query stream is per pair from the first block on); what it adds is the
    (n_cls + G)^2 self-attention per pair and block, and that is what its ratio measures.
    """
    pairs, vectors = gene_subset(experiment, None)
    runners = {name: XattnRunner(make_model(experiment, "cross_attention", vectors, params), pairs, s.batch_size,
                                 s.precision, s.device) for name, params in OPTIONS.items()}  # fmt: skip
    t_first = {name: min(runner.run(1) for _ in range(s.warmup)) for name, runner in runners.items()}
    n = max(1, min(s.max_batches, math.ceil(s.target_s / max(max(t_first.values()), 1e-6))))
    log(f"options: {n} batch(es) of {s.batch_size} pairs per option and round, {s.rounds} rounds")
    rates: dict[str, list[float]] = {name: [] for name in OPTIONS}
    for round_index in range(s.rounds):
        names = list(OPTIONS)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(n * s.batch_size / runners[name].run(n))
    result: dict[str, Any] = {"batch_size": s.batch_size, "batches_per_round": n, "rounds": s.rounds, "options": {}}
    for name, params in OPTIONS.items():
        ratios = [a / b for a, b in zip(rates[name], rates["reference"])]
        entry = {"params": params, "pairs_per_s": summary(rates[name]), "ratio_to_reference": summary(ratios),
                 "parameters": runners[name].model.num_parameters()}  # fmt: skip
        if memory:
            entry["memory"] = measure_memory(experiment, s, option=name, reps=1)
        result["options"][name] = entry
        log(f"option {name}: {fmt(entry['pairs_per_s'], 1)} pairs/s, {fmt(entry['ratio_to_reference'], 2)} x the reference")
    return result


# --------------------------------------------------------------------------------------------
# Profile


def profile_cross_attention(experiment, s: Settings, steps: int = 1, rows: int = 20) -> dict[str, Any]:
    """torch.profiler over `steps` xattn training steps of cross_attention (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    pairs, vectors = gene_subset(experiment, None)
    runner = XattnRunner(make_model(experiment, "cross_attention", vectors), pairs, s.batch_size, s.precision, s.device)
    runner.run(1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    with profile(activities=activities) as prof:
        seconds = runner.run(steps)
    key = "self_cuda_time_total" if s.device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0) or 0, reverse=True)
    total = sum(getattr(e, key, 0) or 0 for e in events) or 1
    top = [
        {"op": e.key, "self_ms_per_step": (getattr(e, key, 0) or 0) / 1000 / steps,
         "share": (getattr(e, key, 0) or 0) / total, "calls_per_step": e.count / steps}
        for e in events[:rows]
    ]  # fmt: skip
    print(prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)
    return {"steps": steps, "batch_size": s.batch_size, "seconds": seconds, "sort_by": key, "top": top}


# --------------------------------------------------------------------------------------------
# Attention check (GPU script)


def attention_check(experiment, s: Settings) -> dict[str, Any]:
    """FlashAttention (flash_attn) against SDPA (auto and each backend) and explicit attention:
    one forward + backward at the cross_attention default shapes, then model-level training
    pairs/s of cross_attention with each, and the naive reference trainer."""
    attn_mod = importlib.import_module("xattn.models.attention")  # the package re-exports a function of that name
    from xattn.models.cross_attention import CrossAttentionConfig

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        SDPBackend = sdpa_kernel = None

    cuda = s.device == "cuda"
    config = CrossAttentionConfig(n_genes=experiment.data.n_genes)
    B = s.batch_size if cuda else 4
    H, D, lq, lk = config.nhead, config.d_model // config.nhead, config.n_genes + 1, config.n_genes
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=s.device).manual_seed(0)

    def tensor(length: int) -> torch.Tensor:
        return torch.randn(B, H, length, D, device=s.device, dtype=dtype, generator=gen)

    q, k, v = tensor(lq), tensor(lk), tensor(lk)
    grad = tensor(lq)
    with torch.no_grad():
        reference = attn_mod.explicit_attention(q.float(), k.float(), v.float())

    def backend(kind):
        if sdpa_kernel is None:
            return None
        return lambda: sdpa_kernel([getattr(SDPBackend, kind)])

    variants: dict[str, tuple[Callable, Callable | None]] = {
        "flash_attn": (lambda a, b, c: attn_mod.attention(a, b, c, backend="flash"), None),
        "sdpa_auto": (lambda a, b, c: attn_mod.attention(a, b, c, backend="sdpa"), None),
        "sdpa_flash": (lambda a, b, c: attn_mod.attention(a, b, c, backend="sdpa"), backend("FLASH_ATTENTION")),
        "sdpa_efficient": (lambda a, b, c: attn_mod.attention(a, b, c, backend="sdpa"), backend("EFFICIENT_ATTENTION")),
        "sdpa_cudnn": (lambda a, b, c: attn_mod.attention(a, b, c, backend="sdpa"), backend("CUDNN_ATTENTION")),
        "sdpa_math": (lambda a, b, c: attn_mod.attention(a, b, c, backend="sdpa"), backend("MATH")),
        "explicit": (attn_mod.explicit_attention, None),
    }
    kernels: dict[str, Any] = {
        "shape": {"batch": B, "heads": H, "q_len": lq, "k_len": lk, "head_dim": D, "dtype": str(dtype)},
        "flash_attn_installed": attn_mod.FLASH_ATTN_AVAILABLE,
    }
    reps = 5 if cuda else 2
    flops = 4 * B * H * lq * lk * D * 3  # QK^T and AV, forward + backward (3x)
    for name, (fn, ctx) in variants.items():
        if name == "flash_attn" and not (attn_mod.FLASH_ATTN_AVAILABLE and cuda):
            kernels[name] = {
                "absent": "flash_attn is not importable" if not attn_mod.FLASH_ATTN_AVAILABLE else "needs CUDA"
            }
            continue
        if ctx is None and name.startswith("sdpa_") and name != "sdpa_auto":
            kernels[name] = {"absent": "torch.nn.attention.sdpa_kernel is not available"}
            continue
        try:
            with ctx() if ctx else contextlib.nullcontext():
                a, b, c = (t.detach().requires_grad_() for t in (q, k, v))
                out = fn(a, b, c)
                out.backward(grad)  # warm-up
                error = (out.float() - reference).abs().max().item()
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times = []
                for _ in range(reps):
                    a, b, c = (t.detach().requires_grad_() for t in (q, k, v))
                    sync(s.device)
                    start = time.perf_counter()
                    fn(a, b, c).backward(grad)
                    sync(s.device)
                    times.append(time.perf_counter() - start)
                entry = {"ms_fwd_bwd": summary(t * 1000 for t in times), "max_abs_error_vs_fp32": error,
                         "tflops": flops / min(times) / 1e12}  # fmt: skip
                if cuda:
                    entry["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
                kernels[name] = entry
                log(f"attention kernel {name}: {min(times) * 1000:.2f} ms fwd+bwd, max error {error:.2e}")
        except Exception as error:  # noqa: BLE001 - a backend that does not support these shapes
            kernels[name] = {
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            }
            log(f"attention kernel {name}: {kernels[name]['error']}")

    # Model level: cross_attention training pairs/s through the trainer, per attention path.
    pairs, vectors = gene_subset(experiment, None)
    model_level: dict[str, Any] = {}
    paths: dict[str, Callable[[], Any]] = {}
    if attn_mod.FLASH_ATTN_AVAILABLE and cuda:
        paths["flash_attn"] = contextlib.nullcontext
    for name, kind in (("sdpa_auto", None), ("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_math", "MATH")):
        if kind is None or sdpa_kernel is not None:
            paths[name] = backend(kind) if kind else contextlib.nullcontext
    n_batches = 10 if cuda else 1
    for name, ctx in paths.items():
        saved = attn_mod.FLASH_ATTN_AVAILABLE
        if name != "flash_attn":
            attn_mod.FLASH_ATTN_AVAILABLE = False  # the dispatch then takes SDPA
        try:
            with ctx():
                runner = XattnRunner(
                    make_model(experiment, "cross_attention", vectors), pairs, s.batch_size, s.precision, s.device
                )
                runner.run(1)
                rates = [n_batches * s.batch_size / runner.run(n_batches) for _ in range(2)]
            model_level[name] = {"pairs_per_s": summary(rates), "precision": s.precision}
            log(f"model-level {name}: {statistics.fmean(rates):.1f} pairs/s")
        except Exception as error:  # noqa: BLE001
            model_level[name] = {
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            }
            log(f"model-level {name}: {model_level[name]['error']}")
        finally:
            attn_mod.FLASH_ATTN_AVAILABLE = saved
            if cuda:
                torch.cuda.empty_cache()
    naive = NaiveRunner(make_model(experiment, "cross_attention", vectors), pairs, s.batch_size, s.device)
    naive.run(1)
    rates = [n_batches * s.batch_size / naive.run(n_batches) for _ in range(2)]
    model_level["naive_fp32"] = {"pairs_per_s": summary(rates), "precision": "fp32"}
    log(f"model-level naive_fp32: {statistics.fmean(rates):.1f} pairs/s")
    return {"kernels": kernels, "model_level": model_level, "batch_size": s.batch_size}


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
    from xattn.training.trainer import TrainConfig, fit

    process_start = _process_start_time()
    experiment = load_experiment(s.mirror, s.device)
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


# --------------------------------------------------------------------------------------------
# Report


def environment(s: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": s.device,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mode": "quick" if s.quick else "full",
        "dataset": DATASET,
        "split": SPLIT,
        "seed": SEED,
    }
    if s.device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
        info["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    else:
        info["device_name"] = _cpu_name()
        flags = _cpu_flags()
        info["cpu_flags"] = {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}
        with contextlib.suppress(Exception):
            info["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with contextlib.suppress(Exception):
        attn_mod = importlib.import_module("xattn.models.attention")  # the package re-exports a function of that name

        info["flash_attn_installed"] = attn_mod.FLASH_ATTN_AVAILABLE
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def platform_lines(plat: dict[str, Any] | None) -> list[str]:
    if not plat:
        return []
    if "overhead_fraction" not in plat:
        return [f"platform: {plat.get('skipped') or plat.get('error')}"]
    trials = len(plat["plain_trial_s"]["values"])
    lines = [f"platform: {trials} trials of {plat['plain_trial_s']['mean']:.0f}s: study {plat['study_wall_s']:.1f}s, "
             f"plain {plat['plain_wall_s']:.1f}s, overhead {fmt(plat['overhead_fraction'], 3)} (goal < 0.05)"]  # fmt: skip
    tl = plat.get("study_timeline_s", {})
    if "trials_total" in tl:
        lines.append(f"  study: launch -> parent run {tl['launch_to_parent_run']:.1f}s, -> first trial "
                     f"{tl['parent_run_to_first_trial']:.1f}s, trials {tl['trials_total']:.1f}s "
                     f"(plain trials {sum(plat['plain_trial_s']['values']):.1f}s), between trials "
                     f"{tl['between_trials']:.1f}s, last trial -> exit "
                     f"{tl['last_trial_to_parent_end'] + tl['parent_end_to_exit']:.1f}s")  # fmt: skip
    plain_epoch, study_epoch = plat.get("plain_epochs_after_the_first_s"), tl.get("epochs_after_the_first")
    if plain_epoch and study_epoch and plain_epoch.get("mean") and study_epoch.get("mean"):
        lines.append(f"  epochs after a trial's first: plain {fmt(plain_epoch, 2)}s, in the study {fmt(study_epoch, 2)}s "
                     f"(ratio {study_epoch['mean'] / plain_epoch['mean']:.3f})")  # fmt: skip
    parts = plat.get("parts", {})
    if "fixed_s" in parts:
        projected = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in parts["projected_overhead_fraction"].items())
        needed = parts["trials_for_goal"]
        goal = f"under 0.05 from {needed} trials" if needed else "never under 0.05 (the per-trial part alone is over it)"
        lines.append(f"  once per study {parts['fixed_s']:.1f}s, per trial {parts['per_trial_s']:.2f}s "
                     f"({parts['per_trial_fraction']:.3f} of a trial); studies of such trials: {projected}; {goal}")  # fmt: skip
    return lines


def print_report(report: dict[str, Any]) -> None:
    rows = []
    for family in FAMILIES:
        if family in report:
            r = report[family]
            rows.append([family, fmt(r["pairs_per_s"]["xattn"], 1), fmt(r["pairs_per_s"]["naive"], 1),
                         fmt(r["speedup_vs_naive"], 2), f"{r['batch_size']} x {r['batches_per_round']} x {r['rounds']}"])  # fmt: skip
    lines = []
    ca = report.get("cross_attention")
    peaks = report.get("peaks", {})
    if ca and "achieved_flops" in ca:
        lines.append(f"cross_attention: {ca['flops_per_pair_train'] / 1e9:.2f} GFLOP per training pair (model FLOPs), "
                     f"achieved {fmt(ca['achieved_flops'], 1, 1e-9)} GFLOP/s ({ca['precision']['xattn']})")  # fmt: skip
        lines.append(f"  fp32 matmul peak {peaks['fp32']['peak'] / 1e9:.1f} GFLOP/s ({peaks['fp32']['size']}^3): "
                     f"fraction {fmt(ca['fp32_peak_fraction'], 3)}")  # fmt: skip
        lines.append(f"  bf16 matmul peak {peaks['bf16']['peak'] / 1e9:.1f} GFLOP/s ({peaks['bf16']['size']}^3): "
                     f"fraction {fmt(ca['bf16_peak_fraction'], 3)}")  # fmt: skip
        if peaks["bf16"]["peak"] < peaks["fp32"]["peak"]:
            lines.append("  (bf16 is slower than fp32 on this device: it has no bf16 matrix units, so the bf16 "
                         "fraction says nothing about the goal; the fp32 fraction does)")  # fmt: skip
    mem = report.get("memory")
    if mem and "peak_ratio_810_over_405" in mem:
        lines.append(f"memory (cross_attention, batch {mem['batch_size']}): 405 genes {fmt(mem['peak_bytes_405'], 0, 2**-20)} MiB, "
                     f"810 genes {fmt(mem['peak_bytes_810'], 0, 2**-20)} MiB, ratio {fmt(mem['peak_ratio_810_over_405'], 2)} (goal <= 2.2)")  # fmt: skip
    options = report.get("options", {}).get("options", {})
    for name, entry in options.items():
        memory = entry.get("memory", {})
        ratio = f", memory 810/405 genes {fmt(memory['peak_ratio_810_over_405'], 2)}" if "peak_ratio_810_over_405" in memory else ""
        lines.append(f"option {name}: {fmt(entry['pairs_per_s'], 1)} pairs/s, {fmt(entry['ratio_to_reference'], 2)} x the reference{ratio}")
    lines += platform_lines(report.get("platform"))
    title = (f"xattn training throughput on {report['dataset']} - {report['device']} ({report['device_name']}), "
             f"torch {report['torch_version']}, {report['threads']} threads, {report['mode']}")  # fmt: skip
    header = ["family", "xattn pairs/s", "naive pairs/s", "xattn / naive", "batch x n x rounds"]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for name in header:
            table.add_column(name)
        for row in rows:
            table.add_row(*row)
        console = Console()
        console.print(table)
        for line in lines:
            console.print(line, highlight=False)
    except ImportError:
        print(title)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in [header, *rows]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
        for line in lines:
            print(line)
    print(f"(mean ± sd [min, max] over rounds; total {report['wall_s']:.0f}s)", flush=True)


def run_benchmark(args: argparse.Namespace, s: Settings) -> dict[str, Any]:
    from xattn.models.cross_attention import CrossAttentionConfig

    report = environment(s)
    report.update(batch_size=s.batch_size, precision={"xattn": s.precision, "naive": "fp32"})
    log(f"device {s.device} ({report['device_name']}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"loading {DATASET} from {s.mirror}")  # fmt: skip
    experiment = load_experiment(s.mirror, s.device)
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
                        help=f"length of each platform trial, seconds (default {TRIAL_S:.0f}; --quick: six short epochs)")  # fmt: skip
    parser.add_argument("--skip-memory", action="store_true", help="skip the 405/810-gene memory measurement")
    parser.add_argument("--families", help=f"comma-separated subset of {','.join(FAMILIES)} (default: all)")
    parser.add_argument("--skip-options", action="store_true",
                        help=f"skip the cross_attention options beside the reference design ({', '.join(OPTIONS)})")  # fmt: skip
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
    global _SYNTHETIC_FALLBACK
    _SYNTHETIC_FALLBACK = args.synthetic_fallback
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
        report["options"] = bench_options(load_experiment(s.mirror, s.device), s, memory=not args.skip_memory)
    elif args.attention_check:
        report = environment(s)
        report["attention"] = attention_check(load_experiment(s.mirror, s.device), s)
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
