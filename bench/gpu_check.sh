#!/usr/bin/env bash
# The whole GPU check in one call, for a bare GPU machine (H100/H200 with torch, triton, nvcc and
# pytest installed, no network): build splatkern for sm_90, check the CUDA kernels' SASS, run the
# GPU tests, run the GPU benchmarks (splat_render's, then stroke_render's), then the Triton block
# sweep with the time left. Every step has a
# time limit, is logged, and a failure does not stop the next step. Run from anywhere:
#
#   bash bench/gpu_check.sh
#
# Results, written as they come so that a run cut short keeps what it measured, go to
# ${OUT:-bench/results}/<device>/: in gpu/ (where bench/run.py puts its gpu preset) the log, with
# nvidia-smi in it (and stroke_render's results, JSON and table), and the benchmark's
# JSON/Markdown/plots, 7 files; in triton_sweep/ the sweep's JSON alone, as the device tool brings
# back 8 files (`python bench/triton_sweep.py --report DIR`
# renders its Markdown). GPU_CHECK_BUDGET_S (default 480) bounds the whole run;
# PYTHON (default python3) picks the interpreter. Tests run in parallel processes (pytest-xdist)
# and under a per-test time limit (pytest-timeout) where those plugins are installed.
set -u
cd "$(dirname "$0")/.."

BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
PYTHON=${PYTHON:-python3}
SCRATCH=$(mktemp -d)
export PYTHON PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SPLATKERN_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton"

device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
device_dir=$("$PYTHON" -c 'import sys; from bench import results_folder_name as f; print(f(sys.argv[1]))' \
  "${device:-unknown-gpu}" || echo unknown-gpu)
OUT_DIR="${OUT:-bench/results}/$device_dir/gpu"
SWEEP_DIR="${OUT:-bench/results}/$device_dir/triton_sweep"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"

say() { echo "[gpu_check +$((SECONDS))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - SECONDS)); }

declare -a SUMMARY
# run_step NAME LIMIT_S CMD...: runs CMD under `timeout`, tees its output to the log, records the result.
run_step() {
  local name=$1 limit=$2
  shift 2
  if ((limit < 20)); then
    say "SKIP $name: only ${limit}s of the ${BUDGET_S}s budget left for it"
    SUMMARY+=("$(printf '%-10s %-8s %5s' "$name" skipped -)")
    return 0
  fi
  say "START $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]} status=ok
  ((rc == 124 || rc == 137)) && status=timeout
  ((rc != 0 && rc != 124 && rc != 137)) && status="rc=$rc"
  say "END $name: $status after $((SECONDS - t0))s"
  SUMMARY+=("$(printf '%-10s %-8s %5ss' "$name" "$status" "$((SECONDS - t0))")")
}

backends() { "$PYTHON" -c "import splatkern; print(' '.join(splatkern.available_backends('cuda')))" 2>>"$LOG"; }

has_module() { "$PYTHON" -c "import $1" 2>/dev/null; }
PYTEST_ARGS=(-q -rs -p no:cacheprovider)
has_module xdist && PYTEST_ARGS+=(-n 6)
has_module pytest_timeout && PYTEST_ARGS+=(--timeout 180)

say "device: ${device:-none found}; results in $OUT_DIR; budget ${BUDGET_S}s"
run_step info 60 bash -c "nvidia-smi; command -v nvcc && nvcc --version | tail -n 2;
  '$PYTHON' -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())';
  '$PYTHON' -c 'import triton; print(\"triton\", triton.__version__)'"
# Keep about two minutes each for the tests and the benchmarks.
# The editable install leaves _C beside the sources (what PYTHONPATH above imports); where it
# does not, build in place.
run_step build $(($(left) - 240 < 300 ? $(left) - 240 : 300)) bash -c \
  '"$PYTHON" -m pip install --no-build-isolation --no-deps -e . && ls splatkern/_C*.so ||
   "$PYTHON" setup.py build_ext --inplace'
say "backends on cuda: $(backends)"
# Whether this machine's ptxas kept the forward's loop in its predicated form and the backward free of
# spills (README, GPU section).
run_step sass 60 "$PYTHON" -m pytest tests/test_cuda_sass.py -q -rs -p no:cacheprovider
run_step gpu-tests $(($(left) - 150 < 240 ? $(left) - 150 : 240)) \
  "$PYTHON" -m pytest tests -m gpu "${PYTEST_ARGS[@]}"
run_step bench $(($(left) - 165 < 300 ? $(left) - 165 : 300)) \
  "$PYTHON" bench/run.py --preset gpu --out "$OUT_DIR"
# Into the log: the folder of results is full.
run_step strokes $(($(left) - 15 < 150 ? $(left) - 15 : 150)) bash -c \
  '"$PYTHON" bench/strokes.py --device cuda --out "$0" && cat "$0/results.json"' "$SCRATCH/strokes"
# The sweep rewrites its JSON after every size (the issue's two target sizes first) and starts no
# size after its own budget; a size cut off by the step's limit is lost, the ones before it are kept.
run_step sweep $(($(left) - 10)) "$PYTHON" bench/triton_sweep.py --out "$SCRATCH/sweep" --budget-s $(($(left) - 60))
if [ -f "$SCRATCH/sweep/triton_sweep.json" ]; then
  mkdir -p "$SWEEP_DIR" && cp "$SCRATCH/sweep/triton_sweep.json" "$SWEEP_DIR/"
fi

say "summary (device: ${device:-none}):"
printf '  %s\n' "${SUMMARY[@]}" | tee -a "$LOG"
ls -l "$OUT_DIR" | tee -a "$LOG"
rm -rf "$SCRATCH"
printf '%s\n' "${SUMMARY[@]}" | grep -qE ' (timeout|rc=[0-9]+) ' && exit 1
exit 0
