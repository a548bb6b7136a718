#!/bin/sh
# Cost of Landlock + seccomp on a syscall-heavy workload: the same cell with the
# default profile and with both layers off (benches/no-lsm.toml). The workload
# stats, opens, reads and closes a file in a loop inside the cell.
#
#   benches/syscall-cost.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NIXCELL:-$here/target/release/nixcell}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$here/target/gcroots"
py=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).python3" -o "$here/target/gcroots/bench-python3")
work='
import os
p = "/tmp/f"
open(p, "w").write("x" * 64)
for i in range(200000):
    os.stat(p)
    fd = os.open(p, os.O_RDONLY); os.read(fd, 64); os.close(fd)
    os.getppid()
'
hyperfine -N --warmup 2 --runs "${RUNS:-15}" --export-json "$here/target/bench-syscall.json" \
  -n "all layers" "$bin run --env-path $py -- python3 -c '$work'" \
  -n "landlock+seccomp off" "$bin run --profile $here/benches/no-lsm.toml --env-path $py -- python3 -c '$work'"
python3 - "$here/target/bench-syscall.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
on, off = r["all layers"]["median"], r["landlock+seccomp off"]["median"]
print(f"all layers {on*1000:.1f} ms, without Landlock+seccomp {off*1000:.1f} ms: cost {100*(on/off-1):+.2f}%")
PY
