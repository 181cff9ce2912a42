"""The import graph of the package: no import circle (every import, at module level or in a
function, goes one way down the layers), and imports inside functions only where they
are lazy on purpose: optional dependencies, and the command line, which imports what a
command needs so that ``nnkern --help`` starts at once."""

import ast
from pathlib import Path

import nnkern

PACKAGE = Path(nnkern.__file__).parent
# Modules that may import nnkern modules inside functions, and why.
LAZY_IMPORTERS = {
    "nnkern.cli": "each command imports what it needs, so the command line starts fast",
}
# nnkern modules that any module may import inside a function: their own imports are
# optional or slow (the CUDA target, matplotlib through plots).
LAZY_TARGETS = {"nnkern.backends.cuda_train"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, int, bool]]:
    """(imported nnkern module, line, inside a function) for every import in the module."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        nested = id(node) not in top_level
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, nested) for alias in node.names if alias.name.startswith("nnkern")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.startswith("nnkern"):
                base = node.module
            else:
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if target in modules else base, node.lineno, nested))
    return [(target, line, nested) for target, line, nested in found if target in modules and target != name]


def test_no_import_circle():
    modules = _modules()
    edges = {name: sorted({target for target, _, _ in _imports(name, path, modules)}) for name, path in modules.items()}
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for target in edges[name]:
            if state.get(target) == "open":
                circle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name)


def test_imports_inside_functions_are_lazy_on_purpose():
    modules = _modules()
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
              for name, path in modules.items() if name not in LAZY_IMPORTERS
              for target, line, nested in _imports(name, path, modules)
              if nested and target not in LAZY_TARGETS]
    assert not hidden, "imports of nnkern modules inside functions (move them to the top):\n" + "\n".join(hidden)
