#!/usr/bin/env python3
"""The module graph of src/: no import cycles, and the sandbox names no front-end module.

A module is a file under src/ (foo.rs and foo/mod.rs are `foo`; foo/bar.rs is `foo::bar`).
An edge A -> B is any `crate::B...` or `super::...` path (in `use` or inline) in A's file, resolved to the
longest module that exists. Cycles (strongly connected groups of more than one module) and
sandbox edges leaving `sandbox` (except to `units` and `fsat`, leaf helpers that import nothing of the crate) are
printed, and the exit status is 1. Code under `#[cfg(test)]` counts too. A module and
its own ancestors or descendants are one unit of Rust's module tree: edges between them
are not counted (the sandbox's input, `RunSpec`, lives in `sandbox` itself).
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
SANDBOX_MAY_USE = {"units", "fsat"}


def modules():
    mods = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), SRC)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                continue
            mods["::".join(rel)] = os.path.join(root, f)
    return mods


def aliases(mods):
    """Short paths lib.rs re-exports (`pub use run::{plan, verdict};`, `pub use x as y;`):
    `crate::plan` is the module `run::plan`, and counts as an edge to it."""
    text = strip_comments(open(os.path.join(SRC, "lib.rs"), encoding="utf-8").read())
    out = {}
    for hit in re.finditer(r"\bpub use ([A-Za-z_][A-Za-z0-9_:]*?)(?:::\{([^}]*)\})?(?: as ([A-Za-z_]\w*))?;", text):
        base, group, alias = hit.group(1).strip(":"), hit.group(2), hit.group(3)
        if group:
            for item in re.split(r"[,\s]+", group):
                if item:
                    out[item] = base + "::" + item
        else:
            out[alias or base.split("::")[-1]] = base
    return {a: t for a, t in out.items() if t in mods and a not in mods}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def edges(mods):
    alias = aliases(mods)
    out = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip_comments(open(path, encoding="utf-8").read())
        # `crate::a::b::{c, d::e}` and plain `crate::a::b::c`.
        parent = m.split("::")[:-1]
        for hit in re.finditer(
            r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{[^;]*?\})?", text
        ):
            base = hit.group(2).strip(":").split("::")
            if hit.group(1) == "super":
                # `super::x` from a file module a::b is a::x (mod.rs files are the module).
                here = m.split("::") if path.endswith("mod.rs") else parent
                base = here[:-1] + base if path.endswith("mod.rs") else parent + base
            hit_group_list = hit.group(3)
            paths = [base]
            if hit_group_list:
                for item in re.split(r"[,{}\s]+", hit_group_list[3:]):
                    if item and item not in ("self",):
                        paths.append(base + item.split("::"))
            for p in paths:
                if hit.group(1) == "crate" and p and p[0] in alias:
                    p = alias[p[0]].split("::") + p[1:]
                for n in range(len(p), 0, -1):
                    cand = "::".join(p[:n])
                    if cand in mods:
                        if cand != m and not m.startswith(cand + "::") and not cand.startswith(m + "::"):
                            out[m].add(cand)
                        break
    return out


def sccs(graph):
    index, low, stack, on, res, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            res.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return res


def main():
    mods = modules()
    graph = edges(mods)
    bad = 0
    for comp in sccs(graph):
        if len(comp) > 1:
            bad += 1
            print("cycle: " + " <-> ".join(comp))
    for m in sorted(graph):
        if m == "sandbox" or m.startswith("sandbox::"):
            for d in sorted(graph[m]):
                top = d.split("::")[0]
                if top != "sandbox" and top not in SANDBOX_MAY_USE:
                    bad += 1
                    print(f"sandbox uses the front-end: {m} -> {d}")
    for m in sorted(SANDBOX_MAY_USE):
        for d in sorted(graph.get(m, ())):
            bad += 1
            print(f"helper the sandbox uses is not a leaf: {m} -> {d}")
    if bad:
        print(f"module check: {bad} problem(s)")
        return 1
    print(f"module check: {len(mods)} modules, no cycles, sandbox self-contained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
