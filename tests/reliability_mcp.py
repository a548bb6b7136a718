"""Load on one `nixcell mcp` server, with the official Python MCP SDK (tests/mcp_client.py's
session): many runs in flight at once through one server.

    python3 tests/reliability_mcp.py SCENARIO N NIXCELL_BINARY SERVER_ARGS...

Prints one JSON line of observations; a failed assertion exits non-zero.
"""

import asyncio
import json
import sys
import time

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


def main():
    scenario, n, binary, *server_args = sys.argv[1:]
    body = {"in_flight": in_flight}[scenario](int(n))
    print(json.dumps(asyncio.run(session(binary, server_args, body))))


if __name__ == "__main__":
    main()
