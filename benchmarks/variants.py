"""cross_attention variants in `benchmarks.throughput`: its options beside the reference design
(item 5), its attention kernels and backends (--attention-check), and a profile of its steps."""

from __future__ import annotations

import contextlib
import importlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import fmt, log, summary
from benchmarks.harness import OPTIONS, NaiveRunner, Settings, XattnRunner, gene_subset, make_model, sync
from benchmarks.memory import measure_memory


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
        log(
            f"option {name}: {fmt(entry['pairs_per_s'], 1)} pairs/s, "
            f"{fmt(entry['ratio_to_reference'], 2)} x the reference"
        )
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
