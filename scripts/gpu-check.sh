#!/usr/bin/env bash
# GPU check for a machine with the NVIDIA driver but no Rust toolchain.
#
# Build elsewhere (x86-64, same glibc or older):
#   cargo build --release --features cuda
#   cargo test --release --features cuda --no-run --test preprocess   # prints the test binary path
#   mkdir -p gpu-bundle && cp target/release/ctsentry gpu-bundle/ && cp <test binary> gpu-bundle/preprocess-tests
# then on the GPU machine, from the repository root:
#   scripts/gpu-check.sh gpu-bundle
# It runs `ctsentry doctor`, the GPU tests (the CPU conformance body against the CUDA
# preprocessor), `ctsentry bench --preprocess all`, and prints a short table.
set -uo pipefail
bundle=${1:-gpu-bundle}
out=${OUT:-/tmp/ctsentry-gpu-check}
mkdir -p "$out"
export CTSENTRY_CACHE_DIR=${CTSENTRY_CACHE_DIR:-/tmp/ctsentry-ptx-cache}

# NVRTC is often outside the loader's default path.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(dirname "$(find /usr /opt -name 'libnvrtc.so.1[23]' 2>/dev/null | head -1)" 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done

echo "== device"; nvidia-smi -L 2>&1 | head -4
echo "== ctsentry doctor"; "$bundle/ctsentry" doctor 2>&1
echo "== GPU tests"
if [ -x "$bundle/preprocess-tests" ]; then
  "$bundle/preprocess-tests" cuda --nocapture 2>&1 | tee "$out/gpu-tests.log" | grep -E "^test |test result|max \||notice|panicked"
  tests_rc=${PIPESTATUS[0]}
else
  echo "no test binary in $bundle"; tests_rc=1
fi
echo "== ctsentry bench (first run compiles the kernels with NVRTC)"
"$bundle/ctsentry" bench --preprocess all --batch 256 --json > "$out/bench.json" 2> "$out/bench.err"
bench_rc=$?
cat "$out/bench.err"
"$bundle/ctsentry" bench --preprocess all --batch 256 2>/dev/null | tee "$out/bench.txt"

echo "== summary"
python3 - "$out/bench.json" <<'PY' || cat "$out/bench.json"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'backend':<8}{'max err vs CPU reference':>26}{'slices/s e2e':>14}{'kernel slices/s':>17}{'kernel GB/s':>13}{'copy GB/s':>11}{'% of copy':>11}")
for r in rows:
    k, c = r.get('kernel_gb_per_s'), r.get('copy_gb_per_s')
    f = lambda v, p: '-' if v is None else f"{v:.{p}f}"
    print(f"{r['backend']:<8}{r['max_error_vs_reference']:>26.3e}{r['slices_per_s']:>14.0f}{f(r.get('kernel_slices_per_s'),0):>17}{f(k,1):>13}{f(c,1):>11}{f(None if k is None else 100*k/c,1):>11}")
PY
echo "tests exit $tests_rc, bench exit $bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
