#!/usr/bin/env bash
# The kernel matrix: boots Debian's own kernels in QEMU and runs nixcell's integration
# suites inside, as root and (from the suites themselves) as the unprivileged test user.
#
#   scripts/kernel-matrix.sh [CASE...]       # default: every case below
#
# Cases (NAME: kernel, boot parameters, what it proves):
#   6.1            Debian 12 kernel, cgroup v2 with controllers, Landlock ABI 2
#   6.12           Debian 13 kernel, cgroup v2, Landlock ABI 6
#   6.1-nolandlock the 6.1 kernel booted with lsm= without landlock
#   6.1-nouserns   the 6.1 kernel with user.max_user_namespaces=0
#
# The guest shares this machine's root read-only over 9p, with a tmpfs overlay on top,
# so the store, the test binaries and the test user are there as they are. Everything
# it downloads or builds lives under target/kernel-matrix; a second run reuses it.
# Each guest has a time limit (KMX_GUEST_TIMEOUT seconds, default 600).
#
# Output: one line per case, "kernel-matrix CASE (...): ok N, failed M, ...", then
# "kernel-matrix: all K cases ok" or "kernel-matrix: F of K cases FAILED"; exit 0
# only when every case passed. The guest logs are in target/kernel-matrix/logs/.
set -euo pipefail

repo=${KMX_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
# The host part runs from a copy, so that editing the checkout cannot change a
# running matrix under bash's feet.
if [ "${1:-}" != --guest ] && [ -z "${KMX_REPO:-}" ]; then
  mkdir -p "$repo/target/kernel-matrix"
  cp "$0" "$repo/target/kernel-matrix/run.sh"
  KMX_REPO=$repo exec bash "$repo/target/kernel-matrix/run.sh" "$@"
fi
work=$repo/target/kernel-matrix
guest_timeout=${KMX_GUEST_TIMEOUT:-600}
mem=${KMX_MEM:-3G}
cpus=${KMX_CPUS:-2}
# ===== the guest part: PID 1 of the switched root (scripts/kernel-matrix-init.sh) =====
if [ "${1:-}" = --guest ]; then
  set +e
  kcase=$2
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  trap 'echo KMX-DONE; sync; echo o > /proc/sysrq-trigger; sleep 30' EXIT
  mkdir -p /kmx-disk && mount -t ext4 /dev/vda /kmx-disk \
    && mkdir -p /kmx-disk/tmp /kmx-disk/test-work && chmod 1777 /kmx-disk/tmp \
    && mount --bind /kmx-disk/tmp /tmp && mkdir -p "$repo/target/test-work" \
    && mount --bind /kmx-disk/test-work "$repo/target/test-work" \
    || echo "KMX-CHECK FAIL disk: cannot mount the guest's ext4 disk"
  mount -t tmpfs run /run
  mkdir -p /dev/pts /dev/shm && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
  mount -t tmpfs shm /dev/shm
  mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
  ip link set lo up 2> /dev/null || true
  hostname kmx
  # shellcheck source=/dev/null
  [ -f "$repo/target/kernel-matrix/guest.env" ] && . "$repo/target/kernel-matrix/guest.env"
  # shellcheck source=/dev/null
  . "$repo/scripts/kernel-matrix-guest.sh"
  guest_main "$kcase"
  exit 0
fi

say() { printf 'kernel-matrix: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the guest runs the suites as root and as the test user)"

all_cases=(6.1 6.12 6.1-nolandlock 6.1-nouserns)
if [ $# -gt 0 ]; then cases=("$@"); else cases=("${all_cases[@]}"); fi
for c in "${cases[@]}"; do
  case " ${all_cases[*]} " in *" $c "*) ;; *) die "unknown case '$c' (known: ${all_cases[*]})" ;; esac
done

# --- 1. host tools -----------------------------------------------------------------
need=()
command -v qemu-system-x86_64 > /dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2> /dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v xz > /dev/null || need+=(xz-utils)
command -v cpio > /dev/null || need+=(cpio)
command -v strings > /dev/null || need+=(binutils)
command -v file > /dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi

# --- 2. kernels, from a private apt configuration (the host's is not changed) -------
mkdir -p "$work"/apt/lists/partial "$work"/apt/cache/archives/partial "$work"/debs "$work"/logs
cat > "$work/apt/sources.list" << 'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
EOF
apt_opts=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  -o APT::Sandbox::User=root)
if [ -z "$(find "$work/apt/lists" -name '*Packages*' -mtime -7 2> /dev/null | head -1)" ]; then
  say "apt-get update (private lists under $work/apt)"
  apt-get "${apt_opts[@]}" update -qq
fi

