#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, for a machine whose python3 already holds torch with
# CUDA, nvcc and the test dependencies (no installs from the network):
#   1. builds prunekit with its CUDA kernels for the GPU present (editable install),
#   2. runs the kernel tests on it (CPU and CUDA cases),
#   3. runs the CUDA benchmarks (kernels against torch in the same run) and `prunekit bench conv`,
#   4. runs the default job with --device cuda.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [STEPS]   (logs and JSON land in OUT_DIR)
#   STEPS: some of "tests topk masks conv run" (default: all), or "none"; the build always runs.
# Each step has its own time limit, so one that hangs leaves the others their time. The exit
# status is 1 when any step failed (every step still runs), 2 for an unknown step name.
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [STEPS]}
known="tests topk masks conv run"
steps=" ${2:-$known} "
for name in $steps; do
    [[ " $known none " == *" $name "* ]] || { echo "unknown step $name (known: $known)"; exit 2; }
done
wanted() { [[ $steps == *" $1 "* ]]; }
status=0
failed() { echo "!! $1 failed"; status=1; }
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD=1
step() { echo "== $* ($(date +%T))"; }

step environment
{ timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  nvcc --version | tail -2; nproc; } 2>&1 | tee "$out/environment.txt"

step build
# The compiler on PATH, not the one Python's sysconfig names: on a machine whose Python was built
# with another GCC, the extension got its own copy of the C++ streams and crashed on the first
# error message it formatted.
export CC=${CC:-gcc} CXX=${CXX:-g++}
arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
SECONDS=0
if ! TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) PRUNEKIT_CUDA=1 timeout 300 \
        "$py" -m pip install --no-build-isolation --no-deps --no-index -e . >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; exit 1
fi
echo "built for sm_${arch/./} in ${SECONDS}s" | tee -a "$out/environment.txt"
timeout 60 "$py" -c "from prunekit import ops; assert ops.cuda_compiled(), 'no CUDA kernels'" || exit 1

if wanted tests; then
step kernel tests
parallel=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist, where installed
OMP_NUM_THREADS=2 timeout 200 "$py" -m pytest -q -rs -p no:cacheprovider $parallel tests/test_ops.py \
    tests/test_topk_masks.py tests/test_sparse_conv.py tests/test_sparse_conv_grad.py \
    tests/test_sparse_conv_plan.py >"$out/tests.log" 2>&1 || failed "kernel tests"
tail -25 "$out/tests.log"
fi

if wanted topk || wanted masks || wanted conv; then
step benchmarks
files=$(wanted topk && echo benchmarks/test_bench_topk.py)
files+=" "$(wanted masks && echo benchmarks/test_bench_topk_masks.py)
files+=" "$(wanted conv && echo benchmarks/test_bench_sparse_conv.py)
timeout 200 "$py" -m pytest -q -p no:cacheprovider $files -k cuda \
    --benchmark-json="$out/bench.json" >"$out/bench.log" 2>&1 || failed benchmarks
grep -A400 "^summary" "$out/bench.log" | head -200
fi

if wanted conv; then
timeout 120 "$py" -m prunekit bench conv --device cuda --repeats 50 >"$out/bench_conv.txt" 2>&1 \
    || failed "bench conv"
timeout 60 "$py" -m prunekit bench conv --device cuda --batch 8 --repeats 50 \
    >>"$out/bench_conv.txt" 2>&1 || failed "bench conv --batch 8"
cat "$out/bench_conv.txt"
fi

if wanted run; then
step default run on cuda
run_dir=$(mktemp -d)
timeout 150 "$py" -m prunekit run --device cuda --no-progress --out "$run_dir" >"$out/run.log" 2>&1 \
    || failed "default run"
cp "$run_dir/report.json" "$out/" 2>/dev/null
tail -30 "$out/run.log"
fi
step "done (status $status)"
exit $status
