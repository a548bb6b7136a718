#!/bin/sh
# Check nixcell as an OCI runtime through the real engines, started as root:
#   podman (`podman --runtime …/nixcell-runc`, rootful, and rootless as the test user),
#   with an image imported from a tarball of a closure (no registry) and images whose root
#   is a plain directory (no closure annotation), and containerd (`ctr run --runc-binary …/nixcell-runc`,
#   through the io.containerd.runc.v2 shim) against a containerd of its own (root,
#   state, socket and config under target/oci-engines; the shim keeps runc's state under
#   /run/containerd/runc/<namespace>, a namespace of this script, removed at the end).
# Each check prints PASS or FAIL; the exit status is non-zero when one fails.
#
#   scripts/oci-engines.sh
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "oci-engines: run as root" >&2; exit 2; }
for t in podman containerd ctr; do
  command -v "$t" > /dev/null || { echo "oci-engines: $t is missing (scripts/setup.sh installs it)" >&2; exit 2; }
done
export NIX_CONFIG="substituters =
${NIX_CONFIG:-}"
cargo build --locked --quiet
work="$repo/target/oci-engines"
rm -rf "$work"
mkdir -p "$work"
runtime="$work/nixcell-runc"
ln -s "$repo/target/debug/nixcell" "$runtime"
bb=$(scripts/build-fixture-env.sh busybox | tail -n 1)

failed=0
pass() { echo "PASS  $1"; }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
# check NAME EXPECTED-STATUS EXPECTED-OUTPUT-SUBSTRING COMMAND...
check() {
  what=$1 want=$2 text=$3
  shift 3
  set +e
  out=$("$@" 2>&1)
  rc=$?
  set -e
  if [ "$rc" = "$want" ] && case "$out" in *"$text"*) true ;; *) false ;; esac; then
    pass "$what"
  else
    fail "$what (exit $rc, want $want; output: $(printf %s "$out" | tail -n 3 | tr '\n' ' '))"
  fi
}

# An image made of exactly the closure: a tarball of its store paths.
# shellcheck disable=SC2046
tar -cf "$work/closure.tar" $(nix-store -qR "$bb")

# A plain directory root without a closure: Debian's static busybox and its applets.
dirroot="$work/bbroot"
mkdir -p "$dirroot/bin" "$dirroot/etc"
cp /usr/bin/busybox "$dirroot/bin/"
for a in sh cat echo id touch grep ls tty sleep nc mkdir rm; do ln -s busybox "$dirroot/bin/$a"; done
echo "from the image" > "$dirroot/etc/img"
tar -C "$dirroot" -cf "$work/bbroot.tar" .

# --- podman (rootful) ---
image=localhost/nixcell-oci-check
podman import -q "$work/closure.tar" "$image" > /dev/null
pod() {
  podman --runtime "$runtime" run --rm --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --annotation "dev.nixcell.closure=$bb" "$@"
}
check "podman: run, output and exit status" 3 "hello" pod "$image" sh -c 'echo hello; exit 3'
check "podman: --memory reaches the cgroup (OOM kill)" 137 "" \
  pod --memory 64m "$image" dd if=/dev/zero of=/dev/null bs=200M count=1
# podman leaves the network namespace out of config.json for --network host: the
# container would share the host's; a cell never does, so the runtime refuses it.
check "podman: --network host is refused (no network namespace listed)" 126 "no network namespace" \
  podman --runtime "$runtime" run --rm --network host \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --annotation "dev.nixcell.closure=$bb" "$image" true
# --uidmap/--gidmap (as --userns=auto picks them): the container runs as the host
# identity the mapping gives its user, and writes a volume chowned to it as that id.
mkdir -p "$work/vol"
chown 200000:200000 "$work/vol"
uidmapped() {
  pod --uidmap 0:200000:65536 --gidmap 0:200000:65536 -v "$work/vol:/vol" "$image" \
    sh -c 'cat /proc/self/uid_map; touch /vol/made' &&
    [ "$(stat -c %u:%g "$work/vol/made")" = 200000:200000 ]
}
check "podman: --uidmap gives the container's host identity" 0 "200000" uidmapped
check "podman: --pids-limit reaches the cgroup" 0 "fork" \
  pod --pids-limit 10 "$image" sh -c '(for i in $(seq 30); do sleep 1 & done; wait) 2>&1; true'
