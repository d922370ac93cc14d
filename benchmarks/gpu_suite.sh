#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one command, for one NVIDIA GPU: bench runs of
# configs/small.py (124M) and configs/medium.py (350M) in bfloat16 at T=1024, the fast-path
# variants that matter for MFU, and one profile of each. Every run's report and JSON line go to
# OUTDIR/NAME.log; OUTDIR/summary.md gathers step time, tokens/s and MFU.
#
#   benchmarks/gpu_suite.sh [OUTDIR] [small|medium|all]
#
# Needs jax with CUDA (pip install -e ".[cuda]"). Each run compiles once (about a minute for
# medium) and times STEPS steps (default 30). Batches: SMALL_BATCH (default 32) and MEDIUM_BATCH
# (default 16) sequences of 1024 per step, one microbatch: the presets' 480 is a global batch for
# many devices (python -m jaxgpt.plan --max_batch says what fits).
set -uo pipefail
cd "$(dirname "$0")/.." || exit
OUTDIR=${1:-runs/gpu_suite}
WHICH=${2:-all}
STEPS=${STEPS:-30}
SMALL=(--config configs/small.py --config.train.batch_size="${SMALL_BATCH:-32}")
MEDIUM=(--config configs/medium.py --config.train.batch_size="${MEDIUM_BATCH:-16}")
PY=${PYTHON:-python}
mkdir -p "$OUTDIR"

run() {
    local name=$1
    shift
    echo "== $name: $*"
    "$PY" -m jaxgpt.bench --steps "$STEPS" --warmup 5 "$@" 2>&1 | tee "$OUTDIR/$name.log" | tail -n 16
}

if [[ $WHICH == small || $WHICH == all ]]; then
    run small "${SMALL[@]}"
    run small_remat_dots "${SMALL[@]}" --config.model.remat=dots
    run small_xla_attention "${SMALL[@]}" --config.model.attention=xla
    run small_loss_chunk "${SMALL[@]}" --config.model.loss_chunk=256
    run small_profile "${SMALL[@]}" --profile "$OUTDIR/trace_small"
fi
if [[ $WHICH == medium || $WHICH == all ]]; then
    run medium "${MEDIUM[@]}"
    run medium_remat_dots "${MEDIUM[@]}" --config.model.remat=dots
    run medium_profile "${MEDIUM[@]}" --profile "$OUTDIR/trace_medium"
fi

# One table from every run's JSON line (the last line of its log).
"$PY" - "$OUTDIR" <<'EOF'
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
rows = ["| run | step ms | tokens/s | model TFLOP/s | MFU | device |", "|---|---|---|---|---|---|"]
for log in sorted(out.glob("*.log")):
    lines = log.read_text().strip().splitlines()
    try:
        r = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        rows.append(f"| {log.stem} | failed: see {log.name} | | | | |")
        continue
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    rows.append(
        f"| {log.stem} | {r['median_step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
        f"{r['model_tflops_per_s']:.1f} | {mfu} | {r['device_kind']} |"
    )
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
