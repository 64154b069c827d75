"""The measurement harness of `benchmarks.throughput`: settings, the hcp-s100 experiment, seeded
models, and xattn's trainer timed against the naive reference in alternating rounds."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import DATASET, REPO_ROOT, SEED, SPLIT, log, summary
from xattn.training import TrainConfig, train_epoch

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
    # --synthetic-fallback: without hcp-s100 in the mirror, a synthetic connectome of its shape.
    synthetic_fallback: bool = False

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
            synthetic_fallback=bool(args.synthetic_fallback),
        )


def default_mirror() -> str:
    return os.environ.get("XATTN_DATA_MIRROR") or str(REPO_ROOT.parent / "shared" / "data")


DATA_USED: dict[str, Any] = {}  # which data load_experiment used, for the report's "data"


def load_experiment(mirror: str, device: str, *, synthetic_fallback: bool = False):
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
        if not synthetic_fallback:
            raise
        synthetic = {"regions": 100, "genes": 810, "noise": 0.1, "seed": SEED}
        experiment = _prepare("synthetic", synthetic, None, device)
        DATA_USED.update(dataset="synthetic", synthetic=synthetic, reason=f"{DATASET} unavailable: {error}")
        log(f"{DATASET} unavailable ({error}); using a synthetic connectome of the same shape")
    DATA_USED["prepared_by"] = type(experiment).__module__
    return experiment


def _prepare(dataset: str, synthetic: dict | None, mirror: str | None, device: str):
    from xattn.data.spec import DataSpec
    from xattn.experiment import prepare_experiment

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
    """xattn's trainer: `train_epoch` over a fresh random subset of n x batch training pairs."""

    def __init__(self, model: torch.nn.Module, pairs, batch_size: int, precision: str, device: str) -> None:
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
        data = self.data_for(n_batches)
        self.epoch += 1
        sync(self.device)
        start = time.perf_counter()
        self.last_loss = train_epoch(self.model, data, self.optimizer, self.config, self.epoch)
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
    probe = NaiveRunner(copy.deepcopy(model), pairs, s.batch_size, s.device)
    per_pair = min(probe.run(1) for _ in range(2)) / s.batch_size  # the first pays one-off set-up
    bs = TrainConfig.batch_size
    while bs > s.batch_size and bs * per_pair > s.naive_batch_cap_s:
        bs //= 2
    log(f"{family}: naive {1 / per_pair:.1f} pairs/s at batch {s.batch_size}, so batch {bs} "
        f"(the default {TrainConfig.batch_size}, halved while a naive batch takes over "
        f"{s.naive_batch_cap_s:.0f}s)")  # fmt: skip
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
        f"{family}: warm-up {bs / t_xattn:.1f} pairs/s xattn, {bs / t_naive:.1f} naive; "
        f"{s.rounds} rounds of {n} batch(es)"
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