# kernel_dir SERIES: the extracted kernel package of a series (6.1 = bookworm, 6.12 = trixie).
kernel_dir() {
  local series=$1 ver pkg deb dir
  ver=$(apt-cache "${apt_opts[@]}" madison linux-image-amd64 | awk -v s="$series" '$3 ~ "^"s"\\." { print $3; exit }')
  [ -n "$ver" ] || die "no linux-image-amd64 $series.* in the archive"
  pkg=$(apt-cache "${apt_opts[@]}" show "linux-image-amd64=$ver" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
  [ -n "$pkg" ] || die "cannot resolve the kernel package of linux-image-amd64=$ver"
  dir=$work/kernels/$pkg
  if [ ! -f "$dir/.done" ]; then
    deb=$(find "$work/debs" -name "${pkg}_*.deb" | head -1)
    if [ -z "$deb" ]; then
      say "downloading $pkg ($ver)"
      (cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "$pkg" > /dev/null)
      deb=$(find "$work/debs" -name "${pkg}_*.deb" | head -1)
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir"
    touch "$dir/.done"
  fi
  echo "$dir"
}

# --- 3. the guest: an initramfs with busybox, the modules for 9p/overlay, an init ----
# mod_file ROOT NAME: the module file of NAME (dashes and underscores are the same).
mod_file() {
  local pat
  pat=$(printf '%s' "$2" | sed 's/[-_]/[-_]/g')
  find "$1" -regextype posix-extended -regex ".*/${pat}\.ko(\.xz|\.zst)?" | head -1
}
# mod_deps FILE: the modules FILE depends on (its "depends=" modinfo field).
mod_deps() {
  case $1 in
    *.xz) xz -dc "$1" ;;
    *.zst) zstd -dc "$1" ;;
    *) cat "$1" ;;
  esac | strings | sed -n 's/^depends=//p' | tr ',' ' '
}

build_initramfs() {
  local kdir=$1 out=$2 moddir tmp order=() seen=" "
  moddir=$(find "$kdir" -maxdepth 4 -type d -path '*/lib/modules/*' | head -1)
  [ -n "$moddir" ] || die "no modules in $kdir"
  add() {
    local name=$1 f d
    case $seen in *" $name "*) return ;; esac
    seen="$seen$name "
    f=$(mod_file "$moddir" "$name")
    [ -n "$f" ] || return 0 # built in
    for d in $(mod_deps "$f"); do add "$d"; done
    order+=("$f")
  }
  for m in virtio_pci virtio_console virtio_blk crc32c_generic crc32c-intel 9pnet_virtio 9p overlay ext4; do add "$m"; done
  tmp=$(mktemp -d)
  mkdir -p "$tmp"/{bin,mods,proc,sys,dev,host,newroot,upper}
  cp /bin/busybox "$tmp/bin/busybox"
  local i=0
  for f in "${order[@]}"; do
    i=$((i + 1))
    case $f in
      *.xz) xz -dc "$f" > "$tmp/mods/$(printf %02d $i)-$(basename "$f" .xz)" ;;
      *.zst) zstd -dc "$f" > "$tmp/mods/$(printf %02d $i)-$(basename "$f" .zst)" ;;
      *) cp "$f" "$tmp/mods/$(printf %02d $i)-$(basename "$f")" ;;
    esac
  done
  cp "$repo/scripts/kernel-matrix-init.sh" "$tmp/init"
  chmod 755 "$tmp/init"
  (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

# --- 4. the test binaries (debug: the suites find the binary by its build path) ------
say "building the test binaries"
cd "$repo"
suites=(runner escape profiles)
tb_args=()
for s in "${suites[@]}"; do tb_args+=(--test "$s"); done
cargo build --bins
bins=$(cargo test --no-run "${tb_args[@]}" --message-format=json 2> /dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*"fresh".*/\1/p; s/.*"executable":"\([^"]*\)".*/\1/p' | sort -u)
[ -n "$bins" ] || die "cargo test --no-run gave no test executables"
{
  for b in $bins; do printf '%s\n' "$b"; done
} > "$work/test-binaries"
chmod -R o+rX "$work" 2> /dev/null || true

# --- 5. KVM when it works (a bounded probe), else TCG --------------------------------
accel_for() {
  local kernel=$1 initrd=$2 probe=$work/kvm-probe
  if [ -n "${KMX_ACCEL:-}" ]; then echo "$KMX_ACCEL"; return; fi
  if [ -f "$probe" ]; then cat "$probe"; return; fi
  local a=tcg
  if [ -c /dev/kvm ]; then
    if timeout 40 qemu-system-x86_64 -machine q35,accel=kvm -cpu host -m 512M -nographic -no-reboot \
      -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 nixcell.kmx=probe" \
      < /dev/null 2>&1 | grep -q 'KMX-PROBE-OK'; then
      a=kvm
    fi
  fi
  echo "$a" > "$probe"
  echo "$a"
}

# --- 6. the cases ----------------------------------------------------------------------
case_series() { case $1 in 6.12*) echo 6.12 ;; *) echo 6.1 ;; esac; }
case_cmdline() {
  case $1 in
    6.1-nolandlock) echo "lsm=lockdown,yama" ;;
    6.1-nouserns) echo "nixcell.nouserns=1" ;;
    *) echo "" ;;
  esac
}

