#!/bin/sh
# Check `nixcell mcp` with MCP tools written elsewhere:
#   1. the MCP Inspector in CLI mode (npm @modelcontextprotocol/inspector), over stdio;
#   2. the MCP conformance suite (npm @modelcontextprotocol/conformance), whose server
#      scenarios speak Streamable HTTP only: scripts/mcp-http-bridge.mjs exposes the
#      stdio server over HTTP, one server process per session, forwarding messages as
#      they are.
# Both are installed from the npm registry under target/ (the suite needs Node 22 or
# newer; when the system's node is older, the `node@22` npm package provides one).
#
#   scripts/mcp-conformance.sh [--all]
#
# By default the conformance run covers the scenarios that apply to this server; the
# others call fixture tools, resources and prompts of the suite's reference server
# (test_simple_text, test://static-text, ...), or need logging, completion or
# subscriptions, which nixcell does not offer. --all runs the whole suite and reports.
# Exit status: non-zero when an applicable check fails.
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
npmdir="$repo/target/mcp-npm"
all=false
[ "${1:-}" = "--all" ] && all=true

APPLICABLE="server-initialize ping tools-list resources-list prompts-list"

export NIX_CONFIG="substituters =
${NIX_CONFIG:-}"

cargo build --locked --quiet
bin="$repo/target/debug/nixcell"
env=$(scripts/build-fixture-env.sh busybox | tail -n 1)

mkdir -p "$npmdir"
if [ ! -x "$npmdir/node_modules/.bin/mcp-inspector" ] || [ ! -e "$npmdir/node_modules/@modelcontextprotocol/conformance/package.json" ]; then
  (cd "$npmdir" && npm install --no-audit --no-fund --silent \
    @modelcontextprotocol/inspector @modelcontextprotocol/conformance)
fi
node=node
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 22 ]; then
  if [ ! -x "$repo/target/node22/node_modules/.bin/node" ]; then
    mkdir -p "$repo/target/node22"
    (cd "$repo/target/node22" && npm install --no-audit --no-fund --silent node@22)
  fi
  node="$repo/target/node22/node_modules/.bin/node"
fi

failed=0
pass() { echo "PASS  $1"; }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }

# --- 1. MCP Inspector, CLI mode, stdio -------------------------------------------
inspect() {
  (cd "$npmdir" && npx --no-install mcp-inspector --cli "$bin" mcp --env-path "$env" "$@") 2>/dev/null
}
out=$(inspect --method tools/list) || true
if echo "$out" | grep -q '"name": "run"' && echo "$out" | grep -q '"name": "environment_context"' &&
  echo "$out" | grep -q '"name": "edit_environment"' && echo "$out" | grep -q '"outputSchema"'; then
  pass "inspector tools/list: run, environment_context, edit_environment, with output schemas"
else
  fail "inspector tools/list"; echo "$out" | head -20
fi
out=$(inspect --method tools/call --tool-name run --tool-arg 'script=echo hello from the cell; id -un') || true
if echo "$out" | grep -q 'hello from the cell' && echo "$out" | grep -q '"exit_code": 0'; then
  pass "inspector tools/call run (inline script)"
else
  fail "inspector tools/call run"; echo "$out" | head -20
fi
out=$(inspect --method tools/call --tool-name run --tool-arg 'command=exit 7') || true
if echo "$out" | grep -q '"isError": true' && echo "$out" | grep -q '"exit_code": 7'; then
  pass "inspector tools/call run: a failed command is a result with isError"
else
  fail "inspector tools/call run (failing command)"; echo "$out" | head -20
fi
out=$(inspect --method resources/list) || true
if echo "$out" | grep -q 'nixcell://context'; then pass "inspector resources/list"; else fail "inspector resources/list"; fi
out=$(inspect --method resources/read --uri nixcell://context) || true
if echo "$out" | grep -q 'Executables on PATH'; then pass "inspector resources/read nixcell://context"; else fail "inspector resources/read"; fi
out=$(inspect --method prompts/get --prompt-name nixcell_environment) || true
if echo "$out" | grep -q 'nixcell sandbox'; then pass "inspector prompts/get nixcell_environment"; else fail "inspector prompts/get"; fi

# --- 2. Conformance suite, through the HTTP bridge ---------------------------------
cp scripts/mcp-http-bridge.mjs "$npmdir/"
port=$((20000 + $$ % 20000))
"$node" "$npmdir/mcp-http-bridge.mjs" "$port" "$bin" mcp --env-path "$env" 2>"$repo/target/mcp-bridge.log" &
bridge=$!
trap 'kill $bridge 2>/dev/null || true' EXIT INT TERM
i=0
until grep -q 'bridge: http' "$repo/target/mcp-bridge.log" 2>/dev/null || [ $i -ge 100 ]; do
  sleep 0.1; i=$((i + 1))
done
suite="$npmdir/node_modules/@modelcontextprotocol/conformance/dist/index.js"
url="http://127.0.0.1:$port/mcp"
for s in $APPLICABLE; do
  if res=$("$node" "$suite" server --url "$url" --scenario "$s" 2>&1) && echo "$res" | grep -q ' 0 failed'; then
    pass "conformance $s"
  else
    fail "conformance $s"; echo "$res" | grep -v 'unknown format' | tail -15
  fi
done
if $all; then
  echo "--- whole conformance suite (informative) ---"
  "$node" "$suite" server --url "$url" 2>&1 | grep -E '^[✓✗]|^Total' || true
fi
kill $bridge 2>/dev/null || true

if [ "$failed" -ne 0 ]; then
  echo "$failed check(s) failed"
  exit 1
fi
echo "all checks passed"
