#!/usr/bin/env bash
# GPU check of skillkd, for a CUDA machine with no network: one script, well under 10 minutes.
#
#   OUT=/some/dir bash bench/gpu_check.sh        # results and logs in $OUT (default: bench/results)
#
# Parts (each under its own `timeout`; a failed or timed-out part is reported and the others still run):
#   1. nvidia-smi and the torch / CUDA versions
#   2. python -m pytest -m gpu -q                                   (tests/test_gpu.py and other gpu tests)
#   3. python -m bench.distill_step --size all --device cuda --profile -> $OUT/distill_step_gpu.json
#   4. the dry run of part 5 (`compress --dry-run`: its estimate) -> $OUT/dry_run_gpu.json
#   4b. the latency budget on the GPU: `compress --target-speedup 2 --speed-target cuda --dry-run` fits the cost
#       model by timing pruned shapes of the teacher on the GPU -> $OUT/dry_run_cuda_latency.json (its fit error)
#   5. a short real compression of the demo teacher (quick preset, 200 + 100 steps, 40 s batches)
#                                                                   -> $OUT/compress_gpu.json (the result; events are in the log)
#                                                                      $OUT/compress_gpu_report.json (its speed block
#                                                                      has the student's RTF on the GPU)
# Nothing is installed from the network; wheels in .whl/ (if any) are installed with --no-index.
#
# Environment overrides:
#   TEACHER, AUDIO     teacher and audio of part 4 (default core/assets/demo-teacher, core/assets/demo-audio)
#   GPU_RUN_DIR        run directory of part 4 (default: a fresh temporary directory; its checkpoints are
#                      hundreds of MB, so they are kept out of $OUT, which should hold only a few small files)
#   T_TESTS, T_BENCH, T_COMPRESS   time limits in seconds of parts 2-4 (default 90, 270, 150)
#   BENCH_ARGS         extra arguments for part 3 (e.g. "--steps 5", or "--compile --arch wavlm" to time the
#                      torch.compile path; compiling Base-size models takes minutes: raise T_BENCH)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/bench/results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

TEACHER="${TEACHER:-core/assets/demo-teacher}"
AUDIO="${AUDIO:-core/assets/demo-audio}"
T_TESTS="${T_TESTS:-90}"
T_BENCH="${T_BENCH:-270}"
T_COMPRESS="${T_COMPRESS:-150}"
BENCH_ARGS="${BENCH_ARGS:-}"
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1

declare -A STATUS=()
ORDER=()
started=$SECONDS

section() { printf '\n===== %s (%s, +%ss) =====\n' "$1" "$(date -u +%H:%M:%S)" "$((SECONDS - started))"; }

# run_part NAME LIMIT_S COMMAND...: time-limited; records ok / failed (rc) / timed out, never aborts the script
run_part() {
    local name="$1" limit="$2" rc=0 t0=$SECONDS
    shift 2
    section "$name (limit ${limit}s)"
    echo "+ $*"
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    ORDER+=("$name")
    if [[ $rc -eq 0 ]]; then
        STATUS[$name]="ok ($((SECONDS - t0))s)"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
        STATUS[$name]="TIMED OUT after ${limit}s"
    else
        STATUS[$name]="FAILED rc=$rc ($((SECONDS - t0))s)"
    fi
    echo "----- $name: ${STATUS[$name]}"
}

section "machine"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing local wheels from .whl/ (no index)"
    "$PYTHON" -m pip install --no-index --find-links .whl .whl/*.whl || echo "local wheel install failed"
fi
"$PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
EOF
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "CUDA is not available: stopping"
    exit 2
fi

run_part "gpu tests" "$T_TESTS" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -o timeout=80

# shellcheck disable=SC2086  # BENCH_ARGS is a word list on purpose
run_part "distill step benchmark" "$T_BENCH" \
    "$PYTHON" -m bench.distill_step --size all --device cuda --profile --json "$OUT/distill_step_gpu.json" $BENCH_ARGS

RUN_DIR="${GPU_RUN_DIR:-$(mktemp -d)/gpu-run}"
compress() {
    # stdout: the result as JSON; stderr (JSON event lines, one per step) goes to the log
    "$PYTHON" -m cli compress "$TEACHER" "$AUDIO" --preset quick --stage1-steps 200 --stage2-steps 100 \
        --batch-seconds 40 --device cuda --out "$RUN_DIR" --json >"$OUT/compress_gpu.json"
}
dry_run() {
    "$PYTHON" -m cli compress "$TEACHER" "$AUDIO" --preset quick --stage1-steps 200 --stage2-steps 100 \
        --batch-seconds 40 --device cuda --dry-run --json >"$OUT/dry_run_gpu.json"
}
cuda_latency() {
    SKILLKD_CACHE_DIR="$(mktemp -d)" "$PYTHON" -m cli compress "$TEACHER" "$AUDIO" --preset quick \
        --target-speedup 2 --speed-target cuda --device cuda --dry-run --json >"$OUT/dry_run_cuda_latency.json"
}
export -f compress dry_run cuda_latency
export PYTHON TEACHER AUDIO RUN_DIR OUT
run_part "dry run (estimate of the next part)" 120 bash -c dry_run
run_part "latency cost model on cuda" 120 bash -c cuda_latency
run_part "compress demo teacher" "$T_COMPRESS" bash -c compress
cat "$OUT/compress_gpu.json" 2>/dev/null || true
if [[ -f "$RUN_DIR/student/report.json" ]]; then
    cp "$RUN_DIR/student/report.json" "$OUT/compress_gpu_report.json"
fi
for stage in distill_prune final_distill; do
    if [[ -f "$RUN_DIR/$stage/train_log.jsonl" ]]; then
        echo "$stage, last log line:"
        tail -n 1 "$RUN_DIR/$stage/train_log.jsonl" | cut -c1-600
    fi
done

section "summary"
failed=0
for name in "${ORDER[@]}"; do
    printf '  %-26s %s\n' "$name" "${STATUS[$name]}"
    [[ "${STATUS[$name]}" == ok* ]] || failed=1
done
echo "total $((SECONDS - started))s; results in $OUT"
exit "$failed"
