"""The package's layers (docs/design.md): every import — at module level or inside a function — points down
(tools -> model -> ops -> backends), the Triton kernels import only the ops layer's leaf modules, and no
import cycle exists among the project's modules. Read from the source with `ast`, nothing is executed."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"tools": 3, "model": 2, "ops": 1, "kernels": 0}
LEAVES = {"ntm_fast.ops.shared", "ntm_fast.ops.heads"}  # what the backends may import


def _modules():
    """{module name: path} for ntm_fast/ and kernels/ (installed as ntm_fast.kernels)."""
    found = {}
    for folder, package in (("ntm_fast", "ntm_fast"), ("kernels", "ntm_fast.kernels")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    found[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(dirpath, name)
    return found


def _imports(name, path, modules):
    """The project modules that `name` imports anywhere in its source."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module):
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is None or there is None:
                continue
            if here == 0:
                if there != 0 and target not in LEAVES:
                    wrong.append(f"{module} -> {target} (backends import only {sorted(LEAVES)})")
            elif there > here:
                wrong.append(f"{module} -> {target} (points up)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
