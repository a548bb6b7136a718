#!/bin/sh
# The network proxy's cost: a client in a cell talks to an upstream through
# nixcell's proxy (CONNECT over the cell's loopback forwarder, the unix socket,
# the host's proxy) and, as the baseline, to the same server code on the cell's
# own loopback. Prints per-connection latency (connect + one request/answer, median
# and p90 of N connections) and throughput (one stream of SIZE MiB) for both.
#
#   benches/netpol.sh [N] [SIZE_MIB]     (default 300 connections, 512 MiB)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NIXCELL:-$here/target/release/nixcell}
[ -x "$bin" ] || bin=$here/target/debug/nixcell
n=${1:-300}
size=${2:-512}
mkdir -p "$here/target/gcroots"
py=$(NIX_CONFIG='substituters =' nix-build --quiet -E \
  "(import $here/tests/fixtures/pkgs {}).python3" -o "$here/target/gcroots/bench-python3")
server='
import socket, sys, threading
def serve(c):
    with c:
        cmd = c.recv(64)
        if cmd.startswith(b"bulk"):
            n = int(cmd.split()[1]) << 20
            chunk = b"x" * (1 << 20)
            while n > 0:
                c.sendall(chunk[:min(n, len(chunk))])
                n -= len(chunk)
        else:
            c.sendall(b"k")
def main(port, ready=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    if ready:
        ready.set()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
'
client='
import socket, statistics, sys, threading, time
n, size, upstream = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
'"$server"'
ready = threading.Event()
threading.Thread(target=main, args=(9000, ready), daemon=True).start()
ready.wait()
def open_direct():
    return socket.create_connection(("127.0.0.1", 9000))
def open_proxy():
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (upstream, upstream))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 200" in head.split(b"\r\n")[0], head
    return s
def one(opener):
    t = time.perf_counter()
    s = opener()
    s.sendall(b"ping")
    assert s.recv(1) == b"k"
    s.close()
    return time.perf_counter() - t
def bulk(opener):
    s = opener()
    t = time.perf_counter()
    s.sendall(b"bulk %d" % size)
    got = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        got += len(b)
    dt = time.perf_counter() - t
    assert got == size << 20, got
    return size / dt
for name, opener in (("direct loopback", open_direct), ("through the proxy", open_proxy)):
    for _ in range(20):
        one(opener)
    lat = sorted(one(opener) for _ in range(n))
    med, p90 = statistics.median(lat) * 1e3, lat[int(len(lat) * 0.9)] * 1e3
    mibs = max(bulk(opener) for _ in range(3))
    print("%-18s  connection: median %.3f ms, p90 %.3f ms   throughput: %.0f MiB/s" % (name, med, p90, mibs))
'
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/python3 -c "$server
main($port)" &
up=$!
trap 'kill $up 2>/dev/null || true' EXIT
sleep 0.5
echo "nixcell: $bin; $n connections, $size MiB"
"$bin" run --env-path "$py" --allow-port 9000 --allow-host "127.0.0.1:$port" --timeout 10m \
  -- python3 -c "$client" "$n" "$size" "$port"