# podman's 11 default capabilities are within the default profile's oci_allow.
check "podman: its default capabilities are granted" 0 "CapEff:	00000000800405fb" \
  pod "$image" grep CapEff /proc/self/status
check "podman: --cap-add SYS_ADMIN refused by name" 126 "CAP_SYS_ADMIN" \
  pod --cap-add SYS_ADMIN "$image" true
check "podman: --cap-drop ALL leaves none" 0 "CapEff:	0000000000000000" \
  pod --cap-drop ALL "$image" grep CapEff /proc/self/status
check "podman: mount refused inside" 0 "refused" \
  pod "$image" sh -c 'mount -t tmpfs x /tmp 2>/dev/null && echo mounted || echo refused'
check "podman: the root is the closure" 0 "$(nix-store -qR "$bb" | wc -l)" \
  pod "$image" sh -c 'ls /nix/store | wc -l'
# The container's process as config.json says (podman's default seccomp profile
# applies to every run above, stacked under nixcell's own filters).
check "podman: --ulimit reaches the container" 0 "512:768" \
  pod --ulimit nofile=512:768 "$image" awk '/open files/ {print $4 ":" $5}' /proc/self/limits
check "podman: --sysctl and --oom-score-adj reach the container" 0 "1 300" \
  pod --sysctl net.ipv4.ip_forward=1 --oom-score-adj 300 "$image" \
  sh -c 'echo $(cat /proc/sys/net/ipv4/ip_forward /proc/self/oom_score_adj)'
printf '%s' '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}' \
  > "$work/seccomp.json"
check "podman: --security-opt seccomp= stacks under nixcell's filters" 1 "Function not implemented" \
  pod --security-opt "seccomp=$work/seccomp.json" "$image" mkdir /tmp/x
# On a pty of its own (Python's pty.spawn keeps copying the output after its stdin, here
# /dev/null, ends; script(1) given an ended stdin can end before the container's output).
check "podman: -it gives a terminal" 0 "isatty" python3 -c \
  'import os, pty, sys; os.dup2(os.open("/dev/null", os.O_RDONLY), 0); sys.exit(pty.spawn(sys.argv[1:]) >> 8)' \
  podman --runtime "$runtime" run --rm -it --network none --ulimit nofile=1024:1024 \
  --ulimit nproc=1024:1024 --annotation "dev.nixcell.closure=$bb" "$image" \
  sh -c 'test -t 0 && test -t 1 && echo isatty'
name="nixcell-oci-check-$$"
podman --runtime "$runtime" run -d --name "$name" --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --annotation "dev.nixcell.closure=$bb" "$image" sleep 100 > /dev/null
check "podman: exec (same layers and capabilities, exit status)" 4 "CapEff:	00000000800405fb" \
  podman exec "$name" sh -c 'grep CapEff /proc/self/status; exit 4'
check "podman: top lists the container's processes" 0 "sleep 100" podman top "$name"
podman stop -t 5 "$name" > /dev/null
check "podman: stop (SIGTERM reaches the command)" 0 "143" \
  podman inspect --format '{{.State.ExitCode}}' "$name"
podman rm -f "$name" > /dev/null
podman --runtime "$runtime" run -d --name "$name" --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --annotation "dev.nixcell.closure=$bb" "$image" sleep 100 > /dev/null
podman kill -s KILL "$name" > /dev/null
podman wait "$name" > /dev/null 2>&1 || true
check "podman: kill -s KILL" 0 "137" podman inspect --format '{{.State.ExitCode}}' "$name"
podman rm -f "$name" > /dev/null
podman rmi -f "$image" > /dev/null
podd() {
  podman --runtime "$runtime" run --rm --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$@"
}
check "podman --rootfs: a directory root without a closure, exit status" 3 "from the image" \
  podd --rootfs "$dirroot" sh -c 'cat /etc/img; exit 3'
