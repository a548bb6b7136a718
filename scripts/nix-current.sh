#!/usr/bin/env bash
# shellcheck disable=SC2016 # dpkg-query formats and inner scripts: single quotes on purpose
# The front-end, runner, nixcurrent, devenv, pkgset and services suites under current
# Nix (Debian 13's nix-bin, 2.26), in a Debian 13 root of its own, with its own /nix
# store and its own nix-daemon: the host's Nix and store are never touched. Run as root from anywhere; safe to run again.
#
#   scripts/nix-current.sh           set the root up (what is missing) and run the suites
#   scripts/nix-current.sh setup     only set the root up
#   scripts/nix-current.sh shell     a shell in the root (daemon running), for debugging
#
# The root lives in target/nix-current/ (a fresh clone makes it anew): debootstrap of
# Debian 13 ("trixie") from the host's apt mirror, then nix-bin and the Debian packages
# the offline package set (tests/fixtures/pkgs) imports. Its /etc/nix/nix.conf is the
# TEST MACHINE's offline set-up (no binary cache, no build sandbox because the package
# set reads host files); nixcell itself never sets either.
#
# The suites run as root inside a private mount namespace whose root is that root, with
# /proc, /dev, /sys (cgroups) and this repository bound in at the same path; they run
# their rootless cases as the test user (same uid as on the host) themselves. One line a
# suite: `nix-current SUITE (Nix X): ok|FAILED: tests ok N, failed M; Ts`.
#
# Environment: NIXCELL_TEST_USER (default nixcell-test), NIX_CURRENT_SUITES (default
# "frontend runner nixcurrent devenv pkgset services"), NIX_CURRENT_FILTER (arguments for each suite binary,
# e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

TEST_USER=${NIXCELL_TEST_USER:-nixcell-test}
SUITE_NAMES=${NIX_CURRENT_SUITES:-frontend runner nixcurrent devenv pkgset services}
work=$repo/target/nix-current
root=$work/root
state=$work/state
MIRROR=${NIX_CURRENT_MIRROR:-http://deb.debian.org/debian}
# What tests/fixtures/pkgs imports (its hostDebs and pythonPackageSpecs), and the tools
# the suites call.
PACKAGES="nix-bin patchelf busybox-static bash coreutils grep sed findutils tzdata
  python3 python3-numpy python3-pandas python3-pandas-lib python3-openpyxl
  python3-et-xmlfile python3-dateutil python3-tz python3-six python3-yaml
  python3-markupsafe python3-jinja2 python3-lxml python3-chardet
  redis-server redis-tools jq ripgrep postgresql python3-psycopg2 file
  git util-linux procps iproute2 ca-certificates"

say() { printf '[nix-current] %s\n' "$*" >&2; }
die() { printf '[nix-current] error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
id "$TEST_USER" > /dev/null 2>&1 || die "user $TEST_USER is missing (scripts/setup.sh)"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

# --- 1. the Debian 13 root ------------------------------------------------------------
setup_root() {
  command -v debootstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
  mkdir -p "$work"
  if [ ! -x "$root/usr/bin/apt-get" ]; then
    say "debootstrap trixie into $root"
    rm -rf "$root.tmp"
    debootstrap --variant=minbase trixie "$root.tmp" "$MIRROR" > "$work/debootstrap.log" 2>&1 ||
      { tail -n 15 "$work/debootstrap.log" >&2; die "debootstrap failed (see $work/debootstrap.log)"; }
    mv "$root.tmp" "$root"
  fi
  # Packages' maintainer scripts must not start services (redis, postgres) here.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2> /dev/null || true
  # Debian 13's patchelf (0.18) makes the offline package set's copy of Debian's
  # non-PIE python3.13 crash in ld.so; Debian 12's (0.14, the host suites') does not.
  # Only patchelf comes from Debian 12.
  printf 'deb %s bookworm main\n' "$MIRROR" > "$root/etc/apt/sources.list.d/bookworm.list"
  printf '%s\n' 'Package: *' 'Pin: release n=bookworm' 'Pin-Priority: 100' '' \
    'Package: patchelf' 'Pin: release n=bookworm' 'Pin-Priority: 1001' \
    > "$root/etc/apt/preferences.d/patchelf-from-bookworm"
  local missing="" p
  for p in $PACKAGES; do
    case "$(in_root dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$p" 2> /dev/null || true)" in
      "ii  0.14."* | "hi  0.14."*) ;;
      [ih]i*) if [ "$p" = patchelf ]; then missing="$missing $p"; fi ;;
      *) missing="$missing $p" ;;
    esac
  done
  if [ -n "$missing" ]; then
    say "installing in the root:$missing"
    # shellcheck disable=SC2086
    unshare -m --propagation private sh -c '
      mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift &&
      chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends --allow-downgrades $* && apt-get clean"' \
      "$root" "$root" $missing > "$work/apt.log" 2>&1 ||
      { tail -n 15 "$work/apt.log" >&2; die "apt-get in the root failed (see $work/apt.log)"; }
  fi
  # The test machine's offline Nix configuration (never nixcell's own): no binary cache
  # is reachable, and the offline package set's builders read the root's Debian files.
  mkdir -p "$root/etc/nix"
  cat > "$root/etc/nix/nix.conf" << 'EOF'
