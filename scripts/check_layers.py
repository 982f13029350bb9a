#!/usr/bin/env python3
"""The module graph of src/: which source file refers to which (`use crate::…`, `super::…`,
`crate::…` paths in code, comments stripped), its cycles, and the files over the length limit.
Exits non-zero on a cycle or an over-long file, so that the layering stays one-way."""

import re
import sys
from pathlib import Path

MAX_LINES = 900
ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def module_of(path: Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip_comments(text: str) -> str:
    """The code of a Rust file with comments removed and string and char literals emptied."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + len(hashes) + 2)
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and (text.startswith("\\", i + 1) or text[i + 2 : i + 3] == "'"):
            end = text.find("'", i + 3 if text[i + 1] == "\\" else i + 2)
            out.append("' '")
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def use_paths(code: str):
    """Every path a `use` item names (braces expanded) and every inline `crate::`/`super::` path."""
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        yield from expand(re.sub(r"\s+", "", m.group(1)))
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", code):
        yield m.group(1)


def expand(tree: str):
    """`a::{b, c::{d}}` → `a::b`, `a::c::d`."""
    depth, start = 0, tree.find("{")
    if start < 0:
        yield re.sub(r"\bas\b.*", "", tree)
        return
    prefix, inner, parts, cur = tree[:start], tree[start + 1 : tree.rfind("}")], [], ""
    for ch in inner:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for p in filter(None, parts):
        yield from expand(prefix + p)


def resolve(path: str, here: tuple, modules: set):
    """The file module a path leads to (its longest prefix that is one), or None outside the
    crate. `super` is taken as the file's parent; inside a file's inline `mod tests` it means the
    file itself, whose items then resolve to the parent, which is not counted as an edge."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base, segs = here[:-1], segs[1:]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    else:
        return None
    best = base if base in modules else None
    cur = base
    for s in segs:
        cur = cur + (s,)
        if cur in modules:
            best = cur
    return best


def main() -> int:
    files = sorted(p for p in SRC.rglob("*.rs"))
    modules = {module_of(p): p for p in files}
    names = set(modules)
    graph = {m: set() for m in modules}
    for m, p in modules.items():
        code = strip_comments(p.read_text())
        mod_file = p.name in ("mod.rs", "lib.rs")
        for path in use_paths(code):
            t = resolve(path, m, names)
            # An edge to the crate root or to one's own parent module (its re-exports and
            # `mod` declarations) is not a dependency between siblings.
            if t is None or t == m or t == () or m[: len(t)] == t:
                continue
            graph[m].add(t)
        # A parent module stands for what it re-exports: a path through `crate::model::…` may
        # reach any of model's files.
        if mod_file:
            for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, re.M):
                if m + (child,) in modules:
                    graph[m].add(m + (child,))

    cycles = find_cycles(graph)
    name = lambda m: "::".join(m) or "crate"
    print("module graph of src/ (a -> b: a refers to b)")
    for m in sorted(graph):
        if graph[m]:
            print(f"  {name(m)} -> {', '.join(sorted(name(t) for t in graph[m]))}")
    print("cycles:", "none" if not cycles else "")
    for c in cycles:
        print("  " + " -> ".join(name(m) for m in c + [c[0]]))
    print(f"files by length (limit {MAX_LINES}):")
    for p in sorted(files, key=lambda p: -len(p.read_text().splitlines()))[:15]:
        n = len(p.read_text().splitlines())
        print(f"  {n:5} {p.relative_to(ROOT)}{'  OVER' if n > MAX_LINES else ''}")
    long = [p for p in files if len(p.read_text().splitlines()) > MAX_LINES]
    print("files over the limit:", ", ".join(str(p.relative_to(ROOT)) for p in long) or "none")
    return 1 if cycles or long else 0


def find_cycles(graph):
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, comps, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
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
            if len(comp) > 1:
                comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [shortest_cycle(graph, set(c)) for c in comps]


def shortest_cycle(graph, comp):
    """A shortest cycle through the component's first module, for the message."""
    start = min(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


if __name__ == "__main__":
    sys.exit(main())
