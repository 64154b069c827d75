"""What `benchmarks.throughput` reports besides its measurements: the machine it ran on, and
the printed summary (a rich table when rich is importable, plain text otherwise)."""

from __future__ import annotations

import contextlib
import importlib
import platform
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DATASET, SEED, SPLIT, fmt
from benchmarks.harness import FAMILIES, Settings


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
             f"plain {plat['plain_wall_s']:.1f}s, overhead {fmt(plat['overhead_fraction'], 3)} "
             "(goal < 0.05)"]  # fmt: skip
    tl = plat.get("study_timeline_s", {})
    if "trials_total" in tl:
        lines.append(f"  study: launch -> parent run {tl['launch_to_parent_run']:.1f}s, -> first trial "
                     f"{tl['parent_run_to_first_trial']:.1f}s, trials {tl['trials_total']:.1f}s "
                     f"(plain trials {sum(plat['plain_trial_s']['values']):.1f}s), between trials "
                     f"{tl['between_trials']:.1f}s, last trial -> exit "
                     f"{tl['last_trial_to_parent_end'] + tl['parent_end_to_exit']:.1f}s")  # fmt: skip
    plain_epoch, study_epoch = plat.get("plain_epochs_after_the_first_s"), tl.get("epochs_after_the_first")
    if plain_epoch and study_epoch and plain_epoch.get("mean") and study_epoch.get("mean"):
        lines.append(f"  epochs after a trial's first: plain {fmt(plain_epoch, 2)}s, "
                     f"in the study {fmt(study_epoch, 2)}s "
                     f"(ratio {study_epoch['mean'] / plain_epoch['mean']:.3f})")  # fmt: skip
    parts = plat.get("parts", {})
    if "fixed_s" in parts:
        projected = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in parts["projected_overhead_fraction"].items())
        needed = parts["trials_for_goal"]
        goal = (
            f"under 0.05 from {needed} trials" if needed else "never under 0.05 (the per-trial part alone is over it)"
        )
        lines.append(f"  once per study {parts['fixed_s']:.1f}s, per trial {parts['per_trial_s']:.2f}s "
                     f"({parts['per_trial_fraction']:.3f} of a trial); "
                     f"studies of such trials: {projected}; {goal}")  # fmt: skip
    return lines


def print_report(report: dict[str, Any]) -> None:
    rows = []
    for family in FAMILIES:
        if family in report:
            r = report[family]
            batches = f"{r['batch_size']} x {r['batches_per_round']} x {r['rounds']}"
            rows.append([family, fmt(r["pairs_per_s"]["xattn"], 1), fmt(r["pairs_per_s"]["naive"], 1),
                         fmt(r["speedup_vs_naive"], 2), batches])  # fmt: skip
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
        lines.append(f"memory (cross_attention, batch {mem['batch_size']}): "
                     f"405 genes {fmt(mem['peak_bytes_405'], 0, 2**-20)} MiB, "
                     f"810 genes {fmt(mem['peak_bytes_810'], 0, 2**-20)} MiB, "
                     f"ratio {fmt(mem['peak_ratio_810_over_405'], 2)} (goal <= 2.2)")  # fmt: skip
    options = report.get("options", {}).get("options", {})
    for name, entry in options.items():
        memory = entry.get("memory", {})
        ratio = (
            f", memory 810/405 genes {fmt(memory['peak_ratio_810_over_405'], 2)}"
            if "peak_ratio_810_over_405" in memory
            else ""
        )
        lines.append(
            f"option {name}: {fmt(entry['pairs_per_s'], 1)} pairs/s, "
            f"{fmt(entry['ratio_to_reference'], 2)} x the reference{ratio}"
        )
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