# Written by scripts/nix-current.sh: the offline TEST set-up of this root, not a
# recommendation. No binary cache is reachable from the test machine, and the offline
# package set (tests/fixtures/pkgs) imports files of this root, so builds are not
# sandboxed.
substituters =
sandbox = false
build-users-group = nixbld
EOF

  # Groups and users as scripts/setup.sh makes them on the host; the test user has the
  # host's uid and gid, so files the suites make in the repository are its own.
  local uid gid home n
  uid=$(id -u "$TEST_USER")
  gid=$(id -g "$TEST_USER")
  home=/home/$TEST_USER
  for g in nix-users nixbld; do
    in_root getent group "$g" > /dev/null || in_root groupadd --system "$g"
  done
  for n in 1 2 3 4 5 6 7 8 9 10; do
    in_root id "nixbld$n" > /dev/null 2>&1 ||
      in_root useradd --system --home-dir /var/empty --gid nixbld --groups nixbld \
        --no-user-group --shell /usr/sbin/nologin "nixbld$n"
  done
  if ! in_root id "$TEST_USER" > /dev/null 2>&1; then
    in_root getent group "$gid" > /dev/null || in_root groupadd --gid "$gid" "$TEST_USER"
    in_root useradd --uid "$uid" --gid "$gid" --groups nix-users --create-home \
      --home-dir "$home" --shell /bin/sh "$TEST_USER"
  fi
  mkdir -p "$root/nix/var/nix/daemon-socket" "$root/nix/var/nix/gcroots/per-user" \
    "$root/nix/var/nix/profiles/per-user"
  in_root chgrp nix-users /nix/var/nix/daemon-socket
  chmod 0770 "$root/nix/var/nix/daemon-socket"
  chmod 1777 "$root/nix/var/nix/gcroots/per-user" "$root/nix/var/nix/profiles/per-user"
  # What the suites keep under target/ (GC roots, caches, work directories) belongs to
  # this root's store: bound over the host's, so neither sees the other's.
  mkdir -p "$state/gcroots" "$state/test-cache" "$state/test-work"
  chmod 0755 "$state" "$state"/*
  nix_version=$(in_root dpkg-query -W -f='${Version}' nix-bin | sed 's/[+-].*//')
  say "root ready: Nix $nix_version, $(in_root python3 --version)"
}

