"""The soak's MCP part: RUNS runs through one long-lived `nixcell mcp` server (Python
MCP SDK), the kinds of benches/soak.sh but the service. Prints one JSON line: the
server's open descriptors and resident memory after a warm-up and at the end, the
rate, and how many results were not what their kind gives.

    python3 benches/soak_mcp.py RUNS NIXCELL_BINARY SERVER_ARGS...
"""

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from mcp_client import session  # noqa: E402

KINDS = [
    ({"command": "echo ok"}, lambda v: v["exit_code"] == 0),
    ({"command": "exit 3"}, lambda v: v["command_exit_code"] == 3),
    ({"command": ["sleep", "30"], "timeout_seconds": 1}, lambda v: v["timed_out"]),
    ({"command": "head -c 200000000 /dev/zero | tail", "memory_mib": 32}, lambda v: v["oom_killed"]),
    # The bomb ends with its command (or the timeout): its processes never outlive it.
    ({"command": "b() { b | b & }; b", "pids": 32, "timeout_seconds": 1}, lambda v: v["wall_time_ms"] < 5000),
    ({"command": "yes flood | head -c 20000000"}, lambda v: v["exit_code"] == 0),
    ({"command": "echo x > f; cat f", "files": {"in.txt": "x"}, "collect": ["f"]}, lambda v: v["exit_code"] == 0),
]


def server_pid():
    kids = []
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/children") as f:
            kids += f.read().split()
    return int(kids[0])


def probe(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return fds, rss


def soak(runs):
    async def body(s):
        pid = server_pid()
        bad = 0
        odd = {}

        async def one(i):
            args, good = KINDS[i % len(KINDS)]
            r = await s.call_tool("run", args)
            v = r.structured_content
            if v is not None and good(v):
                return 0
            odd.setdefault(i % len(KINDS), json.dumps(v)[:300])
            return 1

        for i in range(len(KINDS)):
            await one(i)
        odd.clear()
        fds0, rss0 = probe(pid)
        t = time.monotonic()
        # Four in flight at a time, as an agent platform would.
        for base in range(0, runs, 4):
            bad += sum(await asyncio.gather(*[one(i) for i in range(base, min(base + 4, runs))]))
            if (base + 4) % 1000 == 0:
                print(f"soak: MCP {base + 4}/{runs} runs {time.strftime('%H:%M:%S', time.gmtime())}", file=sys.stderr)
        rate = round(runs / (time.monotonic() - t), 1)
        await asyncio.sleep(1)
        fds1, rss1 = probe(pid)
        return {
            "runs": runs,
            "rate": rate,
            "unexpected": bad,
            "unexpected_kinds": odd,
            "fds_before": fds0,
            "fds_after": fds1,
            "rss_kib_before": rss0,
            "rss_kib_after": rss1,
        }

    return body


def main():
    runs, binary, *server_args = sys.argv[1:]
    print(json.dumps(asyncio.run(session(binary, server_args, soak(int(runs))))))


if __name__ == "__main__":
    main()
