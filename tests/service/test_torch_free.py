"""Nothing the gateway imports reaches torch: a static walk over every import statement, function-level ones too.

The walk starts at the gateway's modules and follows each import that names one of the project's packages; a
third-party import is only checked by name. A runtime check (tests/service/test_imports.py) shows what one
start-up imports; this one also covers imports inside functions that a given request would run.
"""

import ast
from pathlib import Path

from conftest import ROOT

PROJECT = ("schemas", "service", "worker", "cli")
FORBIDDEN = ("torch", "onnxruntime", "onnx", "matplotlib", "worker.engine", "worker.zoo", "worker.demo",
             "worker.tasks", "worker.jobs")


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str, path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names (``from a import b`` gives a and a.b)."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reachable(roots: list[str]) -> dict[str, str]:
    """Each module reached from ``roots``, with the module that first imported it."""
    seen: dict[str, str] = {root: "(root)" for root in roots}
    queue = list(roots)
    while queue:
        name = queue.pop()
        path = module_file(name)
        if path is None:
            continue
        # A package's __init__ runs before any of its submodules: walk the parents too.
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for imported in imports_of(name, path) | set(parents):
            if imported not in seen:
                seen[imported] = name
                if imported.split(".")[0] in PROJECT:
                    queue.append(imported)
    return seen


def gateway_modules() -> list[str]:
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted((ROOT / "service").rglob("*.py"))]


def test_no_gateway_module_reaches_torch_or_the_engine():
    seen = reachable(gateway_modules())
    bad = {name: by for name, by in seen.items() if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert bad == {}, f"the gateway reaches {bad} (module: imported by)"


def test_the_walk_would_see_a_function_level_import(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def later():\n    from worker.engine.scan import run_scan\n    import torch\n")
    assert {"worker.engine.scan", "torch"} <= imports_of("probe", source)