writes_stay() {
  podd --rootfs "$dirroot" sh -c 'touch /etc/new /top && grep -c " / overlay " /proc/mounts' &&
    [ ! -e "$dirroot/top" ] && [ ! -e "$dirroot/etc/new" ]
}
check "podman --rootfs: writes go to the container's layer, the directory stays" 0 "1" writes_stay
podd -d --rm=false --name "$name" --rootfs "$dirroot" sleep 100 > /dev/null
check "podman --rootfs: exec in a directory root (exit status)" 4 "from the image" \
  podman exec "$name" sh -c 'cat /etc/img; exit 4'
podman rm -f "$name" > /dev/null
check "podman --rootfs -it: the terminal is /dev/console" 0 "/dev/console" python3 -c \
  'import os, pty, sys; os.dup2(os.open("/dev/null", os.O_RDONLY), 0); sys.exit(pty.spawn(sys.argv[1:]) >> 8)' \
  podman --runtime "$runtime" run --rm -it --network none --ulimit nofile=1024:1024 \
  --ulimit nproc=1024:1024 --rootfs "$dirroot" sh -c 'tty'
podman import -q "$work/bbroot.tar" "$image-dir" > /dev/null
# An imported image without a closure: podman's overlay storage mounts an overlayfs as
# the root; its layers become the container's read-only lowers.
img_writes_stay() {
  podd "$image-dir" sh -c 'cat /etc/img; id -u; touch /etc/new /top && grep -c " / overlay " /proc/mounts; exit 4'
  rc=$?
  for d in /var/lib/containers/storage/overlay/*/diff; do
    [ ! -e "$d/top" ] && [ ! -e "$d/etc/new" ] || { echo "a write reached $d"; return 1; }
  done
  return $rc
}
check "podman: an imported image (overlayfs root) runs with nixcell's layers, writes stay the container's" \
  4 "from the image" img_writes_stay
check "podman: an imported image, podman's capabilities and nixcell's filters" 0 "CapEff:	00000000800405fb" \
  podd "$image-dir" sh -c 'grep -E "CapEff|Seccomp_filters|NoNewPrivs" /proc/self/status'
# A layer that removes a directory and makes it again: podman's storage marks it opaque
# with a trusted xattr, which the container's overlay (in its user namespace) cannot read.
mkdir -p "$work/opq"
printf 'FROM %s\nRUN mkdir /d && echo old > /d/old\nRUN rm -rf /d && mkdir /d\n' "$image-dir" \
  > "$work/opq/Containerfile"
podman build -q --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  -t "$image-opq" "$work/opq" > /dev/null
check "podman: an image with an opaque directory is refused by name" 126 \
  "directory d has the xattr trusted.overlay.opaque" podd "$image-opq" true
podman save -q -o "$work/opq-image.tar" "$image-opq"
podman rmi -f "$image-opq" > /dev/null

# --- podman, rootless (as the test user of scripts/setup.sh) ---
rl="$work/rootless"
mkdir -p "$rl"
cp "$work/closure.tar" "$work/bbroot.tar" "$rl/"
chown -R nixcell-test "$rl"
chmod o+x "$work"
as_user() {
  setpriv --reuid nixcell-test --regid nixcell-test --init-groups \
    env HOME="$rl/home" XDG_RUNTIME_DIR="$rl/xdg" PATH=/usr/bin:/bin:/usr/sbin "$@"
}
as_user sh -c 'mkdir -p "$HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"'
as_user podman import -q "$rl/closure.tar" "$image" > /dev/null
check "podman rootless: run, output and exit status" 3 "rootless" \
  as_user podman --runtime "$runtime" run --rm --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --annotation "dev.nixcell.closure=$bb" "$image" sh -c 'echo rootless; exit 3'
check "podman rootless: podman's default capabilities inside" 0 "CapEff:	00000000800405fb" \
  as_user podman --runtime "$runtime" run --rm --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --annotation "dev.nixcell.closure=$bb" "$image" grep CapEff /proc/self/status
as_user podman rmi -f "$image" > /dev/null 2>&1 || true
as_user podman import -q "$rl/bbroot.tar" "$image-dir" > /dev/null
check "podman rootless: an imported image without a closure (reads, writes, exit status)" 4 \
  "from the image" as_user podman --runtime "$runtime" run --rm --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$image-dir" \
  sh -c 'cat /etc/img; touch /etc/new && exit 4'
as_user podman rmi -f "$image-dir" > /dev/null 2>&1 || true

# --- containerd, its own daemon ---
ctd="$work/containerd"
mkdir -p "$ctd/rootfs"
tar -xf "$work/closure.tar" -C "$ctd/rootfs"
. scripts/oci-containerd.sh
start_containerd "$ctd"
ns="nixcell-oci-check-$$"
cleanup() {
  kill "$ctd_pid" 2> /dev/null || true
  wait "$ctd_pid" 2> /dev/null || true
  rm -rf "/run/containerd/runc/$ns"
  # The parent of the containers' cgroups (cgroupsPath /NAMESPACE/ID), left as by runc.
  for d in /sys/fs/cgroup/*/"$ns"; do rmdir "$d" 2> /dev/null || true; done
}
trap cleanup EXIT
c() { ctr -a "$ctd/containerd.sock" -n "$ns" "$@"; }
# crun_ "ENGINE FLAGS" ID COMMAND...: the rootfs (unused: the closure is the root) and
# the id come after the flags.
crun_() {
  flags=$1
  shift
  # shellcheck disable=SC2086
  c run --runtime io.containerd.runc.v2 --runc-binary "$runtime" \
    --annotation "dev.nixcell.closure=$bb" $flags --rootfs "$ctd/rootfs" "$@"
}
check "containerd: run, output and exit status" 5 "hi ctr" crun_ --rm t1 sh -c 'echo hi ctr; exit 5'
check "containerd: --memory-limit reaches the cgroup (OOM kill)" 137 "" \
  crun_ "--rm --memory-limit 67108864" t2 dd if=/dev/zero of=/dev/null bs=200M count=1
