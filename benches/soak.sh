#!/usr/bin/env bash
# Soak: many runs, then the host as before. Mixes success, a non-zero exit, a timeout,
# an OOM kill, a fork bomb, an output flood, a copy-on-write workdir write and a
# service start (redis) through the CLI, with execs (success, exit, timeout) into one
# session cell (`nixcell up` once, `down` at the end), then the same kinds (but the
# service and the session) through one long-lived `nixcell mcp` server
# (benches/soak_mcp.py, the Python MCP SDK).
#
#   benches/soak.sh [RUNS] [--rootless]
#       RUNS per part (default 200: the CI form); 10000 is the full form.
#       --rootless: the same as the unprivileged user $NIXCELL_SOAK_USER (default
#       nixcell-test, scripts/setup.sh's), started from root through setpriv.
#
# Prints a before/after table (host mounts that name a store path or nixcell, cgroup
# directories of runs whose supervisor is gone, cgroup directories of this binary's
# live cells, processes of this binary and of the cells, the live sessions, the MCP
# server's descriptors and memory, the state directory (but the logs and the runs'
# journals, bounded by their retention), the temporary directory, /tmp) and the run rate; then one line "PASS soak ..." or "FAIL soak ...".
# Runs as root (scripts/setup.sh's machine).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
mode=${2:-root}
case $mode in
  root | --rootless) ;;
  *) echo "usage: benches/soak.sh [RUNS] [--rootless]" >&2; exit 125 ;;
esac
bin=${NIXCELL_BIN:-$PWD/target/debug/nixcell}
[ -x "$bin" ] || cargo build -q --locked
py=${NIXCELL_TEST_PYTHON:-$PWD/target/mcp-venv/bin/python}
session=
# The session down if the soak stops half-way; the directory removed by who made it.
cleanup() {
  if [ -n "$session" ]; then "$bin" down "$session" > /dev/null 2>&1 || true; fi
  if [ -z "${NIXCELL_SOAK_WORK:-}" ]; then rm -rf "$work"; fi
}
if [ -n "${NIXCELL_SOAK_WORK:-}" ]; then
  work=$NIXCELL_SOAK_WORK # the unprivileged part's, made and removed by root
else
  mkdir -p target
  work=$(mktemp -d "$PWD/target/soak.XXXXXX")
fi
trap cleanup EXIT
if [ "$mode" = --rootless ] && [ "$(id -u)" = 0 ]; then
  # The unprivileged part owns its directory; root removes it afterwards.
  user=${NIXCELL_SOAK_USER:-nixcell-test}
  chown "$user:" "$work"
  setpriv --reuid "$user" --regid "$user" --init-groups --reset-env -- \
    env NIXCELL_BIN="$bin" NIXCELL_TEST_PYTHON="$py" NIXCELL_SOAK_WORK="$work" \
    bash "$PWD/benches/soak.sh" "$runs" --rootless
  exit
fi
pkgs=$PWD/tests/fixtures/pkgs
export NIX_PATH="nixpkgs=$pkgs" NIX_CONFIG="substituters ="
export NIXCELL_EVAL_PATHS="$pkgs:/var/lib/dpkg/status:/usr/lib/python3/dist-packages"
# The soak's own state, cache and temporary directories: counted exactly.
export XDG_STATE_HOME=$work/state XDG_CACHE_HOME=$work/cache TMPDIR=$work/tmp
mkdir -p "$XDG_STATE_HOME" "$XDG_CACHE_HOME" "$TMPDIR" "$work/wd"
bb=$(nix-build --quiet -E "(import $pkgs {}).busybox" -o "$work/busybox")
redis=$(nix-build --quiet -E "(import $pkgs {}).redis" -o "$work/redis")
proj=$work/project
mkdir -p "$proj"
cat > "$proj/devenv.nix" <<'NIX'
{ pkgs, ... }:
{
  packages = [ pkgs.busybox pkgs.redis ];
  services.redis.enable = true;
}
NIX
( cd "$proj" && git init -q && git add . && git -c user.name=soak -c user.email=soak@localhost commit -qm soak )

