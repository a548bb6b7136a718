#!/bin/sh
# Prepare a Debian 12 / Ubuntu machine for nixcell's tests and demos.
# Run as root, from anywhere; safe to run again (it only does what is missing).
#
#   1. Debian packages: nix-bin, bubblewrap, the software the offline package
#      set imports (python3 with pandas/openpyxl, redis, jq, ripgrep, ...),
#      benchmark and build tools.
#   2. A Rust toolchain (Debian's cargo as a fallback when none is installed).
#   3. Nix for offline use: no substituters (no binary cache is reachable),
#      and sandbox = false (the package set imports host files).
#   4. Multi-user Nix: group nix-users and a running nix-daemon.
#   5. The unprivileged test user nixcell-test (group nix-users).
#   6. cgroup delegation to that user (v1 per-controller or v2 subtree).
#   7. The fixture's environments, built once (store paths printed).
#
# Environment: NIXCELL_TEST_USER (default nixcell-test),
#              NIXCELL_SETUP_SKIP_BUILD=1 to skip step 7.
set -eu

cd "$(dirname "$0")/.."
repo=$(pwd)

TEST_USER=${NIXCELL_TEST_USER:-nixcell-test}
NIX_CONF=/etc/nix/nix.conf
DAEMON_SOCKET=/nix/var/nix/daemon-socket/socket
DAEMON_LOG=/var/log/nix-daemon.log
DAEMON_PIDFILE=/run/nixcell-nix-daemon.pid

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"

# Nix calls below must not wait on the network either.
NIX_CONFIG="substituters =
${NIX_CONFIG:-}"
export NIX_CONFIG

# ---------------------------------------------------------------------------
# 1. Debian packages
PACKAGES="
  nix-bin patchelf busybox-static bubblewrap
  python3 python3-venv python3-pandas python3-openpyxl python3-tz python3-dateutil tzdata
  redis-server redis-tools jq ripgrep postgresql python3-psycopg2 file
  hyperfine iproute2 util-linux procps git ca-certificates zsh fish groff-base strace
  build-essential pkg-config openssl
  podman containerd runc conmon crun uidmap
"

# With systemd, Debian's unit files for the daemon (which also make the
# groups and build users); without it, step 4 does that part itself.
[ -d /run/systemd/system ] && PACKAGES="$PACKAGES nix-setup-systemd"

missing=""
for p in $PACKAGES; do
  case "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)" in
    ii*) ;;
    *) missing="$missing $p" ;;
  esac
done

