#!/bin/sh
# Start-up of a cell, nixcell against bubblewrap given equivalent isolation, on the
# same closures of 10, 100 and 1000 store paths; as root and rootless.
#
#   benches/startup.sh [RUNS]        (default 60 runs each, after 5 warm-ups)
#
# Both start `true` from the closure in new user, mount, pid, net, ipc, uts and
# cgroup namespaces, with each closure path bound read-only into a tmpfs root, a fresh
# /proc, a minimal /dev, a tmpfs /tmp, a new session, no capabilities and a cleared
# environment. Prints the median of each and the ratio nixcell/bwrap, and the ratio of
# each tool's 1000-path start-up to its own 10-path one.
set -eu
cd "$(dirname "$0")/.."
runs=${1:-60}
user=${NIXCELL_TEST_USER:-nixcell-test}

command -v hyperfine >/dev/null || { echo "hyperfine is missing (scripts/setup.sh installs it)" >&2; exit 1; }
command -v bwrap >/dev/null || { echo "bwrap is missing (scripts/setup.sh installs it)" >&2; exit 1; }
cargo build --release --locked -q
bin=$(pwd)/target/release/nixcell
out=$(mktemp -d)
chmod 755 "$out"
trap 'rm -rf "$out"' EXIT

bwrap_args() { # closure root -> bwrap arguments for `bwrap --args FD` (NUL-separated):
  # 1000 binds make a command line longer than one argument may be.
  root=$1
  {
    printf '%s\0' --unshare-all --die-with-parent --new-session --cap-drop ALL --clearenv \
      --setenv PATH "$root/bin" --hostname nixcell --uid 1000 --gid 1000 \
      --proc /proc --dev /dev --tmpfs /tmp
    nix-store --query --requisites "$root" | while read -r p; do printf '%s\0' --ro-bind "$p" "$p"; done
    printf '%s\0' --remount-ro /
  } > "$out/args-$(basename "$root")"
  chmod 644 "$out/args-$(basename "$root")"
}

median() { # hyperfine json -> median in ms
  python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["results"][0]["median"]*1000))' "$1"
}

printf '%-9s %6s %12s %12s %8s\n' mode paths "nixcell ms" "bwrap ms" ratio
for mode in root rootless; do
  for n in 10 100 1000; do
    root=$(scripts/build-fixture-env.sh "synthetic-$n")
    bwrap_args "$root"
    args="$out/args-$(basename "$root")"
    if [ "$mode" = root ]; then wrap=""; else wrap="setpriv --reuid $user --regid $user --init-groups --reset-env --"; fi
    # Fill the closure cache first, as any second run of the same environment finds it.
    $wrap "$bin" run --env-path "$root" -- true
    # Both through the shell (hyperfine subtracts its start-up), as bwrap reads its
    # arguments from a file descriptor.
    hyperfine -w 5 -r "$runs" --export-json "$out/n.json" \
      "$wrap $bin run --env-path $root -- true" >/dev/null 2>&1
    # bwrap takes seconds per start at 1000 paths: fewer runs there.
    bruns=$runs; [ "$n" -lt 1000 ] || bruns=10
    hyperfine -w 2 -r "$bruns" --export-json "$out/b.json" \
      "$wrap bwrap --args 3 $root/bin/true 3<$args" >/dev/null 2>&1
    nm=$(median "$out/n.json"); bm=$(median "$out/b.json")
    printf '%-9s %6s %12s %12s %8s\n' "$mode" "$n" "$nm" "$bm" "$(python3 -c "print('%.2f' % ($nm/$bm))")"
    eval "n_${mode}_$n=$nm; b_${mode}_$n=$bm"
  done
done
for mode in root rootless; do
  eval "a=\$n_${mode}_1000; b=\$n_${mode}_10; c=\$b_${mode}_1000; d=\$b_${mode}_10"
  printf '%s: 1000-path / 10-path start-up: nixcell %.2fx, bwrap %.2fx\n' "$mode" \
    "$(python3 -c "print($a/$b)")" "$(python3 -c "print($c/$d)")"
done
