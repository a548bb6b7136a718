"""Drives `nixcell mcp` with the official Python MCP SDK (PyPI `mcp`): stdio client and
ClientSession, as an agent's host would.

    python3 tests/mcp_client.py SCENARIO NIXCELL_BINARY SERVER_ARGS...

SCENARIO is one of the functions named in SCENARIOS. Each asserts what it sees and
prints one JSON line of observations on success; any failed assertion exits non-zero
with a traceback. tests/mcp.rs runs these.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def text_of(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def session(binary, server_args, body, elicitation_callback=None):
    # What an MCP client configuration would set in "env": the package set and Nix's
    # offline configuration, what the package set may read while it is evaluated (the
    # SDK passes only a few variables by default).
    keep = ["NIX_PATH", "NIX_CONFIG", "XDG_CACHE_HOME", "XDG_STATE_HOME", "NIXCELL_EVAL_PATHS", "TMPDIR"]
    env = {k: os.environ[k] for k in keep if k in os.environ}
    params = StdioServerParameters(command=binary, args=["mcp", *server_args], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, elicitation_callback=elicitation_callback) as s:
            init = await s.initialize()
            assert init.server_info.name == "nixcell", init
            return await body(s)


async def tools(s):
    listed = await s.list_tools()
    names = sorted(t.name for t in listed.tools)
    assert names == ["edit_environment", "environment_context", "run"], names
    run = next(t for t in listed.tools if t.name == "run")
    assert run.output_schema is not None, "run has no output schema"
    props = run.output_schema["properties"]
    for key in ["exit_code", "signal", "timed_out", "oom_killed", "usage", "stdout", "stderr", "hints"]:
        assert key in props, (key, sorted(props))
    resources = await s.list_resources()
    uris = sorted(str(r.uri) for r in resources.resources)
    assert uris == ["nixcell://context", "nixcell://context.json"], uris
    prompts = await s.list_prompts()
    assert [p.name for p in prompts.prompts] == ["nixcell_environment"]
    return {"tools": names, "resources": uris}


async def context(s):
    seen = []

    async def on_progress(p, total, message):
        seen.append(message)

    r = await s.call_tool("environment_context", {}, progress_callback=on_progress)
    assert not r.is_error, text_of(r)
    md = text_of(r)
    assert r.structured_content, "no structured context"
    res = await s.read_resource("nixcell://context")
    res_md = res.contents[0].text
    assert res_md == md, "the resource and the tool disagree"
    res_json = json.loads((await s.read_resource("nixcell://context.json")).contents[0].text)
    assert res_json == r.structured_content
    prompt = await s.get_prompt("nixcell_environment")
    ptext = prompt.messages[0].content.text
    assert md.strip()[:200] in ptext, "the prompt does not carry the context"
    return {"markdown": md, "json": r.structured_content, "progress": seen}


async def run_basics(s):
    # A command with stdin and a file placed in /work.
    r = await s.call_tool(
        "run",
        {
            "command": ["sh", "-c", "cat input.txt; tr a-z A-Z; pwd; echo err >&2; exit 3"],
            "stdin": "from stdin\n",
            "files": {"input.txt": "from a file\n"},
        },
    )
    v = r.structured_content
    assert r.is_error, "a failed command must be an isError result"
    assert v["exit_code"] == 3 and v["command_exit_code"] == 3, v
    assert v["stdout"]["text"] == "from a file\nFROM STDIN\n/work\n", v["stdout"]
    assert v["stderr"]["text"] == "err\n", v["stderr"]
    # An inline script and a collected output file.
    r = await s.call_tool(
        "run",
        {
            "script": "echo hello > out.txt\necho done",
            "interpreter": "sh",
            "collect": ["out.txt", "missing.txt"],
        },
    )
    v = r.structured_content
    assert not r.is_error, text_of(r)
    assert v["exit_code"] == 0 and v["stdout"]["text"] == "done\n", v
    assert v["files"][0] == {
        "path": "out.txt",
        "bytes": 6,
        "encoding": "utf-8",
        "content": "hello\n",
        "note": None,
        "over_limit": False,
    }, v["files"]
    assert v["files"][1]["content"] is None and v["files"][1]["note"] == "no such file", v["files"]
    # What the command changed in /work comes back as in the CLI's verdict.
    # (script.sh was placed by the server before the run: not a change of the command's.)
    assert v["workdir"]["counts"]["added"] == 1, v["workdir"]
    assert [c["path"] for c in v["workdir"]["changes"]["added"]] == ["out.txt"], v["workdir"]
    # A path out of /work is refused before anything runs.
    r = await s.call_tool("run", {"command": "echo ran", "collect": ["../etc/passwd"]})
    assert r.is_error and "relative" in text_of(r) and r.structured_content is None, text_of(r)
    # Timeout and truncation.
    r = await s.call_tool(
        "run", {"command": ["sh", "-c", "yes | head -c 100000; sleep 30"], "timeout_seconds": 1, "max_output_bytes": 1000}
    )
    v = r.structured_content
    assert r.is_error and v["timed_out"] and v["exit_code"] == 124, v
    assert v["stdout"]["truncated"] and len(v["stdout"]["text"]) == 1000 and v["stdout"]["bytes"] == 100000, v["stdout"]
    # A limit beyond what the profile allows is refused as a tool error, not a protocol error.
    for arg in [{"timeout_seconds": 100000}, {"memory_mib": 1 << 30}, {"pids": 10**9}, {"cpus": 4096.0}]:
        r = await s.call_tool("run", {"command": ["true"], **arg})
        key = next(iter(arg))
        assert r.is_error and key in text_of(r) and "profile" in text_of(r), text_of(r)
    # Within the profile: a memory limit the command then exceeds.
    r = await s.call_tool(
        "run",
        {"command": "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}", "memory_mib": 32},
    )
    v = r.structured_content
    assert r.is_error and v["oom_killed"], v
    assert v["usage"] and v["usage"]["peak_memory_bytes"] <= 32 << 20, v["usage"]
    # A missing program gives a hint.
    r = await s.call_tool("run", {"command": ["python3", "-c", "print(1)"]})
    v = r.structured_content
    assert r.is_error and v["exit_code"] == 127, v
    assert v["hints"] and v["hints"][0]["kind"] == "missing_command" and v["hints"][0]["missing"] == "python3", v["hints"]
    # No network in the cell, and the hint says so.
    r = await s.call_tool("run", {"command": ["wget", "-q", "-O-", "http://example.com/"]})
    v = r.structured_content
    assert r.is_error, v
    assert any(h["kind"] == "network_forbidden" for h in v["hints"]), v
    return {"ok": True}


async def concurrent(s):
    """Several runs at once, each writing the same file name in its own /work and
    counting the `sleep` processes it can see: its own only (one pid namespace each)."""
    n = 4
    # /proc/uptime is the machine's clock: each run notes when it started and ended.
    script = (
        "read t0 _ < /proc/uptime; echo {i} > shared.txt; sleep 4 & sleep 2; "
        "seen=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$'); "
        "read t1 _ < /proc/uptime; echo $(cat shared.txt) $seen $t0 $t1 $(ls)"
    )
    results = await asyncio.gather(
        *[
            s.call_tool("run", {"command": ["sh", "-c", script.format(i=i)], "files": {f"only-{i}.txt": str(i)}})
            for i in range(n)
        ]
    )
    seen = []
    starts, ends = [], []
    for i, r in enumerate(results):
        v = r.structured_content
        assert not r.is_error, text_of(r)
        words = v["stdout"]["text"].split()
        # Its own value back, one sleep visible, and only its own files in /work.
        assert words[0] == str(i), (i, words)
        assert words[1] == "1", (i, words)
        starts.append(float(words[2]))
        ends.append(float(words[3]))
        assert sorted(words[4:]) == sorted([f"only-{i}.txt", "shared.txt"]), (i, words)
        seen.append(words[:2] + words[4:])
    # They ran at once: every run had started before any of them ended.
    assert max(starts) < min(ends), (starts, ends)
    return {"runs": seen, "starts": starts, "ends": ends}


async def pandas_scenario(s):
    """The seed's scenario: pandas missing, the hint names the edit, the edits, then .xlsx."""
    report = (
        "import pandas as pd\n"
        "df = pd.DataFrame({'city': ['Lyon', 'Oslo'], 'n': [3, 4]})\n"
        "df.to_excel('report.xlsx', index=False)\n"
        "back = pd.read_excel('report.xlsx')\n"
        "print(int(back['n'].sum()), list(back['city']))\n"
    )
    r = await s.call_tool("run", {"script": report, "interpreter": "python3"})
    v = r.structured_content
    assert r.is_error, v
    hint = next(h for h in v["hints"] if h["kind"] == "missing_python_module")
    # Under MCP the hint names the tool call, never a `nixcell edit` command line.
    call = 'edit_environment {"operation": "add_python_library", "name": "pandas"}'
    assert hint["missing"] == "pandas" and hint["edit"]["command"] == call, hint
    assert "nixcell edit" not in hint["message"] and call in hint["message"], hint
    progress = []

    async def on_progress(p, total, message):
        progress.append(message)

    commits = []
    for lib in ["pandas", "openpyxl"]:
        r = await s.call_tool(
            "edit_environment", {"operation": "add_python_library", "name": lib}, progress_callback=on_progress
        )
        assert not r.is_error, text_of(r)
        e = r.structured_content
        assert e["status"] == "committed" and e["commit"], e
        commits.append(e["commit"])
    r = await s.call_tool("run", {"script": report, "interpreter": "python3", "collect": ["report.xlsx"]})
    v = r.structured_content
    assert not r.is_error, text_of(r)
    assert v["stdout"]["text"] == "7 ['Lyon', 'Oslo']\n", v["stdout"]
    import base64

    f = v["files"][0]
    assert f["encoding"] == "base64" and base64.b64decode(f["content"])[:2] == b"PK", f["bytes"]
    # The project's own report.py, from the run's private copy of the project; a run that
    # overwrites it changes only its copy.
    r = await s.call_tool("run", {"command": "echo 'raise SystemExit(9)' > report.py; python3 report.py"})
    assert r.structured_content["exit_code"] == 9, text_of(r)
    r = await s.call_tool("run", {"command": ["python3", "report.py"]})
    assert not r.is_error, text_of(r)
    assert r.structured_content["stdout"]["text"] == "report rows: 2 total: 200\n", text_of(r)
    ctx = await s.call_tool("environment_context", {})
    assert "pandas" in text_of(ctx) and "openpyxl" in text_of(ctx)
    # Progress notifications arrived for the edits: a start and an end each, nix's lines between.
    assert len(progress) >= 4, progress
    assert progress[0].startswith("add-python-library pandas: checking the policy"), progress
    assert progress[-1] == "add-python-library openpyxl: done", progress
    return {"commits": commits, "progress": progress}


