# The part of scripts/kernel-matrix.sh that runs inside a guest, as root, sourced
# with $repo set. It sets the machine up as scripts/setup.sh would (cgroup v2
# delegation to the test user, nix-daemon), prints the kernel's facts, runs the
# case's checks (KMX-CHECK ok|FAIL NAME: ...) and the case's suites.
# shellcheck shell=bash

: "${repo:?the matrix script sets repo}"
tu="nixcell-test"
nixcell=$repo/target/debug/nixcell
bb=$(readlink -f "$repo/target/gcroots/busybox" 2> /dev/null || true)

check() { # NAME DETAIL-ON-FAILURE: result of the previous command
  check_status $? "$@"
}

# check_status STATUS NAME DETAIL-ON-FAILURE: for a detail made by a command
# substitution, which would reset $? before check could read it.
check_status() {
  local rc=$1 name=$2
  shift 2
  if [ "$rc" = 0 ]; then echo "KMX-CHECK ok $name"; else echo "KMX-CHECK FAIL $name: $*"; fi
}

# run_as_user CMD...: as the test user, from the harness cgroup the user owns.
run_as_user() {
  setpriv --reuid "$tu" --regid "$tu" --init-groups --reset-env -- "$@"
}

guest_setup() {
  local uid gid base c ctrls=""
  uid=$(id -u "$tu")
  gid=$(id -g "$tu")
  base=/sys/fs/cgroup/nixcell.slice
  for c in memory cpu pids; do
    grep -qw "$c" /sys/fs/cgroup/cgroup.controllers && ctrls="$ctrls +$c"
  done
  for c in $ctrls; do echo "$c" > /sys/fs/cgroup/cgroup.subtree_control; done
  mkdir -p "$base/user-$uid/harness"
  for c in $ctrls; do echo "$c" > "$base/cgroup.subtree_control"; done
  chown "$uid:$gid" "$base/user-$uid" "$base/user-$uid/cgroup.procs" \
    "$base/user-$uid/cgroup.subtree_control" "$base/user-$uid/cgroup.threads"
  # Everything of the test run lives in a leaf of the user's delegated subtree, so an
  # unprivileged supervisor may move its cell from there into a cgroup of its own
  # (the common ancestor's cgroup.procs is the user's), as under systemd Delegate=yes.
  chown "$uid:$gid" "$base/user-$uid/harness" "$base/user-$uid/harness/cgroup.procs" \
    "$base/user-$uid/harness/cgroup.subtree_control" "$base/user-$uid/harness/cgroup.threads"
  echo $$ > "$base/user-$uid/harness/cgroup.procs"
  # Kernels built without LEGACY_TIOCSTI (6.12 here) refuse TIOCSTI by themselves; the
  # escape suite shows that seccomp denies it where the kernel would allow it.
  [ -e /proc/sys/dev/tty/legacy_tiocsti ] && sysctl -qw dev.tty.legacy_tiocsti=1
  # The host's Nix database, as copied consistently before the boot, writable here.
  if [ -f "$repo/target/kernel-matrix/nixdb/db.sqlite" ]; then
    mkdir -p /kmx-disk/nixdb && cp -a "$repo/target/kernel-matrix/nixdb/." /kmx-disk/nixdb/ \
      && mount --bind /kmx-disk/nixdb /nix/var/nix/db
  fi
  setsid nix-daemon > /tmp/nix-daemon.log 2>&1 < /dev/null &
  for _ in $(seq 100); do [ -S /nix/var/nix/daemon-socket/socket ] && break; sleep 0.1; done
}

# jrun FILE MODE ARGS...: `nixcell run --json ARGS` as root or user, verdict into FILE.
jrun() {
  local out=$1 mode=$2
  shift 2
  if [ "$mode" = user ]; then
    run_as_user "$nixcell" run --json "$@" > "$out" 2> "$out.err"
  else
    XDG_CACHE_HOME=$repo/target/test-cache/root "$nixcell" run --json "$@" > "$out" 2> "$out.err"
  fi
  echo $? > "$out.rc"
}
# jtest FILE PYTHON-EXPR: true when the expression over the verdict `v` (and `rc`,
# the exit status, and `ll`, `cg`: the landlock and cgroup layers) holds.
jtest() {
  python3 - "$1" "$2" << 'EOF_PY'
import json, sys
f, expr = sys.argv[1], sys.argv[2]
rc = int(open(f + ".rc").read())
try:
    v = json.load(open(f))
except Exception:
    v = {}
layers = {l["layer"]: l for l in v.get("layers", [])}
ll, cg = layers.get("landlock", {}), layers.get("cgroup", {})
ok = eval(expr)
if not ok:
    print("  verdict:", json.dumps(v)[:1500], "\n  stderr:", open(f + ".err").read()[:800])
sys.exit(0 if ok else 1)
EOF_PY
}

