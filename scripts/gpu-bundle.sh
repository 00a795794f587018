#!/usr/bin/env bash
# Builds a self-contained folder to run rqtree's GPU checks on a machine with a GPU and no
# Rust: the release test binaries and the `rqtree` binary, built with `--features cuda` and
# the kernels embedded (RQTREE_REQUIRE_NVCC=1), the PyTorch baseline, the comparison script
# and a run.sh. x86_64 Linux; the GPU machine needs the NVIDIA driver (CUDA 13) and, for the
# baseline, python3 with PyTorch.
#
#   scripts/gpu-bundle.sh            # -> target/gpu-bundle/rqtree-gpu/ (+ .tar.gz)
#   # on the GPU machine:
#   OUT=/some/dir rqtree-gpu/run.sh  # logs and JSON in $OUT (default ./out)
#   OUT=/some/dir rqtree-gpu/profile.sh  # host trace and ncu kernel profiles (gpu-profile.sh)
#   OUT=/some/dir rqtree-gpu/sanitize.sh # compute-sanitizer racecheck/synccheck/memcheck (gpu-sanitize.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="$ROOT/target/gpu-bundle/rqtree-gpu"
export RQTREE_REQUIRE_NVCC=1
export CARGO_TERM_COLOR=never

scripts/install-cuda-toolchain.sh >/dev/null

echo "gpu-bundle: building release test binaries (features cuda)" >&2
MSGS="$(mktemp)"
trap 'rm -f "$MSGS"' EXIT
cargo test --release --features cuda --no-run --message-format=json >"$MSGS"
echo "gpu-bundle: building the rqtree binary (features cuda)" >&2
cargo build --release --features cuda --bin rqtree --message-format=json >>"$MSGS"

rm -rf "$DEST"
mkdir -p "$DEST/tests" "$DEST/bin" "$DEST/benches" "$DEST/scripts"
# Test executables: compiler artifacts built in test mode. Named after their target
# (`lib` for the library's unit tests).
python3 - "$MSGS" "$DEST" <<'PY'
import json, shutil, sys
msgs, dest = sys.argv[1], sys.argv[2]
seen = set()
for line in open(msgs):
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"]
    if m["profile"]["test"]:
        name = "lib" if "lib" in kind else m["target"]["name"]
        if name in seen:
            raise SystemExit(f"gpu-bundle: two test binaries named {name}")
        seen.add(name)
        shutil.copy2(m["executable"], f"{dest}/tests/{name}")
    elif "bin" in kind and m["target"]["name"] == "rqtree":
        shutil.copy2(m["executable"], f"{dest}/bin/rqtree")
if "lib" not in seen or "backends" not in seen:
    raise SystemExit(f"gpu-bundle: expected the lib and backends test binaries, got {sorted(seen)}")
