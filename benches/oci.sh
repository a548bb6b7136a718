#!/bin/sh
# Start-to-exit time of one container (`true`) through podman and through ctr
# (containerd's runc shim), nixcell vs runc (and crun, which refuses this kind of
# hybrid cgroup layout), medians by hyperfine. As root; the image is a tarball of the
# busybox closure, the same for every runtime (nixcell takes the root from its
# annotation, the others from the image).
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
