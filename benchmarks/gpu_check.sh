#!/usr/bin/env bash
# Verify mlcvlab's GPU path on one GPU, in one command, without network access (issue #22).
#
#   bash benchmarks/gpu_check.sh                  # on a GPU machine: < 8 minutes
#   DRY_RUN=1 bash benchmarks/gpu_check.sh        # anywhere: CUDA simulator, tiny sizes
#
# Uses the machine's own Python ($PYTHON, default python3) with numba-cuda and CuPy (and
# PyTorch where installed); installs this checkout with --no-deps --no-build-isolation.
# Stages: (a) environment, (b) install, (c) kernel tests without the simulator (the handout
# kernels, the GPU twins of mlcvlab.gpu, the engine checks) and the PTX compile test, (d) nn4,
# mlp, lenet5 and resnet20 trained for $STEPS steps on the device (model.to("cuda"); nn4 and
# mlp also on the --dist cuda workers) and on the CPU from the same seed, losses compared
# step by step, (e) compute-sanitizer memcheck and racecheck on a small step of each GPU path,
# (f) samples/s per model (CPU, device, torch CUDA).
# Writes $OUT/gpu_check_summary.md (default OUT: ./gpu_check_out); exit status 1 when a
# stage failed. The Python side is benchmarks/gpu_check.py.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu_check_out}"
DRY="${DRY_RUN:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT/stages.jsonl"
CHECK=("$PY" "$ROOT/benchmarks/gpu_check.py")
FLAGS=(--out "$OUT")
if [ "$DRY" = "1" ]; then
    export NUMBA_ENABLE_CUDASIM=1
    FLAGS+=(--dry-run)
else
    export NUMBA_ENABLE_CUDASIM=0
fi
record() { "${CHECK[@]}" record --out "$OUT" -- "$@"; }
started=$(date +%s)

# (a) environment
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    record environment nvidia-smi pass "$(nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader 2>&1 | head -n 4 | tr '\n' ';')"
elif [ "$DRY" = "1" ]; then
    record environment nvidia-smi skip "absent (dry run)"
else
    record environment nvidia-smi fail "nvidia-smi not found: is this a GPU machine?"
fi
"${CHECK[@]}" env "${FLAGS[@]}"

# (b) install
if [ "$DRY" = "1" ] && PYTHONPATH="$ROOT/src" "$PY" -c "import mlcvlab" >/dev/null 2>&1; then
    record install "pip install" skip "dry run: mlcvlab already importable from $ROOT/src"
elif "$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT" > "$OUT/pip.log" 2>&1; then
    record install "pip install" pass "$("$PY" -c 'import mlcvlab; print(mlcvlab.__version__)')"
else
    record install "pip install" fail "see $OUT/pip.log: $(tail -n 2 "$OUT/pip.log" | tr '\n' ' ')"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

# (c) kernel tests: on the device (the simulator in a dry run), then the PTX compile test
"${CHECK[@]}" kernels "${FLAGS[@]}"
if [ "$DRY" = "1" ]; then
    record kernels "PTX compile (tests/parallel/test_ptx.py)" skip \
        "dry run: run by the test suite (pytest tests/parallel/test_ptx.py)"
elif (cd "$ROOT" && env -u NUMBA_ENABLE_CUDASIM "$PY" -m pytest -q -p no:cacheprovider \
        tests/parallel/test_ptx.py > "$OUT/ptx.log" 2>&1); then
    record kernels "PTX compile (tests/parallel/test_ptx.py)" pass "$(tail -n 1 "$OUT/ptx.log")"
else
    record kernels "PTX compile (tests/parallel/test_ptx.py)" fail \
        "$(tail -n 3 "$OUT/ptx.log" | tr '\n' ' ')"
fi

# (d) device vs CPU training from the same seed
"${CHECK[@]}" compare "${FLAGS[@]}" ${STEPS:+--steps "$STEPS"}

# (e) compute-sanitizer on one small step
if ! command -v compute-sanitizer >/dev/null 2>&1; then
    record sanitizer "memcheck, racecheck" skip \
        "compute-sanitizer not found$([ "$DRY" = "1" ] && echo ' (dry run)')"
else
    for model in nn4 lenet5; do         # the --dist cuda workers; the engine
        for tool in memcheck racecheck; do
            log="$OUT/sanitizer_${tool}_$model.log"
            compute-sanitizer --tool "$tool" --error-exitcode 3 "${CHECK[@]}" step \
                --model "$model" > "$log" 2>&1
            rc=$?
            summary="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)"
            if [ $rc -eq 0 ]; then
                record sanitizer "$tool $model" pass "${summary:-no errors} (one small step)"
            else
                record sanitizer "$tool $model" fail "exit $rc: ${summary:-see $log}"
            fi
        done
    done
fi

# (f) samples/s
"${CHECK[@]}" speed "${FLAGS[@]}"

elapsed=$(( $(date +%s) - started ))
echo "${elapsed} s" > "$OUT/elapsed.txt"
"${CHECK[@]}" summary "${FLAGS[@]}"