async def refused_edit(s):
    r = await s.call_tool("edit_environment", {"operation": "add_package", "name": "nmap"})
    assert r.is_error, "a refused edit must be an isError result"
    t = text_of(r)
    assert "refused" in t and "nmap" in t, t
    r = await s.call_tool("edit_environment", {"operation": "add_package", "name": "x; builtins.exec"})
    assert r.is_error, text_of(r)
    return {"message": t}


async def env_paths_edit(s):
    r = await s.call_tool("edit_environment", {"operation": "add_package", "name": "jq"})
    assert r.is_error and "not a project" in text_of(r), text_of(r)
    return {"message": text_of(r)}


ASKED = []


async def human(context, params):
    """The client's user: approves pandas, declines anything else."""
    from mcp.types import ElicitResult

    ASKED.append(params.message)
    if "`pandas`" in params.message:
        return ElicitResult(action="accept", content={"approve": True})
    return ElicitResult(action="decline")


async def proposals_with_elicitation(s):
    """approval = "human": the server asks the client's user; yes commits, no rejects."""
    r = await s.call_tool("edit_environment", {"operation": "add_python_library", "name": "pandas"})
    assert not r.is_error, text_of(r)
    e = r.structured_content
    assert e["status"] == "committed" and e["commit"], e
    r = await s.call_tool("edit_environment", {"operation": "add_python_library", "name": "openpyxl"})
    assert r.is_error and "rejected" in text_of(r), text_of(r)
    assert len(ASKED) == 2 and "withPackages (ps: [" in ASKED[0], ASKED
    # Sizes as the command line shows them ("+112.9 MiB"), not raw byte counts.
    import re

    assert re.search(r"store paths added, \d+ removed, [+-]?\d+(\.\d)? (B|KiB|MiB|GiB)\. Approve", ASKED[0]), ASKED[0]
    assert "bytes" not in ASKED[0].split("Closure:")[1], ASKED[0]
    return {"commit": e["commit"], "asked": ASKED}


