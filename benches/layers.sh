#!/bin/sh
# Start-up of a cell with every layer on (default profile: Landlock, seccomp,
# rlimits, cgroup) next to bubblewrap with typical flags, on the same 10-path
# closure, measured side by side with hyperfine. Run as root or as a user.
#
#   benches/layers.sh [N_PATHS]     (default 10)
#
# Needs: nix-build, hyperfine, bwrap, a built nixcell (cargo build --release).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-10}
bin=${NIXCELL:-$here/target/release/nixcell}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$here/target/gcroots"
env=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).syntheticClosure $n" -o "$here/target/gcroots/synthetic-$n")
paths=$(nix-store --query --requisites "$env")
echo "closure: $(echo "$paths" | wc -l) paths"
binds=""
for p in $paths; do binds="$binds --ro-bind $p $p"; done
hyperfine -N --warmup 5 --runs "${RUNS:-100}" --export-json "$here/target/bench-startup.json" \
  -n "nixcell (all layers)" "$bin run --env-path $env -- true" \
  -n "nixcell (landlock+seccomp off)" "$bin run --profile $here/benches/no-lsm.toml --env-path $env -- true" \
  -n "bwrap" "bwrap --unshare-all --die-with-parent --proc /proc --dev /dev --tmpfs /tmp $binds -- $env/bin/true"
python3 - "$here/target/bench-startup.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
b = r["bwrap"]
for k, v in r.items():
    print(f"{k:32s} median {v*1000:7.2f} ms  ({v/b:.2f}x bwrap)")
PY
