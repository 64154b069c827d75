"""Peak training memory of cross_attention at 405 and 810 genes (`benchmarks.throughput`, item 3):
CUDA's allocator peak in this process, or on CPU a child process's peak resident set size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MEMORY_TAG, REPO_ROOT, child_env, log, summary, tagged
from benchmarks.harness import OPTIONS, Settings, XattnRunner, gene_subset, load_experiment, make_model
from xattn.training import train_epoch


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

    experiment = load_experiment(s.mirror, "cpu", synthetic_fallback=s.synthetic_fallback)
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
                f"memory: {option}, {n_genes} genes, {s.memory_steps} step(s) of {s.batch_size} pairs "
                f"(repetition {rep + 1})"
            )
            if s.device == "cuda":
                runner = memory_setup(experiment, n_genes, s, option)
                data = runner.data_for(s.memory_steps)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                runner.epoch += 1
                train_epoch(runner.model, data, runner.optimizer, runner.config, runner.epoch)
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
                if s.synthetic_fallback:
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
