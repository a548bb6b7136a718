#!/bin/sh
# Cold start, served start (`nixcell serve` with init stages started ahead) and
# bubblewrap side by side, one run, medians; 10- and 1000-path closures; CPU time per
# start (perf stat's task-clock of the command and its children, plus for a served run
# the server's own CPU time over the runs); sequential runs per second; a
# syscall-heavy loop with each of Landlock and seccomp on and off, and under bwrap.
#
#   benches/pool.sh [RUNS]     (default 40; as root, or as a user: rootless)
#
# Needs hyperfine, bwrap, perf, nix-build, a release build (cargo build --release).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-40}
bin=${NIXCELL:-$here/target/release/nixcell}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for t in hyperfine bwrap perf; do
  command -v $t >/dev/null || { echo "$t is missing" >&2; exit 1; }
done
out=$(mktemp -d)
state=$(mktemp -d)
chmod 700 "$state"
spid=""
trap '[ -z "$spid" ] || kill "$spid" 2>/dev/null; rm -rf "$out" "$state"' EXIT
mkdir -p "$here/target/gcroots"
fixture() { # N -> store path of a synthetic closure of N paths
  NIX_CONFIG='substituters =' nix-build --quiet -E \
    "(import $here/tests/fixtures/pkgs {}).syntheticClosure $1" -o "$here/target/gcroots/synthetic-$1"
}
bwrap_args() { # closure root -> file of bwrap arguments (NUL-separated, for --args)
  f="$out/args-$(basename "$1")"
  {
    printf '%s\0' --unshare-all --die-with-parent --new-session --cap-drop ALL --clearenv \
      --setenv PATH "$1/bin" --proc /proc --dev /dev --tmpfs /tmp
    nix-store --query --requisites "$1" | while read -r p; do printf '%s\0' --ro-bind "$p" "$p"; done
    printf '%s\0' --remount-ro /
  } > "$f"
  echo "$f"
}
median() { # hyperfine json, index -> median ms
  python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["results"][int(sys.argv[2])]["median"]*1000))' "$1" "$2"
}
cpu() { # command... -> CPU ms per run (perf stat task-clock, children included)
  perf stat -x, -e task-clock -r "$runs" "$@" 2>&1 >/dev/null </dev/null | awk -F, '/task-clock/ {printf "%.2f", $1}'
}
serve_ticks() { # the server's CPU time so far (utime+stime+cutime+cstime), clock ticks
  awk '{print $14+$15+$16+$17}' "/proc/$spid/stat"
}
ratio() { python3 -c "print('%.2f' % ($1/$2))"; }

export XDG_STATE_HOME="$state"
start_serve() {
  "$bin" serve </dev/null 2>"$out/serve.log" &
  spid=$!
  while ! grep -q listening "$out/serve.log" 2>/dev/null; do sleep 0.05; done
}
stop_serve() { kill "$spid"; wait "$spid" 2>/dev/null || true; spid=""; }

printf '%-28s %10s %10s %10s %12s %12s\n' figure "cold ms" "served ms" "bwrap ms" "cold/bwrap" "served/bwrap"
for n in 10 1000; do
  env=$(fixture $n)
  args=$(bwrap_args "$env")
  "$bin" run --env-path "$env" -- true          # fills the closure cache
  bruns=$runs; [ "$n" -lt 1000 ] || bruns=10    # bwrap binds 1000 paths slowly
  hyperfine -N -w 3 -r "$runs" --export-json "$out/c.json" "$bin run --env-path $env -- true" >/dev/null 2>&1
  start_serve
  hyperfine -N -w 3 -r "$runs" --export-json "$out/s.json" "$bin run --env-path $env -- true" >/dev/null 2>&1
  grep -q "started ahead" "$out/serve.log" || { echo "the runs were not served" >&2; exit 1; }
  stop_serve
  hyperfine -w 2 -r "$bruns" --export-json "$out/b.json" "bwrap --args 3 $env/bin/true 3<$args" >/dev/null 2>&1
  c=$(median "$out/c.json" 0); s=$(median "$out/s.json" 0); b=$(median "$out/b.json" 0)
  printf '%-28s %10s %10s %10s %12s %12s\n' "true, $n paths" "$c" "$s" "$b" "$(ratio "$c" "$b")" "$(ratio "$s" "$b")"
  eval "c$n=$c; s$n=$s; b$n=$b"
done
echo "1000 vs 10 paths: cold $(ratio "$c1000" "$c10")x, served $(ratio "$s1000" "$s10")x, bwrap $(ratio "$b1000" "$b10")x"
echo "sequential runs/s (10 paths): served $(python3 -c "print('%.0f' % (1000/$s10))"), cold $(python3 -c "print('%.0f' % (1000/$c10))"), bwrap $(python3 -c "print('%.0f' % (1000/$b10))"); served/bwrap $(ratio "$b10" "$s10")x"

env=$(fixture 10)
args=$(bwrap_args "$env")
cc=$(cpu "$bin" run --env-path "$env" -- true)
start_serve
t0=$(serve_ticks)
sc=$(cpu "$bin" run --env-path "$env" -- true)
t1=$(serve_ticks)
stop_serve
# perf stat -r runs the command `runs` times: the server's share per run.
hz=$(getconf CLK_TCK)
sc=$(python3 -c "print('%.2f' % ($sc + ($t1-$t0)*1000/$hz/$runs))")
bc=$(cpu sh -c "bwrap --args 3 $env/bin/true 3<$args")
shc=$(cpu sh -c true)
bc=$(python3 -c "print('%.2f' % ($bc - $shc))")
echo "CPU per start (10 paths): cold $cc ms, served $sc ms (caller + server), bwrap $bc ms; cold/bwrap $(ratio "$cc" "$bc")x, served/bwrap $(ratio "$sc" "$bc")x"

py=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).python3" -o "$here/target/gcroots/bench-python3")
pargs=$(bwrap_args "$py")
work='
import os
p = "/tmp/f"
open(p, "w").write("x" * 64)
for i in range(100000):
    os.stat(p)
    fd = os.open(p, os.O_RDONLY); os.close(fd)
    os.getppid()
'
hyperfine -N -w 1 -r "${LOOP_RUNS:-10}" --export-json "$out/l.json" \
  "$bin run --env-path $py -- python3 -c '$work'" \
  "$bin run --profile $here/benches/no-landlock.toml --env-path $py -- python3 -c '$work'" \
  "$bin run --profile $here/benches/no-seccomp.toml --env-path $py -- python3 -c '$work'" \
  "$bin run --profile $here/benches/no-lsm.toml --env-path $py -- python3 -c '$work'" >/dev/null 2>&1
hyperfine -w 1 -r "${LOOP_RUNS:-10}" --export-json "$out/lb.json" \
  "bwrap --args 3 $py/bin/python3 -c '$work' 3<$pargs" >/dev/null 2>&1
all=$(median "$out/l.json" 0); nol=$(median "$out/l.json" 1); nos=$(median "$out/l.json" 2)
none=$(median "$out/l.json" 3); bw=$(median "$out/lb.json" 0)
echo "syscall loop (stat + open/close + getppid x100k): all layers $all ms, Landlock off $nol ms, seccomp off $nos ms, both off $none ms, bwrap $bw ms"
echo "  all layers / bwrap $(ratio "$all" "$bw")x; Landlock's share $(ratio "$all" "$nol")x, seccomp's $(ratio "$all" "$nos")x, both off / bwrap $(ratio "$none" "$bw")x"