# One line of figures: key=value ...
measure() {
  python3 - "$bin" "$bb" "$redis" "$work" <<'PY'
import os, sys
bin, bb, redis, work = sys.argv[1:]
bin = os.path.realpath(bin)
def lines(p):
    try:
        return open(p).read().splitlines()
    except OSError:
        return []
mounts = sum(1 for l in lines("/proc/self/mountinfo") if "/nix/store" in l or "nixcell" in l or work in l)
def start_time(pid):
    s = "".join(lines(f"/proc/{pid}/stat"))
    return s[s.rfind(")") + 2:].split()[19] if s else None
import glob
stale = 0
for d in glob.glob("/sys/fs/cgroup/*/nixcell/user-*/run-*") + glob.glob("/sys/fs/cgroup/*nixcell.slice/user-*/run-*"):
    parts = os.path.basename(d).split("-")
    if len(parts) >= 3 and start_time(parts[1]) != parts[2]:
        stale += 1
live = 0
for d in glob.glob("/sys/fs/cgroup/*/nixcell/user-*/run-*") + glob.glob("/sys/fs/cgroup/*nixcell.slice/user-*/run-*"):
    try:
        if os.path.realpath(os.readlink(f"/proc/{os.path.basename(d).split('-')[1]}/exe")) == bin:
            live += 1
    except (OSError, IndexError):
        pass
ours = cells = 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        exe = os.readlink(f"/proc/{p}/exe")
    except OSError:
        continue
    if exe == bin:
        ours += 1
    elif exe.startswith((bb, redis)):
        st = "".join(lines(f"/proc/{p}/stat"))
        if st and st[st.rfind(")") + 2:].split()[1] == "1":
            cells += 1
def count(d):
    return sum(len(f) + len(ds) for _, ds, f in os.walk(d))
def entries(d):
    return len(os.listdir(d)) if os.path.isdir(d) else 0
logs = os.path.join(work, "state/nixcell/logs")
journals = os.path.join(work, "state/nixcell/runs")
import json, subprocess
sessions = len(json.loads(subprocess.run([bin, "ps", "--json"], capture_output=True, text=True).stdout or "[]"))
print(f"mounts={mounts} stale_cgroups={stale} live_cell_cgroups={live} nixcell_processes={ours} "
      f"orphaned_cell_processes={cells} live_sessions={sessions} "
      f"state_entries={count(os.path.join(work, 'state')) - sum(count(d) + os.path.isdir(d) for d in (logs, journals))} "
      f"log_dirs={entries(logs)} run_journals={entries(journals)} "
      f"tmpdir_entries={len(os.listdir(os.path.join(work, 'tmp')))} slash_tmp_entries={len(os.listdir('/tmp'))}")
PY
}

kind_names=(success exit-3 timeout oom fork-bomb output-flood workdir-write service
  session-success session-exit-3 session-timeout)
run_one() { # $1: kind index
  case $1 in
    0) "$bin" run --env-path "$bb" -- sh -c 'echo ok' ;;
    1) "$bin" run --env-path "$bb" -- sh -c 'exit 3' ;;
    2) "$bin" run --env-path "$bb" --timeout 300ms -- sleep 30 ;;
    3) "$bin" run --env-path "$bb" --memory 32M -- sh -c 'head -c 200000000 /dev/zero | tail' ;;
    4) "$bin" run --env-path "$bb" --pids 32 --timeout 1s -- sh -c 'b() { b | b & }; b' ;;
    5) "$bin" run --env-path "$bb" -- sh -c 'yes flood | head -c 20000000' ;;
    6) "$bin" run --env-path "$bb" --workdir "$work/wd" -- sh -c 'echo x > /work/f; rm /work/f' ;;
    7) (cd "$proj" && "$bin" run -- redis-cli -e ping) ;;
    8) "$bin" exec "$session" -- sh -c 'echo ok' ;;
    9) "$bin" exec "$session" -- sh -c 'exit 3' ;;
    10) "$bin" exec --timeout 300ms "$session" -- sleep 30 ;;
  esac > /dev/null 2>&1
}
# Expected exit statuses (the command's, or nixcell's for timeout 124 / OOM 137).
declare -A want=([0]=0 [1]=3 [6]=0 [7]=0 [8]=0 [9]=3 [10]=124)

