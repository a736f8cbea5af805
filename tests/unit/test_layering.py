"""The package's layering, read from the source (no imports run): pure modules import no I/O
machinery, and no module imports a module that imports it back.

Only module-level imports count: an import inside a function, or under `if TYPE_CHECKING:`,
does not run when the module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "mtaserver"

# Decisions and parsing: inputs and `now` in, no I/O (DESIGN.md "Pure decision code").
PURE = [
    "values", "model", "address", "datastream",
    "smtp.engine", "smtp.anvil",
    "policy.restrictions", "policy.mailboxes",
    "auth.sasl", "auth.failures",
    "postscreen.checks", "postscreen.verdict", "postscreen.access",
    "queue.backoff", "queue.dsn",
    "filters.mime", "filters.attachments",
]  # fmt: skip
IO_MODULES = {"asyncio", "socket", "sqlite3", "aiodns", "pycares", "uvloop", "redis", "ssl", "subprocess"}


def module_path(name: str) -> Path:
    p = PKG.joinpath(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def top_level_imports(name: str) -> set[str]:
    """Absolute names of the modules `name` imports when it is imported."""
    tree = ast.parse(module_path(name).read_text())
    package = name.rsplit(".", 1)[0] if "." in name and not module_path(name).name == "__init__.py" else (name if module_path(name).name == "__init__.py" else "")
    found: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join([*base, node.module] if node.module else base)
                    found.add("mtaserver." + mod if mod else "mtaserver")
                    for a in node.names:  # `from . import x` may name a submodule
                        sub = f"{mod}.{a.name}" if mod else a.name
                        if module_path(sub).exists():
                            found.add("mtaserver." + sub)
                else:
                    found.add(node.module or "")
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return found


def internal(name: str) -> set[str]:
    return {m.removeprefix("mtaserver.") for m in top_level_imports(name) if m.startswith("mtaserver.")} - {name}


def all_modules() -> list[str]:
    out = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            out.append(".".join(parts))
    return sorted(out)


def closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        m = todo.pop()
        if m in seen or not module_path(m).exists():
            continue
        seen.add(m)
        todo.extend(internal(m))
    return seen


def test_pure_modules_import_no_io_machinery():
    bad = {}
    for name in PURE:
        for m in closure(name):
            io = {i.split(".")[0] for i in top_level_imports(m)} & IO_MODULES
            if io:
                bad[f"{name} (via {m})" if m != name else name] = sorted(io)
    assert bad == {}


def test_no_import_cycles():
    graph = {m: internal(m) for m in all_modules()}
    cycles = []
    for m, deps in graph.items():
        for d in deps:
            if m in closure(d):
                cycles.append(f"{m} -> {d} -> ... -> {m}")
    assert cycles == []
