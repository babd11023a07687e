#!/usr/bin/env python3
"""The shape of the crate, measured: which top-level module imports which, whether any imports
run in a circle or upwards (against LAYERS below), and how long each source file is.

Usage: python3 scripts/layers.py [--graph]   (exit 1 on a circle, an upward import, a file of
src/ or tests/ over MAX_LINES, src/daemon/mod.rs over MAX_DAEMON_MOD, or a circle among the
Python training tools of models/training/). `crate::daemon` outside daemon/ is an upward import:
the daemon is the top layer. main.rs (the CLI) may use every layer and is not counted.

An import is any path `crate::NAME` in a library file, in `use` or inline; `crate::{a, b}`
counts each name. Comments and string literals are stripped first.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Lowest first. A module may import from any module in a layer below its own, and from a module
# listed before it in its own layer; never from one after it.
LAYERS = [
    ["durable", "failpoint", "alloc_guard", "logging"],
    ["ingest"],
    ["config"],
    ["preprocess"],
    ["model", "engine"],
    ["decide", "drift", "report"],
    ["score"],
    ["output", "alert", "net", "inspect", "prep", "status", "page", "metrics"],
    ["eval", "commission", "bench", "doctor"],
    ["daemon"],
]
MAX_LINES = 800
MAX_DAEMON_MOD = 400


def strip(text: str) -> str:
    """Removes comments, string and char literals (keeping line structure)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            seg = text[i : (n if j < 0 else j + 2)]
            out.append("\n" * seg.count("\n"))
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            seg = text[i : (n if j < 0 else j + len(end))]
            out.append('""' + "\n" * seg.count("\n"))
            i = n if j < 0 else j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text[i:j].count("\n"))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def top_module(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def imports(text: str, prefix: str) -> set:
    names = set()
    for m in re.finditer(prefix + r"::(\{[^}]*\}|\w+)", text):
        g = m.group(1)
        if g.startswith("{"):
            names.update(re.findall(r"(?:^|[{,\s])(\w+)", g))
        else:
            names.add(g)
    return names


def circles(graph: dict, nodes: list) -> list:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return sccs


def main() -> int:
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    order_of = {m: (i, layer.index(m)) for i, layer in enumerate(LAYERS) for m in layer}
    graph, problems, sizes = {}, [], []
    for path in sorted(SRC.rglob("*.rs")):
        text = path.read_text()
        sizes.append((len(text.splitlines()), path.relative_to(ROOT)))
        if path.name in ("main.rs", "lib.rs") and path.parent == SRC:
            continue
        mod = top_module(path)
        if mod not in layer_of:
            problems.append(f"{path.relative_to(ROOT)}: module {mod} is not in scripts/layers.py LAYERS")
            continue
        for dep in imports(strip(text), r"\bcrate") - {mod, "self", "super"}:
            if dep not in layer_of:
                continue
            graph.setdefault(mod, set()).add(dep)
            if order_of[dep] > order_of[mod]:
                problems.append(f"upward import: {path.relative_to(ROOT)} ({mod}, layer {layer_of[mod]}) uses crate::{dep} (layer {layer_of[dep]})")
    sccs = circles(graph, sorted(layer_of))
    for comp in sccs:
        problems.append(f"import circle: {' <-> '.join(comp)}")
    # The training tools (Python): no module imports one that imports it back, at any depth
    # (imports inside functions count too).
    training = ROOT / "models" / "training"
    local = {p.stem for p in training.glob("*.py")}
    py_graph = {}
    for p in training.glob("*.py"):
        deps = set(re.findall(r"^\s*(?:from|import)\s+(\w+)", p.read_text(), re.M)) & local
        py_graph[p.stem] = deps - {p.stem}
    for comp in circles(py_graph, sorted(local)):
        problems.append(f"import circle in models/training: {' <-> '.join(comp)}")
    for n, p in sizes:
        if n > MAX_LINES:
            problems.append(f"{p}: {n} lines (at most {MAX_LINES})")
    tests = sorted((len(p.read_text().splitlines()), p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.rs"))
    for n, p in tests:
        if n > MAX_LINES:
            problems.append(f"{p}: {n} lines (at most {MAX_LINES})")
    daemon_mod = SRC / "daemon" / "mod.rs"
    n = len(daemon_mod.read_text().splitlines())
    if n > MAX_DAEMON_MOD:
        problems.append(f"src/daemon/mod.rs: {n} lines (at most {MAX_DAEMON_MOD}: it only composes and runs the loop)")
    edges = sum(len(v) for v in graph.values())
    longest = max(sizes + tests)
    print(f"{len(layer_of)} modules in {len(LAYERS)} layers, {edges} imports between them; circles: {len(sccs)}; "
          f"largest file {longest[1]} ({longest[0]} lines); src/daemon/mod.rs {n} lines")
    if "--graph" in sys.argv:
        for m in sorted(graph, key=lambda m: order_of[m]):
            print(f"  {m} (layer {layer_of[m]}) -> {', '.join(sorted(graph[m], key=lambda d: order_of[d]))}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
