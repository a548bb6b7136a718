#!/bin/sh
# A warm `nixcell run -- true` in a project whose package set is a small tree (the
# offline fixture, 12 files) and one of FILES more files (default 50,000): the pin in
# devenv.lock decides whether the cached build is fresh, so the tree's size must not
# show. The first (cold) run of each, which resolves and locks the package set (nix
# copies the tree into the store once), is timed once.
#
#   benches/pkgset.sh [RUNS] [FILES]     (default 30 runs each, after 3 warm-ups)
#
# NIXCELL_BIN=PATH times that binary instead of a fresh release build; with
# NIXCELL_BASELINE_BIN=PATH the same runs are timed with a second binary too (e.g. one
# that fingerprints the tree).
set -eu
cd "$(dirname "$0")/.."
runs=${1:-30}
files=${2:-50000}

command -v hyperfine >/dev/null || { echo "hyperfine is missing (scripts/setup.sh installs it)" >&2; exit 1; }
if [ -z "${NIXCELL_BIN:-}" ]; then
  cargo build --release --locked -q
  NIXCELL_BIN=$(pwd)/target/release/nixcell
fi
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

cp -r tests/fixtures/pkgs "$work/small"
cp -r tests/fixtures/pkgs "$work/big"
python3 - "$work/big/tree" "$files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 500), "e%02d" % (i % 500 // 50))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.nix" % i), "w") as f:
        f.write("{ }: %d\n" % i)
EOF
echo "package sets: small $(find "$work/small" | wc -l) entries, big $(find "$work/big" | wc -l) entries"

export NIXCELL_EVAL_PATHS="$work/small:$work/big:/var/lib/dpkg/status:/usr/lib/python3/dist-packages"
export XDG_CACHE_HOME="$work/cache"
unset NIX_PATH
for set in small big; do
  mkdir "$work/proj-$set"
  printf '{ pkgs, ... }: { packages = [ pkgs.busybox ]; }\n' > "$work/proj-$set/devenv.nix"
  printf 'nixpkgs = "%s"\n' "$work/$set" > "$work/proj-$set/nixcell.toml"
done

median() { # hyperfine json -> median wall-clock ms
  python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["results"][0]["median"]*1000))' "$1"
}
cpu() { # hyperfine json -> mean user+system ms (steadier than wall-clock on a busy machine)
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("%.1f" % ((r["user"]+r["system"])*1000))' "$1"
}

bench() { # label binary
  label=$1 bin=$2
  for set in small big; do
    cd "$work/proj-$set"
    start=$(date +%s%N)
    "$bin" run -- true
    echo "$label $set: first run (resolve, lock, build) $(( ($(date +%s%N) - start) / 1000000 )) ms"
    hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/$label-$set.json" "$bin run -- true" >/dev/null
    cd - >/dev/null
  done
  s=$(median "$work/$label-small.json") b=$(median "$work/$label-big.json")
  echo "$label: warm run median small $s ms, big $b ms (big/small $(python3 -c "print('%.2f' % ($b/$s))"));" \
    "CPU (user+system) small $(cpu "$work/$label-small.json") ms, big $(cpu "$work/$label-big.json") ms"
}

bench nixcell "$NIXCELL_BIN"
if [ -n "${NIXCELL_BASELINE_BIN:-}" ]; then
  rm -f "$work"/proj-*/devenv.lock
  bench baseline "$NIXCELL_BASELINE_BIN"
fi