# --- 2. inside: a private mount namespace whose root is the Debian 13 root ----------------------
# enter CMD...: runs CMD (a string for sh) in the root with the mounts and the daemon.
enter() {
  local gitdirs="" d
  # A worktree's .git names directories outside it: bound in too (read-only), as is a
  # CARGO_TARGET_DIR outside the repository (the suites run its binaries).
  for d in $(git -C "$repo" rev-parse --path-format=absolute --git-dir --git-common-dir 2> /dev/null || true) \
    ${CARGO_TARGET_DIR:+"$(realpath -m "$CARGO_TARGET_DIR")"}; do
    case "$d" in "$repo" | "$repo"/*) ;; *) [ -d "$d" ] && gitdirs="$gitdirs $d" ;; esac
  done
  unshare -m --propagation private env ROOT="$root" REPO="$repo" STATE="$state" \
    GITDIRS="$gitdirs" CMD="$1" sh -ec '
    # pivot_root, not chroot (a chrooted process may not create user namespaces): the
    # root must be a mount point.
    mount --bind "$ROOT" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount --rbind /sys "$ROOT/sys"
    mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
    mkdir -p "$ROOT$REPO"
    mount --rbind "$REPO" "$ROOT$REPO"
    for d in gcroots test-cache test-work; do
      mkdir -p "$REPO/target/$d"
      mount --bind "$STATE/$d" "$ROOT$REPO/target/$d"
    done
    for d in $GITDIRS; do
      mkdir -p "$ROOT$d" && mount --bind -o ro "$d" "$ROOT$d"
    done
    mkdir -p "$ROOT/.oldroot"
    cd "$ROOT"
    pivot_root . .oldroot
    umount -l /.oldroot
    exec /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      REPO="$REPO" CMD="$CMD" /bin/sh -c "
      rm -f /nix/var/nix/daemon-socket/socket
      setsid nix-daemon > /tmp/nix-daemon.log 2>&1 < /dev/null &
      daemon=\$!
      trap \"kill \$daemon 2> /dev/null\" INT TERM
      for i in \$(seq 100); do [ -S /nix/var/nix/daemon-socket/socket ] && break; sleep 0.1; done
      cd \"\$REPO\"
      rc=0
      sh -c \"\$CMD\" || rc=\$?
      kill \$daemon 2> /dev/null || true
      wait \$daemon 2> /dev/null || true
      exit \$rc"'
}

# --- 3. the suites ---------------------------------------------------------------------
run_suites() {
  local s b log t0 t1 passed failed status total_failed=0 args=()
  for s in $SUITE_NAMES; do args+=(--test "$s"); done
  cargo build --locked --bins
  local bins
  bins=$(cargo test --locked --no-run "${args[@]}" --message-format=json 2> /dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | sort -u)
  [ -n "$bins" ] || die "cargo test --no-run gave no test executables"
  # The test user runs the binaries (never opened into the root: its modes are its own).
  find "$repo/target" -path "$work" -prune -o -exec chmod o+rX {} + 2> /dev/null || true
  for s in $SUITE_NAMES; do
    b=$(printf '%s\n' "$bins" | grep "/deps/$s-" | head -1)
    [ -n "$b" ] || die "no test binary for suite $s"
    log=$work/$s.log
    t0=$(date +%s)
    enter "timeout 1800 '$b' --test-threads=2 --color never ${NIX_CURRENT_FILTER:-}" > "$log" 2>&1 || true
    t1=$(date +%s)
    passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    failed=$(sed -n 's/^test result: [a-zA-Z]*\. [0-9]* passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    if grep -q '^test result: ok\.' "$log"; then status=ok; else status=FAILED; fi
    # A suite that did not finish counts as one failure.
    if ! grep -q '^test result:' "$log"; then failed=$((failed + 1)); fi
    [ "$status" = ok ] || grep -E '^(---- |test .* FAILED$)' "$log" | sed 's/^/  /' >&2 || true
    echo "nix-current $s (Nix $nix_version): $status: tests ok $passed, failed $failed; $((t1 - t0))s (log $log)"
    total_failed=$((total_failed + failed))
  done
  [ "$total_failed" = 0 ]
}

case "${1:-run}" in
  setup) setup_root ;;
  shell) setup_root; enter "sh -i" ;;
  run) setup_root; run_suites ;;
  *) die "usage: $0 [run|setup|shell]" ;;
esac
