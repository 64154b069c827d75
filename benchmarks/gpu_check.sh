#!/usr/bin/env bash
# GPU checks of the throughput issue, for one CUDA GPU (sized for an H200: about 4 minutes).
#
#   bash benchmarks/gpu_check.sh [OUT.json]        # default: $OUT/gpu_check.json, else ./gpu_check.json
#
# Writes one JSON file with four sections (each under its own timeout; a section that fails is
# recorded with the tail of its log and the others still run; logs go beside the JSON in
# gpu_check_logs/: environment, throughput, attention and packing .log):
#   environment  python, torch, CUDA, GPU, which optional packages import
#   throughput   python -m benchmarks.throughput --device cuda --skip-platform: xattn's trainer
#                (bf16 autocast) against the naive fp32 reference for every attention family,
#                cross_attention FLOP/s against measured bf16/fp32 matmul peaks, peak memory at
#                405 vs 810 genes (torch.cuda.max_memory_allocated)
#   attention    python -m benchmarks.throughput --attention-check: FlashAttention (the flash_attn
#                package, when importable; else reported absent) against SDPA (auto, and each
#                backend forced with torch.nn.attention.sdpa_kernel: flash, efficient, cudnn,
#                math) and explicit attention, per kernel (forward + backward at the model's
#                shapes, error against fp32) and per model (cross_attention training pairs/s),
#                plus the naive reference trainer
#   packing      four short identical training runs (fit of cross_attention for $PACKING_EPOCHS
#                epochs) as four concurrent processes on the one GPU, against the same four one
#                after another. Ray is not installed on the GPU machine, so this packs plain
#                processes - what fractional-GPU Ray trials (resources.gpus: 0.25) do, minus
#                Ray's own scheduling.
#
# Installs nothing. Data: $XATTN_DATA_MIRROR when set, else ../shared/data (relative to the
# repository root); without hcp-s100 there, a synthetic connectome of the same shape (100 regions
# x 810 genes) stands in, and the JSON says so under "data". Python: $PYTHON, else .venv/bin/python, else python3.
# Knobs for trying it elsewhere: GPU_CHECK_DEVICE (default cuda), THROUGHPUT_ARGS (extra
# arguments for the throughput section), PACKING_EPOCHS (default 12), PACKING_ARGS.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO="$PWD"
OUT_JSON="${1:-${OUT:-.}/gpu_check.json}"
mkdir -p "$(dirname "$OUT_JSON")"
OUT_JSON="$(cd "$(dirname "$OUT_JSON")" && pwd)/$(basename "$OUT_JSON")"
LOGS="$(dirname "$OUT_JSON")/gpu_check_logs"
mkdir -p "$LOGS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export XATTN_DATA_MIRROR="${XATTN_DATA_MIRROR:-../shared/data}"
if [ -d "$XATTN_DATA_MIRROR" ]; then XATTN_DATA_MIRROR="$(cd "$XATTN_DATA_MIRROR" && pwd)"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=""
for candidate in ${PYTHON:-} .venv/bin/python python3 python; do  # the first one that imports torch
    if command -v "$candidate" > /dev/null 2>&1 && "$candidate" -c "import torch" > /dev/null 2>&1; then
        PY="$candidate"
        break
    fi
done
if [ -z "$PY" ]; then echo "no python with torch found" >&2; PY=python3; fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
EPOCHS="${PACKING_EPOCHS:-12}"
SECONDS=0
section() { echo "== [${SECONDS}s] $*"; }

section "environment ($PY, data $XATTN_DATA_MIRROR)"
"$PY" - "$XATTN_DATA_MIRROR" > "$WORK/environment.json" 2> "$LOGS/environment.log" <<'EOF'
import importlib, json, os, platform, sys
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "data_mirror": sys.argv[1], "data_mirror_exists": os.path.isdir(os.path.join(sys.argv[1], "enigma-extra"))}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                    cudnn=torch.backends.cudnn.version())
except Exception as error:
    info["torch_error"] = repr(error)
modules = {}
for name in ("flash_attn", "ray", "mlflow", "optuna", "rich", "pandas", "scipy", "pydantic", "yaml", "pooch", "safetensors"):
    try:
        module = importlib.import_module(name)
        modules[name] = getattr(module, "__version__", "present")
    except Exception as error:
        modules[name] = None if isinstance(error, ImportError) else f"error: {error!r}"[:200]
info["modules"] = modules
try:
    import xattn.experiment  # noqa: F401
    info["xattn_imports"] = True
except Exception as error:
    info["xattn_imports"] = f"{type(error).__name__}: {error}"
print(json.dumps(info))
EOF
cat "$WORK/environment.json"

section "throughput (python -m benchmarks.throughput --device $DEVICE --skip-platform)"
# shellcheck disable=SC2086
timeout 210 "$PY" -m benchmarks.throughput --device "$DEVICE" --skip-platform --synthetic-fallback --json "$WORK/throughput.json" \
    ${THROUGHPUT_ARGS:-} > "$LOGS/throughput.log" 2>&1
echo $? > "$WORK/throughput.rc"
tail -n 25 "$LOGS/throughput.log"

section "attention backends (--attention-check)"
timeout 120 "$PY" -m benchmarks.throughput --device "$DEVICE" --attention-check --synthetic-fallback --json "$WORK/attention.json" \
    > "$LOGS/attention.log" 2>&1
