"""The import graph of the project packages: one-way layers, server and client apart, no cycle.

Layers (a module may import its own package and the layers below it, never a
layer above, never another package of its own layer)::

    compression            0  codec library
    fedsqueeze             1  Flower-free core, and fedsqueeze.protocol: what server and clients agree on
    server, client         2  the two apps; they never import each other
    simulations            3  runner, sweeps, reports
    benchmarks, examples   4  scripts on top of everything (examples: user code against the public API)

``tests/`` is not part of the graph (it exercises every layer).

How the graph is built: every ``.py`` file of these packages is parsed with
``ast`` (nothing is imported). Every ``import`` / ``from ... import`` counts,
wherever it is: at module level, inside functions (lazy imports), under
``if TYPE_CHECKING``; so does ``importlib.import_module`` with a literal name.
An import is an edge to the most specific module it names: ``from a.b import
c`` reads the submodule ``a.b.c`` if that file exists, else the module
``a.b``. The ``__init__`` of parent packages, which Python also executes, is
not an edge: a package's ``__init__`` re-exporting its submodules would
otherwise turn every submodule's import of a sibling into a cycle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS: dict[str, int] = {
    "compression": 0,
    "fedsqueeze": 1,
    "server": 2,
    "client": 2,
    "simulations": 3,
    "benchmarks": 4,
    "examples": 4,
}

Graph = dict[str, set[str]]


# ----------------------------------------------------------------------------- the checker


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``root/<package>`` (packages that exist)."""
    out = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(module: str, files: Mapping[str, Path]) -> bool:
    return files[module].name == "__init__.py"


def _imports(module: str, tree: ast.AST, files: Mapping[str, Path]) -> list[tuple[str, int]]:
    """(absolute dotted module name, line) of every module ``module`` imports from, most specific first.

    ``from X import n`` names ``X.n`` if that is a module file, else ``X`` (``n``
    is an attribute of ``X``). Names are returned whether or not they are
    project modules; :func:`import_graph` sorts them out.
    """
    out = []
    package = module if _is_package(module, files) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in files else base, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                out.append((node.args[0].value, node.lineno))
    return out


def import_graph(root: Path, packages: Iterable[str]) -> tuple[Graph, list[str]]:
    """The import graph of the project modules under ``root``, and the imports that name no module.

    Returns
    -------
    graph : dict of str to set of str
        Module → the project modules it imports (imports of other libraries are dropped).
    missing : list of str
        ``"<module>:<line> imports <name>"`` for every import of a project
        package that resolves to no file (e.g. a module removed in a refactor).
    """
    packages = list(packages)
    files = module_files(root, packages)
    graph: Graph = {m: set() for m in files}
    missing = set()
    for module, path in files.items():
        for name, line in _imports(module, ast.parse(path.read_text(), filename=str(path)), files):
            if name.split(".")[0] not in packages:
                continue
            if name not in files:
                missing.add((module, line, name))
            elif name != module:
                graph[module].add(name)
    return graph, [f"{m}:{line} imports {name}" for m, line, name in sorted(missing)]


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (``start`` included)."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def external_imports(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module → the top-level names of the non-project packages it imports (``flwr``, ``torch``, ...)."""
    packages = list(packages)
    files = module_files(root, packages)
    return {m: {name.split(".")[0] for name, _ in _imports(m, ast.parse(path.read_text()), files)
                if name and name.split(".")[0] not in packages} for m, path in files.items()}


def layer_violations(graph: Mapping[str, Iterable[str]], layers: Mapping[str, int]) -> list[str]:
    """Edges that go up a layer, or across to another package of the same layer."""
    out = []
    for src, targets in sorted(graph.items()):
        src_pkg = src.split(".")[0]
        for dst in sorted(targets):
            dst_pkg = dst.split(".")[0]
            if dst_pkg == src_pkg:
                continue
            if layers[dst_pkg] > layers[src_pkg]:
                out.append(f"{src} imports {dst}: {src_pkg} (layer {layers[src_pkg]}) may not import "
                           f"{dst_pkg} (layer {layers[dst_pkg]})")
            elif layers[dst_pkg] == layers[src_pkg]:
                out.append(f"{src} imports {dst}: {src_pkg} and {dst_pkg} are peers and never import each other")
    return out


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None if the graph is acyclic."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if color[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        color[start] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            state = color.get(nxt, black)  # edges out of the graph's node set cannot close a cycle
            if state == grey:
                return path[path.index(nxt):] + [nxt]
            if state == white:
                color[nxt] = grey
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
    return None


# ----------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def project() -> tuple[Graph, list[str]]:
    return import_graph(REPO, LAYERS)


def test_the_graph_is_really_read(project):
    graph, _ = project
    assert len(graph) > 60
    edges = {(a, b) for a, bs in graph.items() for b in bs}
    assert ("server.federation", "server.model_stages") in edges
    assert ("client.client_app", "fedsqueeze.protocol.messages") in edges
    assert ("server.model_stages", "server.rounds") in edges
    assert ("simulations.sweep", "simulations.run") in edges  # a lazy import inside a function
    assert ("fedsqueeze.ledger", "fedsqueeze.config") in edges  # a relative import
    assert ("benchmarks.bench_codec", "fedsqueeze.models") in edges