async def proposals_without_elicitation(s):
    """A client that cannot ask its user: the proposal waits for `nixcell approve`."""
    r = await s.call_tool("edit_environment", {"operation": "add_python_library", "name": "pandas"})
    assert not r.is_error, text_of(r)
    e = r.structured_content
    assert e["status"] == "proposed" and e["proposal"] and e["commit"] is None, e
    assert f"nixcell approve {e['proposal']}" in text_of(r), text_of(r)
    return {"proposal": e["proposal"]}


async def closed_run_directory(s):
    """A run that closes a directory of its /work (chmod 000) and waits a little, so
    that the test can look at the run's directory on the host meanwhile."""
    r = await s.call_tool(
        "run",
        {
            "command": [
                "sh",
                "-c",
                "mkdir -p sub/deep && echo x > sub/deep/f && chmod 000 sub && chmod 755 . "
                "&& echo closed && sleep 4",
            ],
            "files": {"placed.txt": "placed by the server\n"},
        },
    )
    v = r.structured_content
    assert not r.is_error, text_of(r)
    assert v["stdout"]["text"] == "closed\n", v
    return {"ok": True}


def xlsx_bytes():
    """A real spreadsheet, written by openpyxl."""
    import io

    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["city", "n"])
    ws.append(["Lyon", 3])
    ws.append(["Oslo", 4])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def binary_files(s):
    """Bytes in through `files`, out through `collect`, byte for byte."""
    import base64
    import io

    import openpyxl

    xlsx = xlsx_bytes()
    b64 = lambda b: {"content": base64.b64encode(b).decode(), "encoding": "base64"}
    r = await s.call_tool(
        "run",
        {
            "command": "od -An -tx1 ff.bin; cp in.xlsx sub/out.xlsx; printf 'caf\\303\\251' > text.txt",
            "files": {"in.xlsx": b64(xlsx), "ff.bin": b64(b"\xff"), "sub/keep.txt": "kept"},
            "collect": ["sub/out.xlsx", "ff.bin", "text.txt"],
        },
    )
    v = r.structured_content
    assert not r.is_error, text_of(r)
    # The byte \xff sent in is the byte \xff in the cell.
    assert v["stdout"]["text"].split() == ["ff"], v["stdout"]
    out, ff, txt = v["files"]
    assert out["encoding"] == "base64" and out["bytes"] == len(xlsx), out
    back = base64.b64decode(out["content"])
    assert back == xlsx, "the .xlsx changed on its way"
    ws = openpyxl.load_workbook(io.BytesIO(back)).active
    assert [c.value for c in ws["B"]] == ["n", 3, 4]
    assert ff["encoding"] == "base64" and base64.b64decode(ff["content"]) == b"\xff", ff
    assert txt["encoding"] == "utf-8" and txt["content"] == "caf\u00e9", txt
    # The text names the files, not their content.
    assert "sub/out.xlsx" in text_of(r) and out["content"] not in text_of(r), text_of(r)
    return {"xlsx_bytes": len(xlsx)}