echo $? > "$WORK/attention.rc"
tail -n 20 "$LOGS/attention.log"

section "packing: 4 training runs one after another"
SEQ_START=$(date +%s.%N)
for k in 1 2 3 4; do
    # shellcheck disable=SC2086
    timeout 120 "$PY" -m benchmarks.throughput --device "$DEVICE" --packing-worker --synthetic-fallback --epochs "$EPOCHS" \
        --json "$WORK/sequential_$k.json" ${PACKING_ARGS:-} > "$LOGS/sequential_$k.log" 2>&1
done
SEQ_END=$(date +%s.%N)
section "packing: the same 4 runs as concurrent processes on one GPU"
PAR_START=$(date +%s.%N)
for k in 1 2 3 4; do
    # shellcheck disable=SC2086
    timeout 240 "$PY" -m benchmarks.throughput --device "$DEVICE" --packing-worker --synthetic-fallback --epochs "$EPOCHS" \
        --json "$WORK/concurrent_$k.json" ${PACKING_ARGS:-} > "$LOGS/concurrent_$k.log" 2>&1 &
done
wait
PAR_END=$(date +%s.%N)

section "summary -> $OUT_JSON"
"$PY" - "$WORK" "$LOGS" "$OUT_JSON" "$SEQ_START" "$SEQ_END" "$PAR_START" "$PAR_END" "$SECONDS" <<'EOF'
import json, sys
from pathlib import Path

work, logs, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
seq_start, seq_end, par_start, par_end, seconds = map(float, sys.argv[4:9])


def tail(name, lines=40):
    path = logs / name
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


def section(name):
    path, rc = work / f"{name}.json", work / f"{name}.rc"
    code = int(rc.read_text()) if rc.exists() else None
    if code == 0 and path.exists():
        return json.loads(path.read_text())
    return {"error": f"exit code {code}" + (" (timeout)" if code == 124 else ""), "log_tail": tail(f"{name}.log")}


def workers(kind):
    runs, failed = [], []
    for k in range(1, 5):
        path = work / f"{kind}_{k}.json"
        if path.exists():
            runs.append(json.loads(path.read_text())["packing_worker"])
        else:
            failed.append({"worker": k, "log_tail": tail(f"{kind}_{k}.log", 20)})
    return runs, failed


report = {"script": "benchmarks/gpu_check.sh", "environment": json.loads((work / "environment.json").read_text() or "{}")}
report["throughput"] = section("throughput")
report["attention"] = section("attention")
sequential, seq_failed = workers("sequential")
concurrent, par_failed = workers("concurrent")
packing = {
    "note": "Ray is not installed on this machine: four plain processes share the GPU (as fractional-GPU trials would)",
    "runs": 4, "sequential_wall_s": seq_end - seq_start, "concurrent_wall_s": par_end - par_start,
    "speedup_wall": (seq_end - seq_start) / (par_end - par_start),
    "failed": {"sequential": seq_failed, "concurrent": par_failed},
}
if len(sequential) == 4 and len(concurrent) == 4:
    pairs = sum(r["train_pairs"] for r in sequential)
    seq_train = sum(r["train_end"] - r["train_start"] for r in sequential)
    par_train = max(r["train_end"] for r in concurrent) - min(r["train_start"] for r in concurrent)
    packing.update(
        epochs=sequential[0]["epochs"], batch_size=sequential[0]["batch_size"], precision=sequential[0]["precision"],
        training_pairs_per_s_sequential=pairs / seq_train,
        training_pairs_per_s_concurrent=pairs / par_train,
        speedup_training=seq_train / par_train,
        train_s_each_sequential=[r["train_end"] - r["train_start"] for r in sequential],
        train_s_each_concurrent=[r["train_end"] - r["train_start"] for r in concurrent],
        startup_s_each_sequential=[r["train_start"] - r["process_start"] for r in sequential],
    )
report["packing"] = packing
report["wall_s"] = seconds
out.write_text(json.dumps(report, indent=2, default=str))
try:
    tp = report["throughput"]
    for family in ("cross_attention", "shared_self_attention", "shared_self_attention_pooling", "shared_self_attention_gene2vec"):
        if family in tp:
            r = tp[family]
            print(f"{family}: xattn {r['pairs_per_s']['xattn']['mean']:.0f} pairs/s, naive {r['pairs_per_s']['naive']['mean']:.0f}, "
                  f"speedup {r['speedup_vs_naive']['mean']:.2f}")
    if "cross_attention" in tp:
        print(f"cross_attention bf16 peak fraction {tp['cross_attention']['bf16_peak_fraction']['mean']:.3f}, "
              f"memory ratio {tp['memory']['peak_ratio_810_over_405']['mean']:.2f}")
    print(f"packing speedup: wall {packing['speedup_wall']:.2f}, training {packing.get('speedup_training', float('nan')):.2f}")
except Exception as error:  # noqa: BLE001 - the JSON is written; this only shortens the printout
    print(f"(summary printout incomplete: {error!r})")
print(f"wrote {out}")
EOF
# One log for the eight packing runs (the failed ones' tails are in the JSON already).
for f in "$LOGS"/sequential_*.log "$LOGS"/concurrent_*.log; do
    [ -f "$f" ] && { echo "==> $(basename "$f")"; cat "$f"; }
done > "$LOGS/packing.log"
rm -f "$LOGS"/sequential_*.log "$LOGS"/concurrent_*.log
section "done"
