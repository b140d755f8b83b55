"""The import graph of the library folders, read from the code: no import of ``tools``, no circle, layers kept.

Layers, bottom to top: ``symbols`` and ``datasets`` → ``deploy`` → ``eval`` → ``recipes``; ``tools`` (the commands)
may import any of them, and nothing imports ``tools``.
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("symbols", "datasets", "deploy", "eval", "recipes")
PACKAGES = LIBRARY + ("tools",)
LAYER = {"symbols": 0, "datasets": 0, "deploy": 1, "eval": 2, "recipes": 3, "tools": 4}


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules(packages):
    found = {}
    for package in packages:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[_module_name(path)] = path
    return found


def _imports(module, path, known):
    """Project modules imported anywhere in the file (function bodies included), relative imports resolved."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def _graph(packages):
    modules = _modules(packages)
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return _graph(PACKAGES)


def test_no_library_module_imports_tools(graph):
    offenders = {m: sorted(t for t in targets if t.split(".")[0] == "tools")
                 for m, targets in graph.items() if m.split(".")[0] in LIBRARY}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_circles(graph):
    assert _cycles(graph) == []


def test_layers_import_only_downwards(graph):
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert upward == []


def test_networks_know_nothing_of_training_operators(graph):
    assert all(not t.startswith("recipes") for m, targets in graph.items() if m.startswith("symbols")
               for t in targets)
    operators = re.compile(r"\bF\.seesaw_|\bfused\b|is_train")  # the training library's operators and switches
    for name in ("common", "seesaw", "mobilefacenet"):
        source = open(os.path.join(ROOT, "symbols", f"{name}.py")).read()
        assert not operators.findall(source), name


def test_the_checks_see_a_circle_and_an_upward_import():
    """The checks above can fail: a hand-made graph with a circle through tools and an upward import."""
    graph = {"eval.sets": {"tools.export"}, "tools.export": {"eval.sets"}, "deploy.x": {"recipes.y"}, "recipes.y": set()}
    assert _cycles(graph) == [["eval.sets", "tools.export"]]
    assert [(m, t) for m, targets in graph.items() for t in targets
            if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]] == [("eval.sets", "tools.export"), ("deploy.x", "recipes.y")]
