"""FLOPs for `benchmarks.throughput` (item 2): the model FLOPs of one cross_attention training
pair, and the device's fp32 and bf16 matmul peaks that its achieved FLOP/s are compared with."""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from benchmarks.common import summary
from benchmarks.harness import sync


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
