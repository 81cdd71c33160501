"""The package's layout is the pipeline: stage packages whose imports run one way, no import
circle, and no module reaching into another module's private names.

Every ``import`` statement is read from the source (function-level imports included: a lazy
import is still a dependency), so the test needs none of the optional extras.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "datakeg"

# The units of the package, lowest first. A module may import its own unit and any lower rank,
# never a unit of the same or a higher rank (``settings`` and ``curation`` share a rank: neither
# may import the other).
RANK = {
    "support": 0,       # secrets, cache dir, quiet third-party output, chat templates
    "errors": 1,
    "providers": 2,     # the model seam
    "sources": 3,       # stage 1: documents, chunks, language
    "dataset": 4,       # the output folder's contract
    "settings": 5,
    "curation": 5,      # stage 3 gates/audit, used while generating
    "generation": 6,    # stage 2: asking the model
    "training": 7,
    "evaluation": 7,
    "api": 8,
    "review": 8,        # datakeg review: the web page (an app layer like api)
    "testing": 8,       # the fake LLM server
    "progress": 9,
    "cli": 10,
    "__main__": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the root package (``__version__``, lazy API)


def imports(module: str):
    """(imported module, names taken from it, line) for every import statement in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "datakeg":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "datakeg":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if submodules:  # ``from datakeg.generation import manifest``
                for sub in submodules:
                    yield sub, [], node.lineno
                rest = [n for n in names if f"{base}.{n}" not in MODULES]
                if rest:
                    yield base, rest, node.lineno
            else:
                yield base, names, node.lineno


def test_every_module_belongs_to_a_ranked_unit():
    unknown = sorted({unit(m) for m in MODULES} - set(RANK) - {None})
    assert not unknown, f"add these units to RANK (and to the README's How it works): {unknown}"


def test_imports_run_one_way_down_the_stages():
    upward = []
    for module in MODULES:
        src = unit(module)
        for target, names, line in imports(module):
            dst = unit(target)
            if dst is None:
                if set(names) - {"__version__"}:
                    upward.append(f"{module}:{line} takes {names} from the root package")
                continue
            if src is None or dst == src:
                continue
            if RANK[dst] >= RANK[src]:
                upward.append(f"{module}:{line} imports {target} ({dst} rank {RANK[dst]} >= {src} rank {RANK[src]})")
    assert not upward, "imports that run up or across the stages:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ imported for a submodule is not an edge of its own here: only explicit imports count
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_no_module_imports_another_modules_private_names():
    private = [f"{m}:{line} takes {[n for n in names if n.startswith('_') and not n.startswith('__')]} from {t}"
               for m in MODULES for t, names, line in imports(m)
               if t != m and any(n.startswith("_") and not n.startswith("__") for n in names)]
    assert not private, "\n".join(private)


def test_every_package_says_what_it_owns_and_must_not_import():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{init} needs a docstring saying what the package owns"


@pytest.mark.parametrize("bad", ["up", "circle", "private"])
def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch, bad):
    """The checks above fail on a planted fault (they are not vacuously green)."""
    pkg = tmp_path / "datakeg"
    for sub in ("sources", "generation"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text('"""x"""\n')
    (pkg / "__init__.py").write_text("")
    code = {
        "up": ("from datakeg.generation.b import f\n", "def f(): ...\n"),
        "circle": ("from datakeg.sources.c import g\ndef f(): ...\n", "from datakeg.sources.a import f\ndef g(): ...\n"),
        "private": ("from datakeg.sources.c import _g\n", "def _g(): ...\n"),
    }[bad]
    (pkg / "sources" / "a.py").write_text(code[0])
    (pkg / ("generation/b.py" if bad == "up" else "sources/c.py")).write_text(code[1])
    monkeypatch.setitem(globals(), "ROOT", pkg)
    monkeypatch.setitem(globals(), "MODULES", {module_name(p): p for p in sorted(pkg.rglob("*.py"))})
    check = {"up": test_imports_run_one_way_down_the_stages, "circle": test_no_import_circle,
             "private": test_no_module_imports_another_modules_private_names}[bad]
    with pytest.raises(AssertionError):
        check()
