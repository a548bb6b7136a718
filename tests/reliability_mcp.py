"""Load on one `nixcell mcp` server, with the official Python MCP SDK (tests/mcp_client.py's
session): many runs in flight at once through one server, within its bound on cells at once.

    python3 tests/reliability_mcp.py SCENARIO N NIXCELL_BINARY SERVER_ARGS...

Prints one JSON line of observations; a failed assertion exits non-zero.
"""

import asyncio
import json
import os
import sys
import time
import uuid

from mcp_client import session, text_of


def in_flight(n):
    async def body(s):
        # Each run writes its own token under a shared name, waits until every run has
        # started (so they are all in flight together), and reads its token back.
        script = (
            "echo {i} > shared.txt; read t0 _ < /proc/uptime; sleep 5 & sleep 3; "
            "seen=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$'); "
            "read t1 _ < /proc/uptime; echo $(cat shared.txt) $seen $t0 $t1 $(ls | wc -l)"
        )
        t = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(
                *[
                    s.call_tool(
                        "run",
                        {"command": ["sh", "-c", script.format(i=i)], "timeout_seconds": 120},
                    )
                    for i in range(n)
                ]
            ),
            timeout=600,
        )
        wall = time.monotonic() - t
        starts, ends, peaks = [], [], []
        for i, r in enumerate(results):
            v = r.structured_content
            assert not r.is_error, text_of(r)
            assert v["exit_code"] == 0, (i, v)
            words = v["stdout"]["text"].split()
            # Its own token, its own sleep only, one file in its own /work.
            assert words[0] == str(i), (i, words)
            assert words[1] == "1", (i, words)
            assert words[4] == "1", (i, words)
            starts.append(float(words[2]))
            ends.append(float(words[3]))
            if v.get("usage") and v["usage"].get("peak_memory_bytes") is not None:
                peaks.append(v["usage"]["peak_memory_bytes"])
        overlap = sum(1 for st in starts if st < min(ends))
        return {
            "runs": len(results),
            "wall_seconds": round(wall, 2),
            "in_flight_together": overlap,
            "max_peak_memory_bytes": max(peaks) if peaks else None,
        }

    return body


def cells_now(token):
    """The cells' commands running now, seen from the host: processes whose command
    line is the runs' `sh -c SCRIPT TOKEN` (nixcell's own command lines hold the token
    after other words), a shell's fork that has not yet run its program counted with
    its shell."""
    shells = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if argv[0] == b"sh" and token.encode() in argv[1:]:
            shells[p] = stat[stat.rfind(")") + 2 :].split()[1]
    return sum(1 for ppid in shells.values() if ppid not in shells)


def capped(n):
    async def body(s):
        # n runs at once, the host counting the cells alive meanwhile.
        token = f"soak-{uuid.uuid4().hex}"
        most = 0
        done = asyncio.Event()

        async def watch():
            nonlocal most
            while not done.is_set():
                most = max(most, cells_now(token))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        t = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(
                *[
                    s.call_tool(
                        "run",
                        {"command": ["sh", "-c", f"sleep 0.4; echo {i}", token], "timeout_seconds": 120},
                    )
                    for i in range(n)
                ]
            ),
            timeout=600,
        )
        done.set()
        await watcher
        for i, r in enumerate(results):
            assert not r.is_error, text_of(r)
            assert r.structured_content["stdout"]["text"].split() == [str(i)], (i, r.structured_content)
        return {"runs": len(results), "most_cells_at_once": most, "wall_seconds": round(time.monotonic() - t, 2)}

    return body


def busy(n):
    async def body(s):
        # n runs at once on a server of one slot and no waiting: one runs, the rest
        # are refused, saying why.
        results = await asyncio.gather(
            *[s.call_tool("run", {"command": ["sleep", "1"]}) for _ in range(n)]
        )
        ran = [r for r in results if not r.is_error]
        refused = [text_of(r) for r in results if r.is_error]
        assert len(ran) == 1, [text_of(r) for r in results]
        assert all("the server is busy" in t and "--max-runs" in t for t in refused), refused
        # A slot freed is a slot for the next call.
        again = await s.call_tool("run", {"command": ["true"]})
        assert not again.is_error, text_of(again)
        return {"ran": len(ran), "refused": len(refused), "refusal": refused[0]}

    return body


def main():
    scenario, n, binary, *server_args = sys.argv[1:]
    body = {"in_flight": in_flight, "capped": capped, "busy": busy}[scenario](int(n))
    print(json.dumps(asyncio.run(session(binary, server_args, body))))


if __name__ == "__main__":
    main()
