#!/bin/sh
# The escape suite's syscall attempts (tests/escape.rs) under bubblewrap with typical
# flags, next to nixcell's default profile; prints which each lets through.
#
#   benches/bwrap-escape.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NIXCELL:-$here/target/release/nixcell}
[ -x "$bin" ] || bin=$here/target/debug/nixcell
py=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).python3" -o "$here/target/gcroots/bench-python3")
bb=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).busybox" -o "$here/target/gcroots/bench-busybox")
code='
import ctypes, errno, os, socket, fcntl, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(x) if isinstance(x, int) else x for x in a])
    return "ALLOWED" if r >= 0 else "denied (" + errno.errorcode[ctypes.get_errno()] + ")"
def sock(f, t):
    try:
        socket.socket(f, t).close(); return "ALLOWED"
    except OSError as e:
        return "denied (" + errno.errorcode[e.errno] + ")"
def run(name, fn):
    pid = os.fork()
    if pid == 0:
        try:
            print(f"  {name:34s} {fn()}", flush=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
def tiocsti():
    os.setsid(); m, s = os.openpty(); fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    return sc(16, s, termios.TIOCSTI | (1 << 32), ctypes.c_char_p(b"x"))
run("unshare(CLONE_NEWUSER)", lambda: sc(272, 0x10000000))
run("unshare(NEWUSER|NEWNS) + mount", lambda: (sc(272, 0x10020000) + " / mount: " + sc(165, ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"tmpfs"), 0, 0)))
run("ptrace(PTRACE_TRACEME)", lambda: sc(101, 0, 0, 0, 0))
run("keyctl(GET_KEYRING_ID)", lambda: sc(250, 0, (1 << 64) - 3, 1))
run("io_uring_setup", lambda: sc(425, 1, ctypes.create_string_buffer(120)))
run("bpf(BPF_MAP_CREATE)", lambda: sc(321, 0, ctypes.create_string_buffer(128), 128))
run("socket(AF_NETLINK)", lambda: sock(16, socket.SOCK_RAW))
run("socket(AF_PACKET)", lambda: sock(17, socket.SOCK_RAW))
run("socket(AF_VSOCK)", lambda: sock(40, socket.SOCK_STREAM))
run("TIOCSTI (junk in upper 32 bits)", tiocsti)
def bind():
    try:
        socket.socket().bind(("127.0.0.1", 4444)); return "ALLOWED"
    except OSError as e:
        return "denied (" + errno.errorcode[e.errno] + ")"
run("bind TCP 127.0.0.1:4444", bind)
'
binds=""
for p in $(nix-store --query --requisites "$py" "$bb"); do binds="$binds --ro-bind $p $p"; done
echo "bubblewrap (--unshare-all --proc /proc --dev /dev):"
# shellcheck disable=SC2086
bwrap --unshare-all --die-with-parent --proc /proc --dev /dev --tmpfs /tmp $binds -- "$py/bin/python3" -c "$code" 2>&1 || true
echo "nixcell (default profile):"
"$bin" run --env-path "$py" -- python3 -c "$code" 2>&1 || true