async def over_limits(s):
    """Every request over a stated limit is an error result that says which."""
    seen = {}

    async def refused(name, args, *words):
        r = await s.call_tool("run", args)
        t = text_of(r)
        assert r.is_error, (name, t)
        for w in words:
            assert w in t, (name, w, t)
        seen[name] = t
        return r

    listed = await s.list_tools()
    schema = next(t for t in listed.tools if t.name == "run").input_schema["properties"]
    assert schema["files"]["maxProperties"] == 256, schema["files"]
    assert schema["collect"]["maxItems"] == 32, schema["collect"]
    await refused("files count", {"command": "true", "files": {f"f{i}": "x" for i in range(257)}}, "257 files", "256")
    await refused("files bytes", {"command": "true", "files": {"a": "x" * (4 << 20), "b": "y"}}, "4194304")
    await refused("collect count", {"command": "true", "collect": [f"f{i}" for i in range(33)]}, "33 files", "32")
    await refused(
        "bad base64", {"command": "true", "files": {"a.bin": {"content": "%%%", "encoding": "base64"}}}, "a.bin", "base64"
    )
    r = await refused(
        "collect file size",
        {"command": "head -c 1048577 /dev/zero > big.bin; echo small > small.txt", "collect": ["big.bin", "small.txt"]},
        "big.bin",
        "1048576",
    )
    big, small = r.structured_content["files"]
    assert big["over_limit"] and big["content"] is None and big["bytes"] == 1048577, big
    assert small["content"] == "small\n" and not small["over_limit"], small
    r = await refused(
        "collect total",
        {
            "command": "for i in 1 2 3 4 5; do head -c 1000000 /dev/zero > f$i; done",
            "collect": ["f1", "f2", "f3", "f4", "f5"],
        },
        "f5",
        "4194304",
    )
    assert [f["over_limit"] for f in r.structured_content["files"]] == [False] * 4 + [True]
    return {"messages": seen}


