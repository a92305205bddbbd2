"""The package's shape, read from the source (nothing imported): no import circles, no private names
across modules, modules small enough to read in one sitting, long functions only with a reason.

Function-level imports count (``from .x import y`` inside a function still ties the two modules);
imports under ``if TYPE_CHECKING:`` do not (they never run). The same reader gives the figures of
the redesign's before/after table: ``python -m tests.test_architecture`` prints them.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coreset_sampler"
MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 100
#: a function longer than MAX_FUNCTION_LINES says why in a comment starting with this, on or above its def
LONG_REASON = "# long:"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(target module, imported name or '', line)`` for every package-internal import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    top = name.split(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != top:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in known:  # `from . import compat`: the submodule itself
                    out.append((sub, "", node.lineno))
                else:
                    out.append((mod, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == top]
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for m, p in known.items():
        for target, _, _ in imports(p, m, known):
            # a module importing an ancestor package (`from .. import patched`) is not a circle by itself:
            # Python imports the parents first. Edges to ancestors count only when the ancestor imports back.
            if target in known and target != m:
                graph[m].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(root: Path = PACKAGE) -> list[str]:
    """``file:line module.name`` for every ``_name`` imported from another module of the package."""
    known = modules(root)
    out = []
    for m, p in known.items():
        for target, name, line in imports(p, m, known):
            if name.startswith("_") and not name.startswith("__") and target != m:
                out.append(f"{p.relative_to(root.parent)}:{line} {target}.{name}")
    return out


def _code_lines(fn: ast.AST) -> int:
    """Lines of ``fn`` less its docstring (a long docstring is documentation, not length)."""
    n = fn.end_lineno - fn.lineno + 1
    first = fn.body[0] if fn.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def functions(root: Path = PACKAGE) -> list[tuple[int, str, bool]]:
    """``(lines less the docstring, file:qualname, has a reason comment)`` for every function, longest first."""
    out = []
    for p in sorted(root.rglob("*.py")):
        text = p.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, str(p))

        def walk(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = _code_lines(child)
                    first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                    around = "\n".join(lines[max(0, first - 3): child.lineno])
                    out.append((n, f"{p.relative_to(root.parent)}:{prefix}{child.name}", LONG_REASON in around))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(tree)
    return sorted(out, reverse=True)


def module_lines(root: Path = PACKAGE) -> list[tuple[int, str]]:
    return sorted(((len(p.read_text().splitlines()), str(p.relative_to(root.parent)))
                   for p in root.rglob("*.py")), reverse=True)


# --------------------------------------------------------------------------- the tests


def test_the_reader_sees_imports_at_every_level(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import _y\n")  # function-level, private
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import z\n"
                                      "from .. import b\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.c"] == {"pkg.b"}  # the TYPE_CHECKING import does not count
    assert circles(graph) == [["pkg.a", "pkg.b"]]
    assert private_imports(pkg) == ["pkg/b.py:2 pkg.a._y"]


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, f"import circles (function-level imports count): {found}"


def test_no_private_names_across_modules():
    found = private_imports()
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_modules_fit_in_one_sitting():
    big = [(n, f) for n, f in module_lines() if n > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_long_functions_say_why():
    long = [f"{where} ({n} lines)" for n, where, why in functions() if n > MAX_FUNCTION_LINES and not why]
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_REASON} ...' comment on or "
                      f"above their def: {long}")


if __name__ == "__main__":  # the figures of the before/after table
    root = Path(sys.argv[1]).resolve() / "coreset_sampler" if len(sys.argv) > 1 else PACKAGE
    print("largest modules:", module_lines(root)[:6])
    print("largest functions:", [(n, w) for n, w, _ in functions(root)[:8]])
    print("import circles:", circles(import_graph(root)))
    print("private cross-module imports:", len(private_imports(root)))
    for line in private_imports(root):
        print("  ", line)
