#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, cargo-fuzz + libFuzzer) and prints one line per target:
#   PASS fuzz TARGET: N execs, 0 crashes     or     FAIL fuzz TARGET: ...
# Short form (CI):   scripts/fuzz.sh [SECONDS]          each target SECONDS (default 20)
# Full form:         scripts/fuzz.sh --runs N [TARGET...] each target N executions
# The committed seeds (fuzz/corpus/TARGET) are read, never written: what the fuzzer
# finds goes to target/fuzz-corpus/TARGET, a crashing input to target/fuzz-artifacts/.
set -uo pipefail
cd "$(dirname "$0")/.."
limit=(-max_total_time=20)
case "${1:-}" in
  --runs) limit=(-runs="$2"); shift 2 ;;
  '' | -*) ;;
  *) limit=(-max_total_time="$1"); shift ;;
esac
if ! command -v cargo-fuzz > /dev/null; then
  cargo install --locked cargo-fuzz || { echo "FAIL fuzz: cargo-fuzz cannot be installed"; exit 1; }
fi
# libFuzzer needs nightly codegen flags; the stable toolchain accepts them so.
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
mkdir -p target
if ! cargo fuzz build --fuzz-dir fuzz --target-dir target/fuzz -s none > target/fuzz-build.log 2>&1; then
  tail -n 20 target/fuzz-build.log
  echo "FAIL fuzz: the targets do not build (target/fuzz-build.log)"
  exit 1
fi
bin=target/fuzz/x86_64-unknown-linux-gnu/release
status=0
for t in "${targets[@]}"; do
  if [ ! -x "$bin/$t" ]; then
    echo "FAIL fuzz $t: not built"
    status=1
    continue
  fi
  work=target/fuzz-corpus/$t
  art=target/fuzz-artifacts/$t
  mkdir -p "$work" "$art"
  log=target/fuzz-artifacts/$t.log
  "$bin/$t" "${limit[@]}" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art/" "$work" "fuzz/corpus/$t" > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  crashes=$(find "$art" -type f | wc -l)
  if [ "$rc" = 0 ] && [ "$crashes" = 0 ]; then
    echo "PASS fuzz $t: ${execs:-0} execs, 0 crashes"
  else
    echo "FAIL fuzz $t: ${execs:-?} execs, $crashes crashes (exit $rc; $log, inputs in $art)"
    grep -m 5 -E 'panicked|ERROR|SUMMARY' "$log"
    status=1
  fi
done
exit "$status"