async def big_output(s):
    """5 MB of output: one copy of the verdict, the text short, head and tail kept."""
    r = await s.call_tool("run", {"command": "yes hello | head -c 5000000; echo END"})
    v = r.structured_content
    assert not r.is_error, text_of(r)
    assert len(r.content) == 1, "the verdict is given once, in structuredContent"
    st = v["stdout"]
    assert st["bytes"] == 5000004 and st["truncated"], {k: st[k] for k in ("bytes", "truncated")}
    assert st["tail"].endswith("hello\nheEND\n"), st["tail"][-40:]
    t = text_of(r)
    assert "5000004 bytes" in t and t.rstrip().endswith("END") and len(t) < 8192, t[-200:]
    return {"result_chars": len(r.model_dump_json(by_alias=True)), "text_chars": len(t)}


async def run_progress(s):
    """A run reports its stages to a client that asks (progressToken)."""
    seen = []

    async def on_progress(p, total, message):
        seen.append(message)

    r = await s.call_tool("run", {"command": "sleep 1; echo done"}, progress_callback=on_progress)
    assert not r.is_error, text_of(r)
    want = ["run: preparing the working directory", "cell started", "command started", "command ended",
            "run: finished, exit code 0"]
    at = [seen.index(w) if w in seen else -1 for w in want]
    assert -1 not in at and at == sorted(at), seen
    return {"progress": seen}


async def service_progress(s):
    """With a declared service, the progress says when it is ready, before the command."""
    r = await s.call_tool("edit_environment", {"operation": "enable_service", "name": "redis"})
    assert not r.is_error, text_of(r)
    seen = []

    async def on_progress(p, total, message):
        seen.append(message)

    r = await s.call_tool("run", {"command": "redis-cli -p 6379 ping"}, progress_callback=on_progress)
    assert not r.is_error, text_of(r)
    assert r.structured_content["stdout"]["text"] == "PONG\n", text_of(r)
    want = ["cell started", "services ready (redis); command started", "command ended"]
    at = [seen.index(w) if w in seen else -1 for w in want]
    assert -1 not in at and at == sorted(at), seen
    return {"progress": seen}