if [ -n "$missing" ]; then
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists once, only when they are absent or an install
  # from the present lists fails.
  if ! ls /var/lib/apt/lists/*_Packages > /dev/null 2>&1; then
    apt-get update -q
    updated=1
  fi
  # shellcheck disable=SC2086
  if ! apt-get install -y -q --no-install-recommends $missing; then
    [ -z "${updated:-}" ] || die "apt-get install failed"
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
  fi
  # Debian's redis-server package starts a service on port 6379 where an
  # init system runs; nixcell's tests start their own servers.
else
  say "Debian packages: all present"
fi

# ---------------------------------------------------------------------------
# 2. Rust toolchain: rustup's cargo when present (the crate needs a recent
# compiler); Debian's cargo/rustc only as a fallback.
if command -v cargo > /dev/null 2>&1 || [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
  say "cargo: present"
else
  say "cargo missing: installing Debian's cargo and rustc (may be too old for edition 2024)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cargo rustc
fi

# ---------------------------------------------------------------------------
# 3. Nix for offline use: an empty `substituters` (nix would otherwise retry
# the binary cache on every build). Debian's `sandbox = false` stays as is.
mkdir -p /etc/nix
touch "$NIX_CONF"
nix_conf_changed=""
if grep -Eq '^[[:space:]]*substituters[[:space:]]*=[[:space:]]*$' "$NIX_CONF"; then
  say "$NIX_CONF: substituters already empty"
else
  if grep -Eq '^[[:space:]]*substituters[[:space:]]*=' "$NIX_CONF"; then
    sed -i -E 's|^[[:space:]]*substituters[[:space:]]*=.*$|substituters =|' "$NIX_CONF"
  else
    printf '\n# No binary cache is reachable: build everything locally.\nsubstituters =\n' >> "$NIX_CONF"
  fi
  nix_conf_changed=1
  say "$NIX_CONF: set 'substituters =' (empty)"
fi
# The fixture's builders read the host's Debian files, so builds must not be
# sandboxed. Debian's nix-setup-systemd writes `sandbox = false`; without it
# nix's default is a sandbox.
if grep -Eq '^[[:space:]]*sandbox[[:space:]]*=[[:space:]]*false[[:space:]]*$' "$NIX_CONF"; then
  :
elif grep -Eq '^[[:space:]]*sandbox[[:space:]]*=' "$NIX_CONF"; then
  sed -i -E 's|^[[:space:]]*sandbox[[:space:]]*=.*$|sandbox = false|' "$NIX_CONF"
  nix_conf_changed=1
  say "$NIX_CONF: changed to 'sandbox = false' (the offline package set reads host files)"
else
  printf '\n# The offline package set (tests/fixtures/pkgs) imports host files.\nsandbox = false\n' >> "$NIX_CONF"
  nix_conf_changed=1
  say "$NIX_CONF: set 'sandbox = false'"
fi

# ---------------------------------------------------------------------------
# 4. Multi-user Nix: groups, build users, directories, daemon (what Debian's
# nix-setup-systemd does, for machines without systemd).
for g in nix-users nixbld; do
  if ! getent group "$g" > /dev/null; then
    groupadd --system "$g"
    say "created group $g"
  fi
done
for n in 1 2 3 4 5 6 7 8 9 10; do
  if ! id "nixbld$n" > /dev/null 2>&1; then
    useradd --system --comment "Nix build user $n" --home-dir /var/empty \
      --gid nixbld --groups nixbld --no-user-group \
      --shell "$(command -v nologin || echo /usr/sbin/nologin)" "nixbld$n"
    created_builders=1
  fi
done
[ -z "${created_builders:-}" ] || say "created build users nixbld1..10"
mkdir -p /nix/var/nix/daemon-socket /nix/var/nix/gcroots/per-user /nix/var/nix/profiles/per-user
chgrp nix-users /nix/var/nix/daemon-socket
chmod 0770 /nix/var/nix/daemon-socket
chmod 1777 /nix/var/nix/gcroots/per-user /nix/var/nix/profiles/per-user

# A round trip through the daemon (adds one tiny text file to the store).
daemon_answers() {
  [ -S "$DAEMON_SOCKET" ] && NIX_REMOTE=daemon nix-instantiate --read-write-mode --eval \
    --expr 'builtins.toFile "nixcell-daemon-check" "ok"' > /dev/null 2>&1
}

if [ -d /run/systemd/system ]; then
  if [ -n "$nix_conf_changed" ]; then
    systemctl restart nix-daemon.service || true
  fi
  systemctl enable --now nix-daemon.socket nix-daemon.service > /dev/null 2>&1 || systemctl start nix-daemon.service
  say "nix-daemon: managed by systemd"
else
  # No init system: run the daemon in the background, and restart it after a
  # configuration change only when this script started it (pid file).
  ours=""
  if [ -f "$DAEMON_PIDFILE" ] && kill -0 "$(cat "$DAEMON_PIDFILE")" 2> /dev/null \
     && grep -q nix-daemon "/proc/$(cat "$DAEMON_PIDFILE")/cmdline" 2> /dev/null; then
    ours=$(cat "$DAEMON_PIDFILE")
  fi
  if [ -n "$ours" ] && [ -n "$nix_conf_changed" ]; then
    say "nix-daemon: restarting (pid $ours) to read the new configuration"
    kill "$ours"
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$ours" 2> /dev/null || break; sleep 0.5; done
    rm -f "$DAEMON_PIDFILE"
    ours=""
  fi
  if [ -z "$ours" ] && ! daemon_answers; then
    rm -f "$DAEMON_SOCKET"
    setsid nohup nix-daemon >> "$DAEMON_LOG" 2>&1 < /dev/null &
    echo $! > "$DAEMON_PIDFILE"
    for _ in $(seq 1 50); do [ -S "$DAEMON_SOCKET" ] && break; sleep 0.1; done
    say "nix-daemon: started in the background (pid $(cat "$DAEMON_PIDFILE"), log $DAEMON_LOG)"
  else
    say "nix-daemon: running"
    if [ -z "$ours" ] && [ -n "$nix_conf_changed" ]; then
      say "note: nix-daemon was not started by this script; restart it to read the new $NIX_CONF"
    fi
  fi
fi
[ -S "$DAEMON_SOCKET" ] || die "nix-daemon socket $DAEMON_SOCKET did not appear (see $DAEMON_LOG)"

# ---------------------------------------------------------------------------
# 5. The unprivileged test user.
if ! id "$TEST_USER" > /dev/null 2>&1; then
  useradd --create-home --shell /bin/sh --user-group --groups nix-users "$TEST_USER"
  say "created user $TEST_USER"
elif ! id -nG "$TEST_USER" | tr ' ' '\n' | grep -qx nix-users; then
  usermod -a -G nix-users "$TEST_USER"
  say "added $TEST_USER to nix-users"
fi
TEST_UID=$(id -u "$TEST_USER")
TEST_GID=$(id -g "$TEST_USER")
TEST_HOME=$(getent passwd "$TEST_USER" | cut -d: -f6)
[ -d "$TEST_HOME" ] || { mkdir -p "$TEST_HOME"; chown "$TEST_UID:$TEST_GID" "$TEST_HOME"; }
say "test user: $TEST_USER (uid $TEST_UID, home $TEST_HOME)"

# The test user runs the built binary and reads the fixture: the repository
# (and target/, where cargo puts the binary) must be readable by others, and
# every directory above it traversable. Outside the repository only the
# search (x) bit of parent directories is added, and only where missing.
open_to_others() { # DIR: readable below, traversable above
  d=$1
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    case "$(stat -c %A "$d" | cut -c10)" in
      x|t) ;;
      *) chmod o+x "$d"; say "chmod o+x $d (so $TEST_USER can reach $1)" ;;
    esac
  done
  # (Not into target/nix-current: a Debian root of its own, see scripts/nix-current.sh.)
  find "$1" -path '*/target/nix-current' -prune -o \
    \( ! -perm -o+r -o \( -type d ! -perm -o+x \) \) -exec chmod o+rX {} + 2> /dev/null || true
}
open_to_others "$repo"
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -d "$CARGO_TARGET_DIR" ]; then
  open_to_others "$CARGO_TARGET_DIR"