# Settings the guest reads (from the shared root): KMX_SUITES overrides the suites.
printf 'KMX_SUITES=%q\n' "${KMX_SUITES:-}" > "$work/guest.env"
results=()
failed_cases=0
start_all=$(date +%s)
for c in "${cases[@]}"; do
  series=$(case_series "$c")
  kdir=$(kernel_dir "$series")
  kernel=$(find "$kdir/boot" -name 'vmlinuz-*' | head -1)
  kver=${kernel##*/vmlinuz-}
  initrd=$work/initramfs-$kver.cpio.gz
  if [ ! -f "$initrd" ] || [ "$initrd" -ot "$repo/scripts/kernel-matrix-init.sh" ] \
     || [ "$initrd" -ot "$repo/scripts/kernel-matrix.sh" ]; then
    say "building the initramfs for $kver"
    build_initramfs "$kdir" "$initrd"
  fi
  accel=$(accel_for "$kernel" "$initrd")
  cpu_opt=(-cpu max)
  [ "$accel" = kvm ] && cpu_opt=(-cpu host)
  log=$work/logs/$c.log
  say "booting $c ($kver, $accel), log: $log"
  # A fresh ext4 disk for /tmp and the tests' work directories: the idmapped mounts of
  # root-owned workdirs need a file system that has them (ext4 does on every kernel
  # here; the 9p/overlay root and, before 6.3, tmpfs do not).
  disk=$work/disk-$c.img
  rm -f "$disk"
  truncate -s 4G "$disk"
  mkfs.ext4 -q -F "$disk"
  # A consistent copy of the Nix database (the host's may be written meanwhile, and a
  # copy of a live SQLite file in WAL mode is not one); the guest uses it writable.
  rm -rf "$work/nixdb" && mkdir -p "$work/nixdb"
  for f in schema big-lock reserved; do
    [ -e "/nix/var/nix/db/$f" ] && cp -a "/nix/var/nix/db/$f" "$work/nixdb/"
  done
  python3 -c 'import sqlite3, sys
src = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=60)
dst = sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.close()' /nix/var/nix/db/db.sqlite "$work/nixdb/db.sqlite"
  t0=$(date +%s)
  rc=0
  timeout --kill-after=10 "$guest_timeout" qemu-system-x86_64 \
    -machine "q35,accel=$accel" "${cpu_opt[@]}" -smp "$cpus" -m "$mem" \
    -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -drive "file=$disk,if=virtio,format=raw,cache=unsafe" \
    -virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap \
    -append "console=ttyS0 panic=-1 quiet $(case_cmdline "$c") nixcell.kmx=$c nixcell.repo=$repo" \
    < /dev/null > "$log" 2>&1 || rc=$?
  t1=$(date +%s)
  rm -f "$disk"
  # Plain lines: no carriage returns, no terminal escapes of the firmware.
  sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/[[:cntrl:]]//g; s/^.*\(KMX-[A-Z]*\)/\1/' "$log" > "$log.txt" && mv "$log.txt" "$log"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    line="kernel-matrix $c ($kver): TIMED OUT after ${guest_timeout}s"
    failed_cases=$((failed_cases + 1))
  else
    passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    nfail=$(sed -n 's/^test result: [a-zA-Z]*\. [0-9]* passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    checks_ok=$(grep -c '^KMX-CHECK ok ' "$log" || true)
    checks_bad=$(grep -c '^KMX-CHECK FAIL ' "$log" || true)
    facts=$(sed -n 's/^KMX-FACTS //p' "$log" | head -1)
    layers=$(sed -n 's/^KMX-LAYERS //p' "$log" | head -1)
    suites_ran=$(sed -n 's/^KMX-SUITES //p' "$log" | head -1)
    done_mark=$(grep -c '^KMX-DONE' "$log" || true)
    status=ok
    if [ "$nfail" != 0 ] || [ "$checks_bad" != 0 ] || [ "$done_mark" = 0 ]; then
      status=FAILED
      failed_cases=$((failed_cases + 1))
    fi
    line="kernel-matrix $c ($kver; $facts): $status: suites ${suites_ran:-none}: tests ok $passed, failed $nfail; checks ok $checks_ok, failed $checks_bad; $((t1 - t0))s${layers:+; default profile: $layers}"
    [ "$done_mark" = 0 ] && line="$line; the guest did not finish (see $log)"
  fi
  results+=("$line")
  printf '%s\n' "$line"
  grep -E '^(KMX-CHECK FAIL|test .* FAILED|failures:$|    [a-z_:]+$)' "$log" | head -40 >&2 || true
done
end_all=$(date +%s)
for r in "${results[@]}"; do printf '%s\n' "$r"; done
if [ "$failed_cases" = 0 ]; then
  echo "kernel-matrix: all ${#cases[@]} cases ok ($((end_all - start_all))s)"
else
  echo "kernel-matrix: $failed_cases of ${#cases[@]} cases FAILED ($((end_all - start_all))s)"
  exit 1
fi
