#!/usr/bin/env python3
"""Checks the layering of src/: each file may use only its own layer and those below it
(config < core < infra < server < cli), and no files import each other in a cycle. Test
modules are held to the same rules. Prints every violation; exits 1 if there is one."""
import pathlib, re, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"
LAYERS = ["config", "core", "infra", "server", "cli"]
PATH = re.compile(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)")


def module_of(file):
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def main():
    files = {module_of(f): f for f in ROOT.rglob("*.rs") if f.name not in ("main.rs", "lib.rs")}
    # A file's module or a parent's; lifecycle/tests.rs belongs to lifecycle.
    def owner(path):
        while path and path not in files:
            path = path[:-1]
        return path
    edges = {m: set() for m in files}
    bad = []
    for mod, file in files.items():
        for n, line in enumerate(file.read_text().splitlines(), 1):
            for match in PATH.finditer(line):
                used = owner(tuple(match.group(1).split("::")[1:]))
                if not used or used == mod or used[: len(mod)] == mod:
                    continue
                top, used_top = mod[0], used[0]
                if top in LAYERS and used_top in LAYERS and LAYERS.index(used_top) > LAYERS.index(top):
                    bad.append(f"{file}:{n}: {top} uses {used_top} ({'::'.join(used)})")
                edges[mod].add(used)
    # Cycles among files (a test module counts as its parent's file).
    parent = {m: (m[:-1] if m[-1] == "tests" and m[:-1] in files else m) for m in files}
    graph = {}
    for m, used in edges.items():
        graph.setdefault(parent[m], set()).update(parent[u] for u in used if parent[u] != parent[m])
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for u in sorted(graph.get(m, ())):
            if state.get(u) == 1:
                cycle = stack[stack.index(u):] + [u]
                bad.append("cycle: " + " -> ".join("::".join(c) for c in cycle))
            elif u not in state:
                visit(u)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    for line in bad:
        print(line)
    return 1 if bad else 0


sys.exit(main())
