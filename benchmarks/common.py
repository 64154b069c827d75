"""What the benchmark modules share: the dataset and split they measure on, progress lines,
summary statistics, and how a child process is started and read back."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATASET = "hcp-s100"
SPLIT = {"method": "spatial", "folds": 5, "fold": 0}
SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[1]
MEMORY_TAG = "XATTN_BENCH_MEMORY "
PLAIN_TAG = "XATTN_BENCH_PLAIN "
PACKING_TAG = "XATTN_BENCH_PACKING "

START = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since start."""
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Statistics


def summary(values: Iterable[float]) -> dict[str, Any]:
    """{"mean", "sd", "min", "max", "n", "values"}; sd is the sample sd (null for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "mean": statistics.fmean(vals),
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def finite(obj: Any) -> Any:
    """NaN and infinities become None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def fmt(stat: dict[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    """A summary as "mean ± sd [min, max]", scaled; "-" for none."""
    if not stat or stat.get("mean") is None:
        return "-"
    mean = stat["mean"] * scale
    sd = stat.get("sd")
    text = f"{mean:.{digits}f}"
    if sd is not None:
        text += f" ± {sd * scale:.{digits}f}"
    if stat.get("n", 0) > 1:
        text += f" [{stat['min'] * scale:.{digits}f}, {stat['max'] * scale:.{digits}f}]"
    return text


def child_env() -> dict[str, str]:
    """The environment of a benchmark child process: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def tagged(stdout: str, tag: str) -> dict[str, Any] | None:
    """The JSON a child printed after `tag` (its last such line), or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag):
            return json.loads(line[len(tag) :])
    return None
