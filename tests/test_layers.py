"""Imports between the project's layers go one way: down. A module may import its own layer
and the layers below it, never one above (lazy imports inside functions count too), so no
package needs another that needs it back. The list is the README's architecture, top first."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ["harness.cli"],                                   # the command line
    ["harness.run", "harness.live"],                   # presets, cells, the experiment, export
    ["reports"],                                       # reads result files only
    ["harness.benchmarks"],                            # what a policy is measured on
    ["methods"],                                       # the trainer and one file per method
    ["rewards"],                                       # scorers the trainer optimises
    ["models"],                                        # policy backends
    ["harness.toyworld"],                              # the toy world's scenes, grammar, judge
    ["harness.core"],                                  # errors, registry, I/O, prompts, scoring rules
]
PACKAGES = ("harness", "methods", "models", "rewards", "reports")


def layer_of(module: str) -> int | None:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_every_module_has_a_layer():
    assert not [m for m in modules() if m not in PACKAGES and layer_of(m) is None]


def test_imports_only_go_down():
    known = modules()
    upward = []
    for mod, path in known.items():
        if mod in PACKAGES:  # a package's __init__ re-exports its own modules
            continue
        here = layer_of(mod)
        for imp in imports(path):
            if imp not in known and imp.rsplit(".", 1)[0] in known:
                imp = imp.rsplit(".", 1)[0]  # `from pkg.module import name`
            there = layer_of(imp)
            if there is not None and there < here:
                upward.append(f"{mod} (layer {here}) imports {imp} (layer {there})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_the_check_can_fail():
    assert layer_of("harness.core.io") > layer_of("models.toy") > layer_of("harness.cli")
