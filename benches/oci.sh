#!/bin/sh
# Start-to-exit time of one container (`true`) through podman, through ctr
# (containerd's runc shim) and driven alone as a shim drives it, nixcell vs runc (and
# crun, which refuses this kind of hybrid cgroup layout), medians. As root; the image
# is a tarball of the busybox closure, the same for every runtime (nixcell takes the
# root from its annotation, the others from the image; nixcell's image-root case takes
# it from the directory too).
#
#   benches/oci.sh [RUNS]     (default 20; a release build when there is one)
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "benches/oci.sh: run as root" >&2; exit 2; }
bin="$repo/target/release/nixcell"
[ -x "$bin" ] || { cargo build --locked --quiet; bin="$repo/target/debug/nixcell"; }
work="$repo/target/oci-bench"
rm -rf "$work"
mkdir -p "$work/rootfs"
ln -s "$bin" "$work/nixcell-runc"
bb=$(scripts/build-fixture-env.sh busybox | tail -n 1)
# shellcheck disable=SC2046
tar -cf "$work/closure.tar" $(nix-store -qR "$bb") 2> /dev/null
tar -xf "$work/closure.tar" -C "$work/rootfs"
image=localhost/nixcell-oci-bench
podman import -q "$work/closure.tar" "$image" > /dev/null
common="--rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
ann="--annotation dev.nixcell.closure=$bb"

echo "# podman run (binary: $bin)"
hyperfine -N -w 2 -r "$runs" -i --export-json "$work/podman.json" \
  -n nixcell "podman --runtime $work/nixcell-runc run $common $ann $image $bb/bin/true" \
  -n runc "podman --runtime runc run $common $image $bb/bin/true" \
  -n crun "podman --runtime crun run $common $image $bb/bin/true" > "$work/podman.txt" 2>&1 || true
podman --runtime crun run $common "$image" "$bb/bin/true" 2>&1 | tail -n 1 | sed 's/^/# crun: /'

ctd="$work/containerd"
mkdir -p "$ctd"
. scripts/oci-containerd.sh
start_containerd "$ctd"
ns="nixcell-oci-bench-$$"
trap 'kill $ctd_pid 2>/dev/null || true; wait $ctd_pid 2>/dev/null || true; rm -rf /run/containerd/runc/$ns; podman rmi -f $image > /dev/null 2>&1 || true' EXIT
ctr_="ctr -a $ctd/containerd.sock -n $ns run --rm"
echo "# ctr run"
hyperfine -N -w 2 -r "$runs" --export-json "$work/ctr.json" \
  -n nixcell "$ctr_ --runc-binary $work/nixcell-runc $ann --rootfs $work/rootfs b1 $bb/bin/true" \
  -n runc "$ctr_ --runc-binary runc --rootfs $work/rootfs b2 $bb/bin/true" > "$work/ctr.txt" 2>&1

# The runtime alone, driven as a shim drives it (benches/oci-life.c: create with a
# pid file, start, wait for the reparented first process, delete), from one bundle: the
# closure root (the annotation), the same files as an image root (nixcell clones and
# overlays the directory), and runc on the directory.
cc -O2 -Wall -o "$work/oci-life" benches/oci-life.c
for b in closure image runc; do
  mkdir -p "$work/bundle-$b" "$work/root-$b"
  (cd "$work/bundle-$b" && runc spec)
  python3 - "$work/bundle-$b/config.json" "$work/rootfs" "$bb" "$b" << 'EOT'
import json, sys
path, rootfs, bb, kind = sys.argv[1:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = [bb + "/bin/true"]
c["root"] = {"path": rootfs, "readonly": True}
if kind == "closure":
    c["annotations"] = {"dev.nixcell.closure": bb}
json.dump(c, open(path, "w"))
EOT
done
life() { # NAME RUNTIME KIND
  "$work/oci-life" "$2" "$work/root-$3" "$work/bundle-$3" 2 > /dev/null
  "$work/oci-life" "$2" "$work/root-$3" "$work/bundle-$3" "$runs" > "$work/life-$3.txt"
  sort -n "$work/life-$3.txt" | awk -v n="$1" '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "runtime %-14s median %7.1f ms\n", n, m }'
}
echo "# the runtime alone (create, start, wait, delete)"
life nixcell "$work/nixcell-runc" closure > "$work/life.txt"
life nixcell-image "$work/nixcell-runc" image >> "$work/life.txt"
life runc "$(command -v runc)" runc >> "$work/life.txt"

for f in podman ctr; do
  python3 - "$work/$f.json" "$f" << 'EOT'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["results"]:
    codes = set(r.get("exit_codes", [0]))
    note = "" if codes == {0} else f"  (exit codes {sorted(codes)}: fails)"
    print(f"{sys.argv[2]:7} {r['command']:8} median {r['median']*1000:7.1f} ms{note}")
EOT
done
cat "$work/life.txt"
