#!/bin/sh
# The copy-on-write workdir against a live read-write bind, side by side:
#  - start-up of `true` with a workdir, on a closure of 10 store paths;
#  - a run writing 1,000 files of 100 KiB (100 MiB in all) into /work, which with
#    copy-on-write includes applying them to the workdir after the run (journal too).
# As root (the workdir owned by the test user, so that "bind" is allowed) and rootless.
#
#   benches/workdir.sh [RUNS]        (default 30 runs each for start-up, 5 for writes)
set -eu
cd "$(dirname "$0")/.."
runs=${1:-30}
user=${NIXCELL_TEST_USER:-nixcell-test}

command -v hyperfine >/dev/null || { echo "hyperfine is missing (scripts/setup.sh installs it)" >&2; exit 1; }
cargo build --release --locked -q
bin=$(pwd)/target/release/nixcell
out=$(mktemp -d)
chmod 755 "$out"
trap 'rm -rf "$out"' EXIT
root=$(scripts/build-fixture-env.sh synthetic-10)
bb=$(scripts/build-fixture-env.sh busybox)
printf 'extends = "default"\n[filesystem]\nworkdir = "bind"\n' > "$out/bind.toml"
printf 'extends = "default"\n[filesystem]\nworkdir = "cow"\nwork_size = "1G"\n' > "$out/cow.toml"
chmod 644 "$out"/*.toml
wd="$out/wd"
mkdir "$wd"
chown "$user:$user" "$wd"

median() { # hyperfine json -> median in ms
  python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["results"][0]["median"]*1000))' "$1"
}

write='i=0; while [ $i -lt 1000 ]; do head -c 102400 /dev/zero > /work/f$i; i=$((i+1)); done'
printf '%-9s %-22s %10s %10s %8s\n' mode what "cow ms" "bind ms" ratio
for mode in root rootless; do
  if [ "$mode" = root ]; then wrap=""; else wrap="setpriv --reuid $user --regid $user --init-groups --reset-env --"; fi
  $wrap "$bin" run --env-path "$root" --workdir "$wd" -- true
  for p in cow bind; do
    hyperfine -N -w 3 -r "$runs" --export-json "$out/s-$p.json" \
      "$wrap $bin run --profile $out/$p.toml --env-path $root --workdir $wd -- true" >/dev/null 2>&1
    hyperfine -w 1 -r 5 --export-json "$out/w-$p.json" \
      --prepare "find $wd -mindepth 1 -delete" \
      "$wrap $bin run --profile $out/$p.toml --env-path $bb --workdir $wd -- sh -c '$write'" >/dev/null 2>&1
  done
  sc=$(median "$out/s-cow.json"); sb=$(median "$out/s-bind.json")
  wc=$(median "$out/w-cow.json"); wb=$(median "$out/w-bind.json")
  printf '%-9s %-22s %10s %10s %8s\n' "$mode" "start-up, 10 paths" "$sc" "$sb" "$(python3 -c "print('%.2f' % ($sc/$sb))")"
  printf '%-9s %-22s %10s %10s %8s\n' "$mode" "1000 files / 100 MiB" "$wc" "$wb" "$(python3 -c "print('%.2f' % ($wc/$wb))")"
done