profile_file() { # NAME BODY: a profile extending default, readable by the test user
  local f=$repo/target/test-work/profiles/kmx-$1.toml
  mkdir -p "${f%/*}" && printf 'extends = "default"\n%s\n' "$2" > "$f" && chmod 644 "$f"
  echo "$f"
}

# The features of Landlock newer than ABI 1: name:abi.
features="refer:2 truncate:3 tcp:4 ioctl_dev:5 scopes:6"

landlock_checks() {
  local kabi=$1 mode f name abi wd
  for mode in root user; do
    jrun /tmp/v-default "$mode" --env-path "$bb" -- sh -c 'echo ran'
    expr="rc == 0 and v['stdout']['text'] == 'ran\n'"
    if [ "$kabi" = 0 ]; then
      expr="$expr and ll['enforced'] is False and 'not enforced' in ll['detail']"
    else
      expr="$expr and ll['enforced'] is True and ll['detail'].startswith('ABI $kabi,')"
      for f in $features; do
        name=${f%:*} abi=${f#*:}
        if [ "$abi" -gt "$kabi" ]; then
          expr="$expr and 'not enforced: ' in ll['detail'] and '$name (' in ll['detail'].split('not enforced: ', 1)[1]"
        else
          expr="$expr and '$name' in ll['detail'].split('features enforced: ')[1].split(';')[0].split(',')"
        fi
      done
    fi
    jtest /tmp/v-default "$expr"
    check "landlock-default-$mode" "default profile on ABI $kabi: the verdict must name exactly the missing features"
    # Each feature required in turn: runs where the kernel has it, else exit 125
    # with nothing run.
    for f in $features; do
      name=${f%:*} abi=${f#*:}
      wd=$(mktemp -d /tmp/kmx-wd.XXXXXX)
      chown "$tu:" "$wd"
      jrun /tmp/v-req "$mode" --profile "$(profile_file "req-$name" "[landlock]
$name = \"required\"")" --workdir "$wd" --env-path "$bb" -- sh -c 'touch /work/ran'
      if [ "$abi" -le "$kabi" ]; then
        jtest /tmp/v-req "rc == 0"
      else
        jtest /tmp/v-req "rc == 125 and v['error']['stage'] == 'landlock' and '$name' in v['error']['message']" && [ ! -e "$wd/ran" ]
      fi
      check "landlock-require-$name-$mode" "$name required on ABI $kabi"
      rm -rf "$wd"
    done
    jrun /tmp/v-req "$mode" --profile "$(profile_file req-layer '[landlock]
mode = "required"')" --env-path "$bb" -- sh -c 'echo ran'
    if [ "$kabi" = 0 ]; then
      jtest /tmp/v-req "rc == 125 and v['error']['stage'] == 'landlock' and v.get('stdout') in (None, {}) or rc == 125 and 'ran' not in str(v.get('stdout'))"
    else
      jtest /tmp/v-req "rc == 0"
    fi
    check "landlock-require-layer-$mode" "[landlock] mode = required on ABI $kabi"
    # The file system rules: /proc is read-only for the cell by Landlock alone (the
    # mount is writable): writing the task's own name is denied where the kernel
    # has Landlock, and works (with the verdict saying so) where it has not.
    jrun /tmp/v-fs "$mode" --env-path "$bb" -- sh -c 'echo x 2>/dev/null > /proc/self/comm && echo WROTE || echo DENIED'
    if [ "$kabi" != 0 ]; then
      jtest /tmp/v-fs "rc == 0 and v['stdout']['text'] == 'DENIED\n' and ll['enforced'] is True"
    else
      jtest /tmp/v-fs "rc == 0 and v['stdout']['text'] == 'WROTE\n' and ll['enforced'] is False"
    fi
    check "landlock-fs-$mode" "file system rules on ABI $kabi"
  done
}

cgroup_checks() {
  local mode
  for mode in root user; do
    jrun /tmp/v-cg "$mode" --memory 64M --env-path "$bb" -- sh -c 'echo ran'
    jtest /tmp/v-cg "rc == 0 and cg['enforced'] is True and 'v2' in cg['detail'] and v['usage']['source'] == 'cgroup' and v['usage']['peak_memory_bytes'] > 0 and v['usage']['cpu_time_ms'] is not None"
    check "cgroup-v2-$mode" "cgroup v2 enforced, usage from the cgroup"
    # shellcheck disable=SC2016 # the cell's shell expands it
    jrun /tmp/v-oom "$mode" --memory 32M --env-path "$bb" -- sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived'
    jtest /tmp/v-oom "v['oom_killed'] is True and 'survived' not in v['stdout']['text']"
    check "cgroup-v2-oom-$mode" "memory limit: OOM kill reported"
    # shellcheck disable=SC2016 # the cell's shell expands it
    jrun /tmp/v-pids "$mode" --pids 20 --env-path "$bb" -- sh -c 'for i in $(seq 60); do sleep 5 & done; echo all-started'
    jtest /tmp/v-pids "rc != 0 and 'all-started' not in v['stdout']['text'] and 'fork' in v['stderr']['text'] and 'pids 20' in cg['detail']"
    check "cgroup-v2-pids-$mode" "pids limit"
    jrun /tmp/v-cpu "$mode" --cpus 0.5 --timeout 4s --env-path "$bb" -- sh -c 'yes > /dev/null & yes > /dev/null'
    jtest /tmp/v-cpu "v['timed_out'] is True and 200 < v['usage']['cpu_time_ms'] < 0.5 * v['wall_time_ms'] * 1.3"
    check "cgroup-v2-cpu-$mode" "cpu quota 0.5 over two spinners"
  done
}

# The OCI runtime's linux.cgroupsPath and linux.resources on cgroup v2: the
# container's cgroup made at the path (root: absolute, below the unified mount; the
# test user: relative, below its delegated cgroup), the asked limits there (the
# profile's pids ceiling 512 the stricter), PID 1 in it, `delete` removing it only.
oci_cgroup_checks() {
  local mode dir path cgdir pid rel uid
  uid=$(id -u "$tu")
  for mode in root user; do
    dir=$(mktemp -d /tmp/kmx-oci.XXXXXX)
    if [ "$mode" = root ]; then
      path=/kmx-oci/pod/ctr rel=$path
    else
      path=kmx-oci/ctr rel=/nixcell.slice/user-$uid/$path
    fi
    cgdir=/sys/fs/cgroup$rel
    mkdir -p "$dir/bundle"
    cat > "$dir/bundle/config.json" << EOF_JSON
{"ociVersion": "1.0.2",
 "process": {"args": ["sleep", "30"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
 "root": {"path": "rootfs"}, "annotations": {"dev.nixcell.closure": "$bb"},
 "linux": {"cgroupsPath": "$path",
           "namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"},
                          {"type": "ipc"}, {"type": "uts"}],
           "resources": {"memory": {"limit": 50593792}, "pids": {"limit": 1000},
                         "unified": {"memory.high": "40001536"},
                         "devices": [{"allow": false, "access": "rwm"}]}}}
EOF_JSON
    oci() {
      if [ "$mode" = user ]; then
        run_as_user "$nixcell" oci --root "$dir/state" "$@"
      else
        "$nixcell" oci --root "$dir/state" "$@"
      fi
    }
    [ "$mode" = user ] && chown -R "$tu:" "$dir"
    oci create --bundle "$dir/bundle" --pid-file "$dir/pid" kmx < /dev/null > "$dir/err" 2>&1
    pid=$(cat "$dir/pid" 2> /dev/null)
    [ -n "$pid" ] && [ "$(cat "$cgdir/memory.max")" = 50593792 ] \
      && [ "$(cat "$cgdir/pids.max")" = 512 ] && grep -q "^0::$rel\(/\|$\)" "/proc/$pid/cgroup" \
      && [ "$(cat "$cgdir/memory.high")" = 40001536 ]
    check_status $? "oci-cgroups-path-v2-$mode" "$(cat "$dir/err"; cat "/proc/$pid/cgroup" "$cgdir/memory.max" "$cgdir/pids.max" "$cgdir/memory.high" 2>&1)"
    oci delete --force kmx > "$dir/err" 2>&1
    [ ! -e "$cgdir" ] && [ -d "${cgdir%/*}" ]
    check_status $? "oci-cgroups-path-v2-delete-$mode" "$(cat "$dir/err"; ls -d "$cgdir" 2>&1)"
    # Device rules v2 cannot enforce (/dev/zero read-only): refused, nothing made.
    sed -i 's|"devices": \[{"allow": false, "access": "rwm"}\]|"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}]|' \
      "$dir/bundle/config.json"
    oci create --bundle "$dir/bundle" kmx2 < /dev/null > "$dir/err" 2>&1
    [ $? = 1 ] && grep -q "linux.resources.devices.*cgroup v2" "$dir/err" && [ ! -e "$cgdir" ]
    check_status $? "oci-cgroups-v2-devices-refused-$mode" "$(cat "$dir/err"; ls -d "$cgdir" 2>&1)"
    oci delete --force kmx2 > /dev/null 2>&1
    rmdir "${cgdir%/*}" /sys/fs/cgroup/kmx-oci/pod /sys/fs/cgroup/kmx-oci 2> /dev/null
    rm -rf "$dir"
  done
}

userns_checks() {
  local mode
  "$nixcell" doctor > /tmp/doctor.txt 2>&1
  grep -q '^namespaces *no:' /tmp/doctor.txt && grep -q 'user.max_user_namespaces=0' /tmp/doctor.txt
  check_status $? doctor-userns "$(cat /tmp/doctor.txt)"
  for mode in root user; do
    jrun /tmp/v-ns "$mode" --env-path "$bb" -- sh -c 'echo ran'
    jtest /tmp/v-ns "rc == 125 and 'max_user_namespaces' in json.dumps(v) + open(f + '.err').read() and 'ran' not in str(v.get('stdout'))"
    check "run-userns-$mode" "run without user namespaces"
    echo "KMX-INFO run as $mode: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"]["message"])' /tmp/v-ns 2>&1 | head -c 600)"
  done
}