print("gpu-bundle: test binaries: " + " ".join(sorted(seen)), file=sys.stderr)
PY
[[ -x "$DEST/bin/rqtree" ]] || { echo "gpu-bundle: the rqtree binary was not built" >&2; exit 1; }
strip "$DEST"/bin/* "$DEST"/tests/* 2>/dev/null || true
cp benches/torch_baseline.py "$DEST/benches/"
cp scripts/compare_bench.py "$DEST/scripts/"
cp scripts/gpu-profile.sh "$DEST/profile.sh"
cp scripts/gpu-sanitize.sh "$DEST/sanitize.sh"
git rev-parse HEAD >"$DEST/COMMIT" 2>/dev/null || echo unknown >"$DEST/COMMIT"

cat >"$DEST/run.sh" <<'RUN'
#!/usr/bin/env bash
# rqtree GPU checks (made by scripts/gpu-bundle.sh). Needs the NVIDIA driver; python3 with
# PyTorch for the baseline. Writes every log to $OUT (default ./out) and prints a comparison
# table last. Environment:
#   OUT=dir          where logs go (default ./out)
#   REQUIRE_GPU=1    (default) a missing GPU fails the GPU tests; REQUIRE_GPU= lets them SKIP
#   ALL_TESTS=1      also run the CPU-only test binaries (files, cli, reference, ...)
#   BENCH_ARGS=...   arguments of both benches (default --targets)
#   STEP_TIMEOUT=s   limit of each test binary and each bench (default 300 s)
#   TEST_FILTER=...  name filter of the lib and backends tests (default `cuda`: the emu and
#                    reference cases are CI's; TEST_FILTER= runs them all)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export REQUIRE_GPU="${REQUIRE_GPU-1}"
BENCH_ARGS="${BENCH_ARGS:---targets}"
LIMIT="${STEP_TIMEOUT:-300}"
FILTER="${TEST_FILTER-cuda}"
export RQTREE_BIN="$HERE/bin/rqtree"
status=0
note() { echo "== $*" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"
note "rqtree $(cat "$HERE/COMMIT") on $(hostname), REQUIRE_GPU=${REQUIRE_GPU:-<unset>}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
  note "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
else
  note "nvidia-smi not found: no NVIDIA driver on this machine?"
fi

run_tests() { # name [filter]
  local t="$1" start=$SECONDS
  # Test binaries run from a scratch folder (some tests write temporary files).
  # shellcheck disable=SC2086
  (cd "$OUT" && timeout "$LIMIT" "$HERE/tests/$t" ${2:-} --test-threads=4 --show-output) >"$OUT/test-$t.log" 2>&1
  local rc=$?
  local summary skips
  summary="$(grep -E '^test result:' "$OUT/test-$t.log" | tail -1)"
  skips="$(grep -c '^SKIP' "$OUT/test-$t.log" || true)"
  if [[ $rc -ne 0 ]]; then
    { grep -m1 'REQUIRE_GPU=1 but' "$OUT/test-$t.log" || grep -m1 -A1 'panicked' "$OUT/test-$t.log"; } |
      tee -a "$OUT/summary.txt"
  fi
  if [[ $rc -eq 0 ]]; then note "PASS tests/$t ${2:-}: $summary (SKIP lines: $skips; $((SECONDS - start)) s)"
  else note "FAIL tests/$t (exit $rc): ${summary:-see $OUT/test-$t.log}"; status=1; fi
}
GPU_TESTS=(lib backends)
for t in "${GPU_TESTS[@]}"; do run_tests "$t" "$FILTER"; done
if [[ "${ALL_TESTS:-0}" == 1 ]]; then
  for f in "$HERE"/tests/*; do
    t="$(basename "$f")"
    [[ " ${GPU_TESTS[*]} " == *" $t "* ]] || run_tests "$t"
  done
fi

start=$SECONDS
# shellcheck disable=SC2086
timeout "$LIMIT" "$HERE/bin/rqtree" bench --backend cuda $BENCH_ARGS --json >"$OUT/bench-rqtree.json" 2>"$OUT/bench-rqtree.log"
rc=$?
if [[ $rc -eq 0 ]]; then note "rqtree bench: $OUT/bench-rqtree.json ($((SECONDS - start)) s)"
else note "FAIL rqtree bench (exit $rc): $(tail -1 "$OUT/bench-rqtree.log")"; status=1; fi

start=$SECONDS
# shellcheck disable=SC2086
timeout "$LIMIT" python3 "$HERE/benches/torch_baseline.py" $BENCH_ARGS --json >"$OUT/bench-torch.json" 2>"$OUT/bench-torch.log"
rc=$?
if [[ $rc -eq 0 ]]; then note "torch baseline: $OUT/bench-torch.json ($((SECONDS - start)) s)"
else note "torch baseline did not run (exit $rc): $(tail -1 "$OUT/bench-torch.log")"; fi

echo
python3 "$HERE/scripts/compare_bench.py" "$OUT/bench-rqtree.json" "$OUT/bench-torch.json" \
  2>&1 | tee "$OUT/compare.txt"
exit $status
RUN
chmod +x "$DEST/run.sh"

du -sh "$DEST" >&2
tar -C "$(dirname "$DEST")" -czf "$DEST.tar.gz" "$(basename "$DEST")"
size=$(stat -c %s "$DEST.tar.gz")
echo "gpu-bundle: $DEST ($(du -sb "$DEST" | cut -f1) bytes; $DEST.tar.gz $size bytes)" >&2
if (( $(du -sb "$DEST" | cut -f1) > 48 * 1024 * 1024 )); then
  echo "gpu-bundle: the bundle exceeds 48 MiB" >&2
  exit 1
fi
