"""The layout's rules, checked: no import cycle anywhere, and thin public fronts.

The layers themselves (which package may import which) are import-linter's contract in
pyproject.toml, run by ``make test`` before pytest; this module adds what that contract
does not say.
"""

from __future__ import annotations

import importlib
import sys

import pytest

PACKAGES = ("contracts", "policies", "store", "telemetry", "economics", "serving",
            "workload", "training", "experiments", "gates", "controlplane")


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_repository_has_no_import_cycle():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (dev extra)")
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c"}
        edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [["a", "b"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_a_public_front(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list | tuple), package
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name}, which it lacks"


@pytest.mark.parametrize("package", ["contracts", "policies", "gates"])
def test_the_lower_layers_import_light(package):
    # The contracts, the policy document and the gate decisions must not drag in the
    # database driver or an engine: the CLI and the gates' pure tests import them fast.
    code = (f"import sys, {package}; "
            "heavy = [m for m in ('sqlalchemy', 'ray', 'vllm', 'torch', 'prefect') "
            "if m in sys.modules]; print(','.join(heavy))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"import {package} loads {out}"
