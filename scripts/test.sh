#!/usr/bin/env bash
# Set up this machine (scripts/setup.sh) and run the whole test suite, as root;
# the rootless cases run as the unprivileged user that setup.sh creates.
set -euo pipefail
cd "$(dirname "$0")/.."
# The module graph: no import cycles, the sandbox names no front-end module.
python3 scripts/check-modules.py
# Free space where the build, the Debian 13 root and the guests' disks go: printed at
# each stage, so a full disk reads as one.
disk_free() { df -h --output=avail,target . | tail -n 1 | awk -v s="$1" '{ print "disk: " $1 " free on " $2 " (" s ")" }'; }
disk_free start
# A clean clone builds once: incremental state would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

scripts/setup.sh
# tests/mcp.rs drives `nixcell mcp` with the official Python MCP SDK (PyPI `mcp`).
# The distribution's python3: the rootless cases run the client as the test user, who
# must be able to execute the interpreter the venv points at.
sys_python=/usr/bin/python3
if ! target/mcp-venv/bin/python -c 'import mcp.client.stdio' 2>/dev/null; then
  # Debian's python3 needs python3-venv for this.
  "$sys_python" -m venv --clear target/mcp-venv ||
    { apt-get install -y -qq python3-venv && "$sys_python" -m venv --clear target/mcp-venv; }
  target/mcp-venv/bin/pip install --quiet mcp
fi
cargo build --locked --all-targets
# setup.sh opened the repo to the test user; the build just made target/ anew.
# (Not into target/nix-current: a Debian root of its own, see scripts/nix-current.sh.)
find target -path target/nix-current -prune -o -exec chmod o+rX {} + 2> /dev/null || true
log=target/test-output.log
cargo test --locked --tests -- --test-threads=2 2>&1 | tee "$log"
# The MCP Inspector (CLI mode) and the MCP conformance suite, from npm.
scripts/mcp-conformance.sh 2>&1 | tee -a "$log"
# A check script's PASS/FAIL lines are counted below; one that ends in failure without
# a FAIL line of its own counts as one.
check_stage() {
  local name=$1 out rc=0
  shift
  out=$(mktemp)
  "$@" 2>&1 | tee "$out" | tee -a "$log" || rc=$?
  if [ "$rc" != 0 ] && ! grep -q '^FAIL' "$out"; then echo "FAIL $name: exit $rc" | tee -a "$log"; fi
  rm -f "$out"
}
# nixcell as an OCI runtime behind the real engines: podman and containerd's runc shim.
check_stage oci-engines scripts/oci-engines.sh
# The fuzz targets, a short time each (scripts/fuzz.sh --runs N is the full form).
disk_free "before fuzz"
check_stage fuzz scripts/fuzz.sh "${NIXCELL_FUZZ_SECONDS:-15}"
# The soak's short form: nothing left behind after mixed runs through the CLI and MCP.
check_stage soak benches/soak.sh "${NIXCELL_SOAK_RUNS:-200}"
check_stage soak-rootless benches/soak.sh "${NIXCELL_SOAK_ROOTLESS_RUNS:-100}" --rootless

# The frontend, runner, nixcurrent, devenv, pkgset and services suites under current
# Nix (Debian 13's nix-bin) in a Debian 13 root with its own store and daemon
# (scripts/nix-current.sh); the suites above ran with the host's Nix.
# NIXCELL_SKIP_NIX_CURRENT=1 skips it.
disk_free "before nix-current"
nixc_log=target/nix-current.log
: > "$nixc_log"
if [ "${NIXCELL_SKIP_NIX_CURRENT:-}" != 1 ]; then
  nixc_rc=0
  scripts/nix-current.sh 2>&1 | tee "$nixc_log" || nixc_rc=$?
fi

# The same suites on the kernels users run (Debian 12's 6.1, Debian 13's 6.12, no
# Landlock, no user namespaces), each booted in QEMU; NIXCELL_SKIP_KERNEL_MATRIX=1 skips it.
disk_free "before kernel-matrix"
kmx_log=target/kernel-matrix.log
: > "$kmx_log"
if [ "${NIXCELL_SKIP_KERNEL_MATRIX:-}" != 1 ]; then
  kmx_rc=0
  scripts/kernel-matrix.sh 2>&1 | tee "$kmx_log" || kmx_rc=$?
fi

# One closing line for everything above.
passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$log")
passed=$((passed + $(grep -c '^PASS ' "$log" || true)))
failed=$((failed + $(grep -c '^FAIL ' "$log" || true)))
# Each kernel's line is printed twice (as it ends, and in the closing list).
kmx_lines=$(grep -E '^kernel-matrix [^ ]+ \(' "$kmx_log" | sort -u || true)
kmx_counts=$(printf '%s\n' "$kmx_lines" |
  sed -n 's/.*tests ok \([0-9]*\), failed \([0-9]*\); checks ok \([0-9]*\), failed \([0-9]*\).*/\1 \2 \3 \4/p' |
  awk '{ p += $1 + $3; f += $2 + $4 } END { print p + 0, f + 0 }')
passed=$((passed + ${kmx_counts% *}))
failed=$((failed + ${kmx_counts#* }))
# A guest that timed out or did not finish counts as one failure.
failed=$((failed + $(printf '%s\n' "$kmx_lines" | grep -cE 'TIMED OUT|did not finish' || true)))
# Current Nix: one line a suite; a set-up that failed before any suite is one failure.
nixc_counts=$(sed -n 's/^nix-current [^ ]* (Nix [^)]*): [A-Z]*[a-z]*: tests ok \([0-9]*\), failed \([0-9]*\);.*/\1 \2/p' "$nixc_log" |
  awk '{ p += $1; f += $2 } END { print p + 0, f + 0 }')
passed=$((passed + ${nixc_counts% *}))
failed=$((failed + ${nixc_counts#* }))
if [ "${nixc_rc:-0}" != 0 ] && ! grep -q '^nix-current ' "$nixc_log"; then failed=$((failed + 1)); fi
echo "tests: $passed passed, $failed failed"
[ "${kmx_rc:-0}" = 0 ] && [ "${nixc_rc:-0}" = 0 ] && [ "$failed" = 0 ]
