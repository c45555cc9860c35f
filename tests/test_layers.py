"""Imports go one way: down. The packages of `flowarena` stand in the order of the README's
architecture, top first; a module may import its own package and those below it, never one
above (lazy imports inside functions count too). Inside the harness the command line stands
on the run, the run on the benchmarks. And no two modules need each other, directly or round
a longer circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [  # flowarena.<name> is the folder <name>/
    "harness",  # the command line, the run, the benchmarks
    "reports",  # reads result files only
    "methods",  # the trainer and one file per method
    "rewards",  # scorers the trainer optimises
    "models",  # policy backends
    "tasks",  # prompt sets, scoring rules, the toy world: what is asked and how it is scored
    "core",  # errors, registry, fields, I/O, locks, identity, the result schema
]
HARNESS = [["harness.cli", "harness.__main__", "harness.catalog", "harness.launch"],  # commands, launching
           ["harness.options", "harness.oneline"],  # options from the dataclasses, errors as one line
           ["harness.run", "harness.live"],  # presets, cells, the experiment, export
           ["harness.benchmarks"]]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out["flowarena." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def rank(module: str) -> tuple[int, int]:
    """(package, layer inside the harness); smaller is higher."""
    name = module.removeprefix("flowarena.")
    package = PACKAGES.index(name.split(".")[0])
    inner = next((i for i, group in enumerate(HARNESS)
                  if any(name == p or name.startswith(p + ".") for p in group)), len(HARNESS))
    return package, inner


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports (`from pkg import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {mod: imports(path, known) for mod, path in known.items()}


def is_package(mod: str) -> bool:
    return modules()[mod].name == "__init__.py"


def test_every_package_has_a_place():
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert folders == set(PACKAGES)


def test_imports_only_go_down():
    upward = [f"{mod} imports {imp}" for mod, imps in graph().items() for imp in imps
              if rank(imp) < rank(mod) and not (is_package(mod) and imp.startswith(mod + "."))]
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_circles():
    # a package's __init__ gathers its own modules (a registry's discovery): not a circle
    edges = {mod: {i for i in imps if not is_package(i)} for mod, imps in graph().items()}
    assert not cycles(edges), cycles(edges)


def test_the_checks_can_fail():
    assert rank("flowarena.core.io") > rank("flowarena.models.toy") > rank("flowarena.harness.run.cell")
    assert rank("flowarena.harness.run.cell") > rank("flowarena.harness.cli")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