# containerd's default spec asks runc's 14: all within the default profile's oci_allow.
check "containerd: its default capabilities are granted" 0 "CapEff:	00000000a80425fb" \
  crun_ --rm t3 grep CapEff /proc/self/status
check "containerd: --privileged refused (CAP_SYS_ADMIN named)" 1 "CAP_SYS_ADMIN" \
  crun_ "--rm --privileged" t3p grep CapEff /proc/self/status
check "containerd: --seccomp (its default profile) stacks under nixcell's filters" 0 "stacked" \
  crun_ "--rm --seccomp" t5 sh -c 'n=$(grep Seccomp_filters /proc/self/status | cut -f2); [ "$n" -gt 3 ] && echo stacked'
crun_ -d t4 sleep 100 > /dev/null
check "containerd: task ls shows it running" 0 "RUNNING" c task ls
check "containerd: task exec (exit status)" 3 "in t4" \
  c task exec --exec-id e1 t4 sh -c 'echo in t4; exit 3'
check "containerd: --rootfs DIR without a closure (exit status)" 6 "from the image" \
  c run --runtime io.containerd.runc.v2 --runc-binary "$runtime" --rm --rootfs "$dirroot" \
  t5 sh -c 'cat /etc/img; exit 6'
c task kill -s SIGTERM t4
i=0
while c task ls | grep -q "t4.*RUNNING" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check "containerd: task kill reaches the command (exit 143)" 0 "exit code 143" c task delete t4
c container rm t4 > /dev/null 2>&1 || true
# linux.resources beyond the limits land in the container's cgroup at cgroupsPath
# (/NAMESPACE/ID), as runc writes them.
crun_ "-d --cpu-shares 512" t5 sleep 100 > /dev/null
check "containerd: --cpu-shares reaches the container's cgroup at cgroupsPath" 0 "512" \
  cat "/sys/fs/cgroup/cpu/$ns/t5/cpu.shares"
c task kill -s SIGKILL t5
i=0
while c task ls | grep -q "t5.*RUNNING" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
c task delete t5 > /dev/null 2>&1 || true
c container rm t5 > /dev/null 2>&1 || true
# A pod: a pause-like container, and one joining its network, ipc and uts namespaces
# by path (what the kubelet asks through CRI), under a profile that allows network
# (a joined network namespace is the pod's) and the pod's port.
printf 'extends = "default"\n[network]\nallow = ["example.com:443"]\n[landlock]\nallow_ports = [8080]\n' \
  > "$work/pod.toml"