# Warm-up: the project's environment built, the caches filled.
for k in 0 7; do run_one "$k" || true; done
before=$(measure)
start=$(date +%s.%N)
# The session lives through the CLI part; its execs are part of the mix.
session=soak$$
"$bin" up --detach --name "$session" --env-path "$bb" > /dev/null
bad=0
for ((i = 0; i < runs; i++)); do
  k=$((i % ${#kind_names[@]}))
  rc=0
  run_one "$k" || rc=$?
  if [ -n "${want[$k]:-}" ] && [ "$rc" != "${want[$k]}" ]; then
    bad=$((bad + 1))
    echo "soak: run $i (${kind_names[$k]}) exited $rc, expected ${want[$k]}" >&2
  fi
  if (((i + 1) % 1000 == 0)); then echo "soak: CLI $((i + 1))/$runs runs $(date -u +%T)" >&2; fi
done
end=$(date +%s.%N)
"$bin" down "$session" > /dev/null
session=
cli_rate=$(python3 -c "print(round($runs / ($end - $start), 1))")
sleep 1
after=$(measure)

# The same kinds through one long-lived MCP server.
mcp_out=$("$py" benches/soak_mcp.py "$runs" "$bin" --env-path "$bb")
sleep 1
after_mcp=$(measure)

table() {
  printf '%-26s %10s %10s %10s\n' "what" "before" "after CLI" "after MCP"
  for kv in $before; do
    key=${kv%%=*}
    a=$(tr ' ' '\n' <<< "$after" | sed -n "s/^$key=//p")
    m=$(tr ' ' '\n' <<< "$after_mcp" | sed -n "s/^$key=//p")
    printf '%-26s %10s %10s %10s\n' "$key" "${kv#*=}" "$a" "$m"
  done
  python3 -c "
import json, sys
m = json.loads(sys.argv[1])
print('%-26s %10s %10s %10s' % ('mcp server fds', m['fds_before'], '', m['fds_after']))
print('%-26s %10s %10s %10s' % ('mcp server rss KiB', m['rss_kib_before'], '', m['rss_kib_after']))
" "$mcp_out"
}
table
mcp_rate=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['rate'])" "$mcp_out")
mcp_bad=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['unexpected'])" "$mcp_out")
echo "rate: CLI $cli_rate runs/s (with session execs), MCP $mcp_rate runs/s ($runs runs each, ${mode#--})"

leaks=$(python3 - "$before" "$after" "$after_mcp" "$mcp_out" <<'PY'
import json, sys
def kv(s): return dict(x.split("=") for x in s.split())
b, a, m = kv(sys.argv[1]), kv(sys.argv[2]), kv(sys.argv[3])
mcp = json.loads(sys.argv[4])
out = []
for key in ["mounts", "stale_cgroups", "live_cell_cgroups", "nixcell_processes",
            "orphaned_cell_processes", "live_sessions", "state_entries", "tmpdir_entries"]:
    for name, x in [("CLI", a), ("MCP", m)]:
        if int(x[key]) > int(b[key]):
            out.append(f"{key} {b[key]} -> {x[key]} ({name})")
# Retention (src/run/logs.rs): 50 kept when a run prunes, plus that run's own.
# So are the journals of runs whose workdir changes were applied (src/changes.rs).
for key in ["log_dirs", "run_journals"]:
    if int(m[key]) > 51:
        out.append(f"{key} {m[key]} > retention 50 + the newest")
if mcp["fds_after"] > mcp["fds_before"]:
    out.append(f"mcp fds {mcp['fds_before']} -> {mcp['fds_after']}")
if mcp["rss_kib_after"] > mcp["rss_kib_before"] + 65536:
    out.append(f"mcp rss {mcp['rss_kib_before']} -> {mcp['rss_kib_after']} KiB")
print("; ".join(out))
PY
)
if [ -z "$leaks" ] && [ "$bad" = 0 ] && [ "$mcp_bad" = 0 ]; then
  echo "PASS soak ${mode#--}: $((2 * runs)) runs ($cli_rate CLI, $mcp_rate MCP runs/s), 0 leaks"
else
  echo "FAIL soak ${mode#--}: leaks: ${leaks:-none}; unexpected statuses: CLI $bad, MCP $mcp_bad"
  exit 1
fi