fi

# ---------------------------------------------------------------------------
# 6. cgroup delegation, so a rootless nixcell can make per-run cgroups.
if [ "$(stat -f -c %T /sys/fs/cgroup 2> /dev/null)" = cgroup2fs ] \
   && [ -s /sys/fs/cgroup/cgroup.controllers ]; then
  # Unified hierarchy: a subtree owned by the user. The parent enables the
  # controllers for it; the user enables them further down itself. (Moving a
  # process into it needs write access to the common ancestor's cgroup.procs:
  # start the rootless process in this subtree, e.g. as root before dropping
  # privileges, or with systemd-run.)
  base=/sys/fs/cgroup/nixcell.slice
  ctrls=""
  for c in memory cpu pids; do
    grep -qw "$c" /sys/fs/cgroup/cgroup.controllers && ctrls="$ctrls +$c"
  done
  # shellcheck disable=SC2086
  for c in $ctrls; do echo "$c" > /sys/fs/cgroup/cgroup.subtree_control 2> /dev/null || say "cannot enable $c at the root"; done
  mkdir -p "$base"
  # shellcheck disable=SC2086
  for c in $ctrls; do echo "$c" > "$base/cgroup.subtree_control" 2> /dev/null || say "cannot enable $c in $base"; done
  mkdir -p "$base/user-$TEST_UID"
  chown "$TEST_UID:$TEST_GID" "$base/user-$TEST_UID" "$base/user-$TEST_UID/cgroup.procs" \
    "$base/user-$TEST_UID/cgroup.subtree_control" "$base/user-$TEST_UID/cgroup.threads"
  say "cgroup v2: delegated $base/user-$TEST_UID to $TEST_USER (controllers:$ctrls; available: $(cat "$base/user-$TEST_UID/cgroup.controllers"))"
else
  # cgroup v1: one hierarchy per controller.
  done_any=""
  for c in memory cpu pids; do
    mnt=$(awk -v c="$c" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) { print $2; exit } }' /proc/mounts)
    if [ -z "$mnt" ]; then
      say "cgroup v1: no hierarchy for $c; skipped"
      continue
    fi
    mkdir -p "$mnt/nixcell"
    mkdir -p "$mnt/nixcell/user-$TEST_UID"
    chown -R "$TEST_UID:$TEST_GID" "$mnt/nixcell/user-$TEST_UID"
    say "cgroup v1: delegated $mnt/nixcell/user-$TEST_UID to $TEST_USER"
    done_any=1
  done
  [ -n "$done_any" ] || say "no usable cgroup hierarchy found: resource limits will be best-effort"
fi

# ---------------------------------------------------------------------------
# 7. Check the daemon for the test user and build the fixture's environments.
busybox=$(nix-build --quiet --no-out-link "$repo/tests/fixtures/pkgs" -A busybox)
if runuser -u "$TEST_USER" -- env NIX_REMOTE=daemon NIX_CONFIG="$NIX_CONFIG" HOME="$TEST_HOME" \
     nix-store --query --requisites "$busybox" > /dev/null; then
  say "nix-daemon: $TEST_USER can query closures"
else
  die "$TEST_USER cannot talk to nix-daemon (socket $DAEMON_SOCKET)"
fi

if [ "${NIXCELL_SETUP_SKIP_BUILD:-}" = 1 ]; then
  say "skipping the fixture environments (NIXCELL_SETUP_SKIP_BUILD=1)"
else
  for env in demo python-demo python-bare python-nopandas redis busybox tools synthetic-10 synthetic-100 synthetic-1000; do
    path=$(scripts/build-fixture-env.sh "$env")
    say "fixture $env: $path ($(nix-store --query --requisites "$path" | wc -l) paths)"
  done
  chmod -R o+rX "$repo/target/nix-fixture" 2> /dev/null || true
fi

say "done"