def test_every_project_import_names_an_existing_module():
    """Also in tests/: a module moved by a refactor leaves no stale import behind (e.g. after a merge)."""
    _, missing = import_graph(REPO, [*LAYERS, "tests"])
    assert not missing, "imports of project modules that do not exist:\n" + "\n".join(missing)


def test_server_and_client_never_import_each_other(project):
    graph, _ = project
    crossing = [f"{a} imports {b}" for a, bs in sorted(graph.items()) for b in sorted(bs)
                if {a.split(".")[0], b.split(".")[0]} == {"server", "client"}]
    assert not crossing, "server/ and client/ must only share fedsqueeze.protocol:\n" + "\n".join(crossing)


def test_layers_are_imported_downwards_only(project):
    graph, _ = project
    bad = layer_violations(graph, LAYERS)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_import_graph_has_no_cycle(project):
    graph, _ = project
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_flower_free_modules_do_not_load_flower(project):
    """compression, fedsqueeze (but its message schema) and the client's round logic run without Flower."""
    graph, _ = project
    ext = external_imports(REPO, LAYERS)
    free = [m for m in graph if m.split(".")[0] in ("compression", "fedsqueeze") and m != "fedsqueeze.protocol.messages"]
    free += ["client.local_round", "client.stage_query"]
    loading = {m: sorted(d for d in reachable(graph, m) if "flwr" in ext[d]) for m in free}
    loading = {m: via for m, via in loading.items() if via}
    assert not loading, f"Flower-free modules that load flwr (through): {loading}"
    assert "flwr" in ext["fedsqueeze.protocol.messages"]  # the check sees Flower imports at all


def test_every_package_directory_has_a_layer():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


def test_readme_layout_matches_the_tree():
    """Every package is in the README's layout block, and every folder and .py file it names exists."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## What is in the box"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    top, here, listed, named = None, None, set(), []
    for line in filter(str.strip, block.splitlines()):
        entry = re.match(r"^(\s*)([a-z_]+)/\s", line)
        if entry:
            if entry.group(1):
                here = REPO / top / entry.group(2)
            else:
                top = entry.group(2)
                here = REPO / top
            listed.add(here.relative_to(REPO).as_posix())
            line = line[entry.end():]
        assert here is not None, f"layout line before any folder: {line!r}"
        named += [here / name for name in re.findall(r"\b([a-z_0-9]+\.py|[a-z_]+/)", line)]
    packages = {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("*/__init__.py")}
    packages |= {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("fedsqueeze/*/__init__.py")}
    packages -= {"fedsqueeze/modelzip"}  # named inline on the fedsqueeze/ line
    assert packages <= listed, f"packages missing from the README layout: {sorted(packages - listed)}"
    assert all((REPO / d).is_dir() for d in listed), listed
    absent = [str(p.relative_to(REPO)) for p in named if not p.exists()]
    assert not absent, f"the README layout names what does not exist: {absent}"
    assert REPO / "fedsqueeze" / "modelzip/" in named


# ----------------------------------------------------------------------------- the checker on tiny inputs


def test_find_cycle_reports_the_cycle_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is no cycle


def test_layer_violations_name_the_edge():
    layers = {"low": 0, "mid": 1, "peer": 1, "top": 2}
    ok = {"top.x": {"mid.y", "low.z"}, "mid.y": {"low.z", "mid.w"}, "mid.w": set(), "low.z": set()}
    assert layer_violations(ok, layers) == []
    bad = layer_violations({"low.z": {"top.x"}, "mid.y": {"peer.q"}, "top.x": set(), "peer.q": set()}, layers)
    assert bad == ["low.z imports top.x: low (layer 0) may not import top (layer 2)",
                   "mid.y imports peer.q: mid and peer are peers and never import each other"]


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_import_graph_sees_lazy_relative_and_literal_dynamic_imports(tmp_path):
    root = _tree(tmp_path, {
        "low/__init__.py": "from .core import thing\n",
        "low/core.py": "import json\nthing = 1\n",
        "low/sub/__init__.py": "",
        "low/sub/deep.py": "from .. import core\nfrom ..core import thing\n",
        "app/__init__.py": "",
        "app/a.py": "import low.core\n\ndef later():\n    from app import b\n    return b\n",
        "app/b.py": "import importlib\nmod = importlib.import_module('app.a')\nfrom low import thing\n",
        "app/c.py": "from low.sub import deep\nfrom app.gone import x\n",
    })
    graph, missing = import_graph(root, ["low", "app"])
    assert graph["low"] == {"low.core"}
    assert graph["low.sub.deep"] == {"low.core"}
    assert graph["app.a"] == {"low.core", "app.b"}  # the lazy import inside later() counts
    assert graph["app.b"] == {"app.a", "low"}  # importlib with a literal name; a name from low/__init__
    assert graph["app.c"] == {"low.sub.deep"}  # the submodule, not its package's __init__
    assert missing == ["app.c:2 imports app.gone"]
    assert find_cycle(graph) == ["app.a", "app.b", "app.a"]
    assert layer_violations(graph, {"low": 0, "app": 1}) == []
    assert layer_violations(graph, {"low": 1, "app": 0}) != []
