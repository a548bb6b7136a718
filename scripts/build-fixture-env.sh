#!/bin/sh
# Build an environment of the offline package set (tests/fixtures/pkgs) and
# print its store path.
#
#   scripts/build-fixture-env.sh NAME [NAME...]
#   scripts/build-fixture-env.sh --expr 'pkgs.buildEnv { name = "x"; paths = [ pkgs.jq ]; }'
#   scripts/build-fixture-env.sh --list
#
# NAME is one of the environments below, or synthetic-N (a closure of exactly
# N store paths, N >= 3). With --expr, `pkgs` is the package set.
# Results are kept as garbage-collector roots under target/nix-fixture/NAME
# (when that directory is writable), so a later `nix-collect-garbage` keeps
# them and tests can read the store path from the link.
set -eu

cd "$(dirname "$0")/.."
repo=$(pwd)
fixture="$repo/tests/fixtures/pkgs"

# No binary cache is reachable: do not let nix retry the network.
NIX_CONFIG="substituters =
${NIX_CONFIG:-}"
export NIX_CONFIG

expr_of() {
  case "$1" in
    demo) echo 'pkgs.buildEnv { name = "nixcell-demo-env"; paths = [ (pkgs.python3.withPackages (ps: [ ps.pandas ps.openpyxl ])) pkgs.busybox ]; }' ;;
    python-demo) echo 'pkgs.python3.withPackages (ps: [ ps.pandas ps.openpyxl ])' ;;
    python-bare) echo 'pkgs.python3.withPackages (ps: [ ])' ;;
    python-nopandas) echo 'pkgs.buildEnv { name = "nixcell-python-nopandas"; paths = [ (pkgs.python3.withPackages (ps: [ ps.openpyxl ])) pkgs.busybox ]; }' ;;
    redis) echo 'pkgs.buildEnv { name = "nixcell-redis-env"; paths = [ pkgs.redis pkgs.busybox ]; }' ;;
    busybox) echo 'pkgs.busybox' ;;
    tools) echo 'pkgs.buildEnv { name = "nixcell-tools-env"; paths = [ pkgs.busybox pkgs.jq pkgs.ripgrep ]; }' ;;
    synthetic-*)
      n=${1#synthetic-}
      case "$n" in ''|*[!0-9]*) echo "bad synthetic size: $1" >&2; return 1 ;; esac
      echo "pkgs.syntheticClosure $n" ;;
    *) echo "unknown environment: $1 (try --list)" >&2; return 1 ;;
  esac
}

build() { # NAME EXPR
  outdir="$repo/target/nix-fixture"
  mkdir -p "$outdir" 2>/dev/null || true
  if [ -w "$outdir" ]; then
    link="--out-link $outdir/$1"
  else
    link="--no-out-link"
  fi
  # shellcheck disable=SC2086
  nix-build --quiet $link -E "let pkgs = import $fixture { }; in $2"
}

if [ $# -eq 0 ]; then
  sed -n '2,13s/^# \{0,1\}//p' "$0"
  exit 2
fi

case "$1" in
  --list)
    echo "demo python-demo python-bare python-nopandas redis busybox tools synthetic-N"
    exit 0 ;;
  --expr)
    [ $# -eq 2 ] || { echo "usage: $0 --expr EXPR" >&2; exit 2; }
    build custom "$2"
    exit 0 ;;
esac

for name in "$@"; do
  e=$(expr_of "$name")
  build "$name" "$e"
done