podp="--annotation dev.nixcell.profile=$work/pod.toml"
crun_ "-d $podp" p0 \
  sh -c 'while true; do echo pong | nc -l -p 8080; done' > /dev/null
ppid=$(c task ls | awk '$1 == "p0" { print $2 }')
# The pod's host name and a SysV segment, set from the host (ctr has no --hostname).
nsenter --uts="/proc/$ppid/ns/uts" hostname podhost
nsenter --ipc="/proc/$ppid/ns/ipc" ipcmk -M 4096 > /dev/null
joins="--with-ns network:/proc/$ppid/ns/net --with-ns ipc:/proc/$ppid/ns/ipc --with-ns uts:/proc/$ppid/ns/uts"
check "containerd pod: the joined container sees the pod's host name" 0 "podhost" \
  crun_ "--rm $podp $joins" p1 hostname
check "containerd pod: the pod's loopback listener" 0 "pong" \
  crun_ "--rm $podp $joins" p2 sh -c 'for i in 1 2 3 4 5; do nc 127.0.0.1 8080 < /dev/null && break; sleep 0.3; done'
check "containerd pod: the pod's SysV IPC" 0 "2" \
  crun_ "--rm $podp $joins" p3 grep -c . /proc/sysvipc/shm
check "containerd pod: a network join under a no-network profile is refused" 1 "allows no network" \
  crun_ "--rm $joins" p4 true
c task kill -s SIGKILL p0
i=0
while c task ls | grep -q "p0.*RUNNING" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
c task delete p0 > /dev/null 2>&1 || true
for id in p0 p1 p2 p3 p4; do c container rm "$id" > /dev/null 2>&1 || true; done
# An image imported into this containerd (no --rootfs: its overlayfs snapshotter mounts
# the root), as the CRI plugin runs a pod: a pause-like sandbox from the image, then a
# container with the closure annotation joining its namespaces.
podman save -q -o "$work/bbroot-image.tar" "$image-dir"
c image import "$work/bbroot-image.tar" > /dev/null
irun() {
  c run --runtime io.containerd.runc.v2 --runc-binary "$runtime" "$@"
}
check "containerd: an imported image (overlayfs snapshot) runs, exit status" 7 "from the image" \
  irun --rm "$image-dir:latest" i1 sh -c 'cat /etc/img; touch /etc/new && exit 7'
irun -d $podp "$image-dir:latest" s0 sh -c 'while true; do echo pong | nc -l -p 8080; done' > /dev/null
spid=$(c task ls | awk '$1 == "s0" { print $2 }')
sjoins="--with-ns network:/proc/$spid/ns/net --with-ns ipc:/proc/$spid/ns/ipc --with-ns uts:/proc/$spid/ns/uts"
check "containerd pod from an image: a closure container reaches the sandbox's listener" 0 "pong" \
  crun_ "--rm $podp $sjoins" s1 sh -c 'for i in 1 2 3 4 5; do nc 127.0.0.1 8080 < /dev/null && break; sleep 0.3; done'
check "containerd pod from an image: an image container joining the sandbox's namespaces mounts their mqueue (and sysfs)" 0 "/dev/mqueue mqueue" \
  irun --rm $podp $sjoins "$image-dir:latest" s2 grep ' /dev/mqueue ' /proc/mounts
c task kill -s SIGKILL s0
i=0
while c task ls | grep -q "s0.*RUNNING" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
c task delete s0 > /dev/null 2>&1 || true
for id in i1 s0 s1 s2; do c container rm "$id" > /dev/null 2>&1 || true; done
c image import "$work/opq-image.tar" > /dev/null
check "containerd: an image with an opaque directory is refused by name" 1 \
  "has the xattr trusted.overlay.opaque" irun --rm "$image-opq:latest" o1 true
c container rm o1 > /dev/null 2>&1 || true
check "containerd: nothing left in the runtime's state" 0 "" \
  sh -c "ls -A /run/containerd/runc/$ns 2>/dev/null | grep . && exit 1 || exit 0"

podman rmi -f "$image-dir" > /dev/null
echo "oci-engines: $failed failed"
[ "$failed" = 0 ]