# layers_line FILE: the layers of a verdict in one line, for the case's summary.
layers_line() {
  python3 - "$1" << 'EOF_PY'
import json, re, sys
try:
    v = json.load(open(sys.argv[1]))
except Exception:
    print("KMX-LAYERS no verdict"); sys.exit(0)
out = []
for l in v.get("layers", []):
    s = l["layer"] + (" enforced" if l["enforced"] else " NOT enforced")
    m = re.findall(r"(\w+) \([^()]*needs ABI", l["detail"])
    if m:
        s += " (missing " + ",".join(m) + ")"
    out.append(s)
print("KMX-LAYERS " + "; ".join(out))
EOF_PY
}

# suites BINARY-NAME...: the integration test binaries, whole.
run_suites() {
  local s b
  for s in "$@"; do
    [ "$s" = none ] && continue
    b=$(grep "/deps/$s-" "$repo/target/kernel-matrix/test-binaries" | head -1)
    echo "KMX-SUITE $s"
    suites_ran="${suites_ran:+$suites_ran,}$s"
    (cd "$repo" && timeout 900 "$b" --test-threads=2 --color never 2>&1)
  done
}

guest_main() {
  local c=$1 kabi
  guest_setup
  case $c in
    *nouserns) sysctl -qw user.max_user_namespaces=0 ;;
  esac
  kabi=$("$nixcell" doctor --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["landlock"]["abi"] or 0)')
  echo "KMX-FACTS cgroup $(stat -f -c %T /sys/fs/cgroup | sed 's/fs$//'), Landlock ABI $kabi$( [ "$c" = 6.1-nouserns ] && echo ', max_user_namespaces=0')"
  "$nixcell" doctor
  run_as_user "$nixcell" doctor
  case $c in
    6.1-nouserns) userns_checks ;;
    6.1-nolandlock)
      landlock_checks "$kabi"
      layers_line /tmp/v-default
      run_suites escape profiles
      ;;
    *)
      landlock_checks "$kabi"
      layers_line /tmp/v-default
      cgroup_checks
      oci_cgroup_checks
      # shellcheck disable=SC2086
      run_suites ${KMX_SUITES:-runner escape profiles}
      ;;
  esac
  echo "KMX-SUITES ${suites_ran:-none}"
}