def cell_processes(marker):
    """Host pids whose command line is `sleep MARKER`."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                        found.append(int(d))
            except OSError:
                pass
    return found


async def cancel_run(s):
    """A cancelled run (notifications/cancelled) kills its whole cell, even a process
    that ignores SIGTERM, and leaves no cgroup behind."""
    import time

    marker = "30017"
    task = asyncio.create_task(
        s.call_tool("run", {"command": f"trap '' TERM; sleep {marker}; echo after", "timeout_seconds": 90})
    )
    start = time.monotonic()
    while not cell_processes(marker):
        assert time.monotonic() - start < 60, "the cell's sleep never appeared"
        await asyncio.sleep(0.05)
    pid = cell_processes(marker)[0]
    with open(f"/proc/{pid}/cgroup") as f:
        cgroups = [l.strip().split(":", 2) for l in f]
    dirs = []
    for _, ctrl, path in cgroups:
        if ctrl in ("memory", "pids", "") and "/run-" in path:
            base = "/sys/fs/cgroup/" + (ctrl if ctrl else "")
            dirs.append(base.rstrip("/") + path)
    assert dirs and all(os.path.isdir(d) for d in dirs), (cgroups, dirs)
    cancelled_at = time.monotonic()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    while cell_processes(marker) or any(os.path.exists(d) for d in dirs):
        assert time.monotonic() - cancelled_at < 30, ("still there", cell_processes(marker), dirs)
        await asyncio.sleep(0.05)
    gone_after = time.monotonic() - cancelled_at
    # The server goes on serving.
    r = await s.call_tool("run", {"command": "echo still serving"})
    assert r.structured_content["stdout"]["text"] == "still serving\n", text_of(r)
    return {"gone_after_seconds": gone_after, "cgroups": dirs}


CACHE = ("v=$(redis-cli get answer); if [ -n \"$v\" ]; then echo \"hit $v\"; "
         "else echo 'miss; caching'; redis-cli set answer 42 >/dev/null; fi")


async def sessions(s):
    """Runs naming one session share its cell: the project's redis, its data and /tmp;
    another session, and a run without one, start afresh."""

    async def run(args):
        r = await s.call_tool("run", args)
        return r, r.structured_content

    listed = await s.list_tools()
    run_tool = next(t for t in listed.tools if t.name == "run")
    assert "session" in run_tool.input_schema["properties"], run_tool.input_schema
    r, v = await run({"command": CACHE + "; echo kept > /tmp/mark", "session": "s1"})
    assert v["stdout"]["text"] == "miss; caching\n", text_of(r)
    r, v = await run({"command": CACHE + "; cat /tmp/mark", "session": "s1"})
    assert v["stdout"]["text"] == "hit 42\nkept\n", text_of(r)
    r, v = await run({"script": "import os; print(os.getcwd())", "interpreter": "python3", "session": "s1"})
    assert v["stdout"]["text"] == "/work\n", text_of(r)
    r, v = await run({"command": CACHE})
    assert v["stdout"]["text"] == "miss; caching\n", text_of(r)
    r, v = await run({"command": CACHE + "; cat /tmp/mark 2>&1", "session": "s2"})
    assert v["stdout"]["text"].startswith("miss; caching\n"), text_of(r)
    assert "kept" not in v["stdout"]["text"], text_of(r)
    r, v = await run({"command": "exit 3", "session": "s1"})
    assert r.is_error and v["exit_code"] == 3, text_of(r)
    r = await s.call_tool("run", {"command": "true", "session": "s1", "files": {"a": "b"}})
    assert r.is_error and "do not go with `session`" in text_of(r), text_of(r)
    r = await s.call_tool("run", {"command": "true", "session": "../x"})
    assert r.is_error and "session '../x'" in text_of(r), text_of(r)
    return {"ok": True}


SCENARIOS = {
    f.__name__: f
    for f in [
        sessions,
        tools,
        context,
        run_basics,
        concurrent,
        pandas_scenario,
        refused_edit,
        env_paths_edit,
        proposals_with_elicitation,
        proposals_without_elicitation,
        closed_run_directory,
        binary_files,
        over_limits,
        big_output,
        run_progress,
        service_progress,
        cancel_run,
    ]
}


async def over_http(url, token, uds):
    """The Streamable HTTP transport, with the SDK's HTTP client: the bearer token is
    required, and the tools work as over stdio."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    def client(headers):
        transport = httpx2.AsyncHTTPTransport(uds=uds) if uds else None
        return httpx2.AsyncClient(headers=headers, transport=transport, timeout=60)

    statuses = {}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    for name, headers in [("none", {}), ("wrong", {"Authorization": "Bearer " + "x" * len(token)})]:
        async with client(headers) as c:
            r = await c.post(url, json=init, headers={"Accept": "application/json, text/event-stream"})
            statuses[name] = r.status_code
    # The right token under a foreign Host (DNS rebinding) is refused too.
    async with client({"Authorization": f"Bearer {token}"}) as c:
        r = await c.post(url, json=init, headers={"Accept": "application/json, text/event-stream",
                                                  "Host": "rebound.example"})
        statuses["foreign host"] = r.status_code
    assert statuses == {"none": 401, "wrong": 401, "foreign host": 403}, statuses
    seen = []

    async def on_progress(p, total, message):
        seen.append(message)

    async with client({"Authorization": f"Bearer {token}"}) as c:
        async with streamable_http_client(url, http_client=c) as (read, write):
            async with ClientSession(read, write) as s:
                info = await s.initialize()
                assert info.server_info.name == "nixcell", info
                names = sorted(t.name for t in (await s.list_tools()).tools)
                assert names == ["edit_environment", "environment_context", "run"], names
                r = await s.call_tool("run", {"command": "echo over http"}, progress_callback=on_progress)
                assert not r.is_error, text_of(r)
                assert r.structured_content["stdout"]["text"] == "over http\n", text_of(r)
    assert "command started" in seen, seen
    return {"unauthorized": statuses, "progress": seen}


def main():
    if sys.argv[1] == "over_http":
        url, token, uds = sys.argv[2:5]
        print(json.dumps(asyncio.run(over_http(url, token, uds if uds != "-" else None))))
        return
    scenario, binary, *server_args = sys.argv[1:]
    callback = human if scenario == "proposals_with_elicitation" else None
    out = asyncio.run(session(binary, server_args, SCENARIOS[scenario], callback))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
