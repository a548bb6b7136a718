#!/usr/bin/env bash
# Set up this machine (scripts/setup.sh) and run the whole test suite, as root;
# the rootless cases run as the unprivileged user that setup.sh creates.
set -euo pipefail
cd "$(dirname "$0")/.."
# The module graph: no import cycles, the sandbox names no front-end module.
python3 scripts/check-modules.py

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
chmod -R o+rX target 2>/dev/null || true
log=target/test-output.log
cargo test --locked --tests -- --test-threads=2 2>&1 | tee "$log"
# The MCP Inspector (CLI mode) and the MCP conformance suite, from npm.
scripts/mcp-conformance.sh 2>&1 | tee -a "$log"

# One closing line for everything above.
passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$log")
passed=$((passed + $(grep -c '^PASS ' "$log" || true)))
failed=$((failed + $(grep -c '^FAIL ' "$log" || true)))
echo "tests: $passed passed, $failed failed"
