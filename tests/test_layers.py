"""The package's dependency rules, checked by scanning every import of ``src/resedis``.

Rules (the README's "Architecture" section states them for readers; ``LAYERS`` below is
the one table both follow):

1. **No import cycle** between modules.
2. **No ``_private`` name crosses a module boundary**: ``from x import _helper`` or
   ``x._helper`` from another module is refused (make it public where it belongs). A
   private *module* (``cli/_args.py``) may be imported by modules of its own package only.
3. **Layers**: a module may import its own layer and the layers below it, never a layer
   above, whatever the reason. Every module must be placed in ``LAYERS``.

"Every import" means ``import``/``from ... import`` at module level, inside functions,
methods, ``try`` and ``if TYPE_CHECKING:`` blocks, relative imports resolved against the
importing module, and ``importlib.import_module(...)`` / ``__import__(...)`` with a
literal name, an f-string with a literal prefix (``f"resedis.cli.{name}"``: every module
under that prefix), or, in a module that imports dynamically, a string constant equal to
a module name (a lazy ``{"name": "resedis.api"}`` table).

Run it on the source tree from the command line to list every violation::

    python tests/test_layers.py            # exit status 1 when there are violations
    python tests/test_layers.py --graph    # also print every import edge
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "resedis"

# The layers, lowest first. A module may import modules of its own layer and of the
# layers before it. Names are relative to the package: "models" places the package and
# every module below it; "__init__" is the package's own __init__ (the lazy facade
# ``import resedis; resedis.Searcher``). The README's architecture table mirrors this.
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "core",
        ("types", "errors", "storage_errors", "version", "boxes", "masks", "metrics", "eval_protocols", "expressions", "threads",
         "filters", "quant", "ann_projection"),
        "records (Hit, Query, Dataset), errors, box/mask geometry, metrics and benchmark protocols, "
        "the expression parser and its geometric scoring, the region-vector codec, small pure utilities",
    ),
    (
        "data",
        ("io", "synth"),
        "dataset formats, image decoding, predictions JSONL, the synthetic benchmark",
    ),
    (
        "models",
        ("models",),
        "model specs, checkpoint loading, backends behind Protocols, the registry",
    ),
    (
        "testing",
        ("testing",),
        "tiny random checkpoints of the real architectures (tests and `resedis bench` build them), "
        "a subprocess launcher for `resedis serve` in tests",
    ),
    (
        "index",
        ("index",),
        "the LanceDB index and every table in it, the indexing session, ANN",
    ),
    (
        "search",
        ("search", "search_corpus", "search_cache", "search_oneoff", "thresholds", "pipelines", "query", "api", "by_example"),
        "the query path: text in, ranked hits with presence (and masks) out; the pipelines",
    ),
    (
        "applications",
        (
            "eval",
            "calibrate",
            "ablation",
            "demo",
            "bench",
            "distributed",
            "finetune",
            "report",
            "baselines",
        ),
        "work built on search: evaluation, calibration, reports, demo, benchmarks, Ray, training",
    ),
    (
        "shells",
        ("cli", "server", "__main__", "__init__"),
        "thin shells: the CLI, the HTTP server, the package facade",
    ),
)


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``target`` (both dotted module names) at ``line``."""

    importer: str
    target: str
    line: int
    how: str  # "module level", "in function f", "dynamic", ...

    def where(self, modules: dict[str, Path], root: Path) -> str:
        path = modules.get(self.importer)
        shown = path.relative_to(root) if path is not None else self.importer
        return f"{shown}:{self.line} ({self.how})"


@dataclass(frozen=True)
class PrivateUse:
    """``importer`` uses the private ``name`` of ``owner`` (a module) at ``line``."""

    importer: str
    owner: str
    name: str
    line: int


@dataclass
class Graph:
    """Every module of a package and every import between them."""

    root: Path  # the folder holding the package (src/)
    package: str
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    packages: set[str] = field(default_factory=set)  # names whose file is __init__.py
    edges: list[Edge] = field(default_factory=list)
    private: list[PrivateUse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files that do not parse

    def targets(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {name: set() for name in self.modules}
        for edge in self.edges:
            if edge.target != edge.importer:
                out[edge.importer].add(edge.target)
        return out


def module_name(path: Path, root: Path) -> str:
    """``root/resedis/index/store.py`` -> ``resedis.index.store``; a package's
    ``__init__.py`` is the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


class _Visitor(ast.NodeVisitor):
    """Collects the imports and private-name uses of one module."""

    def __init__(self, graph: Graph, module: str, is_package: bool):
        self.graph = graph
        self.module = module
        self.base = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.type_checking = 0
        self.aliases: dict[str, str] = {}  # local name -> package module it is bound to
        self.dynamic = False
        self.strings: list[tuple[str, int]] = []
        self.defines: set[str] = set()  # private attributes/functions this module defines
        self.reaches: list[tuple[str, int]] = []  # obj._name with obj not self/cls/a module

    # -- context ------------------------------------------------------------------
    def _how(self) -> str:
        where = f"in {'.'.join(self.scope)}" if self.scope else "module level"
        return f"{where}, TYPE_CHECKING" if self.type_checking else where

    def _scoped(self, node, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self.defines.add(node.name)
        self._scoped(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.defines.add(node.name)
        for statement in node.body:  # class attributes: _cache = {}
            targets = getattr(statement, "targets", None) or [getattr(statement, "target", None)]
            self.defines.update(t.id for t in targets if isinstance(t, ast.Name))
        self._scoped(node, node.name)

    def visit_If(self, node):
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        self.visit(node.test)
        for child in node.orelse:
            self.visit(child)

    # -- resolution -----------------------------------------------------------------
    def _inside(self, name: str) -> bool:
        return name == self.graph.package or name.startswith(self.graph.package + ".")

    def _known(self, name: str) -> str | None:
        """The longest prefix of ``name`` that is a module of the package."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.graph.modules:
                return candidate
        return None

    def _edge(self, target: str, line: int, how: str | None = None) -> None:
        known = self._known(target)
        if known is None:
            self.graph.errors.append(f"{self.module}:{line}: imports unknown module {target}")
            return
        self.graph.edges.append(Edge(self.module, known, line, how or self._how()))
        self._check_private_module(known, line)

    def _check_private_module(self, target: str, line: int) -> None:
        # A private module (pkg._mod) may be imported from inside pkg only.
        parts = target.split(".")
        for i, part in enumerate(parts):
            if _is_private(part):
                owner = ".".join(parts[:i])
                if not (self.module == owner or self.module.startswith(owner + ".")):
                    self.graph.private.append(PrivateUse(self.module, owner, part, line))

    def _private_name(self, owner: str, name: str, line: int) -> None:
        if _is_private(name) and owner != self.module:
            self.graph.private.append(PrivateUse(self.module, owner, name, line))

    # -- imports --------------------------------------------------------------------
    def visit_Import(self, node):
        for alias in node.names:
            if not self._inside(alias.name):
                continue
            self._edge(alias.name, node.lineno)
            if alias.asname:
                self.aliases[alias.asname] = self._known(alias.name) or alias.name
            else:
                self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.base.split(".")
            up = node.level - 1
            if up >= len(parts):
                self.graph.errors.append(f"{self.module}:{node.lineno}: relative import beyond the package")
                return
            anchor = ".".join(parts[: len(parts) - up])
            source = f"{anchor}.{node.module}" if node.module else anchor
        else:
            source = node.module or ""
        if not self._inside(source):
            return
        owner = self._known(source)
        whole_module = False
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.graph.modules:
                self._edge(submodule, node.lineno)
                self.aliases[alias.asname or alias.name] = submodule
            else:
                whole_module = True
                if owner is not None and alias.name != "*":
                    self._private_name(owner, alias.name, node.lineno)
        if whole_module:
            self._edge(source, node.lineno)

    def visit_Call(self, node):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            how = f"{self._how()}, {name}"
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if self._inside(arg.value):
                    self._edge(arg.value, node.lineno, how)
            elif (
                isinstance(arg, ast.JoinedStr)
                and arg.values
                and isinstance(arg.values[0], ast.Constant)
                and self._inside(str(arg.values[0].value))
            ):
                prefix = str(arg.values[0].value)
                for module in sorted(self.graph.modules):
                    rest = module[len(prefix) :]
                    if module.startswith(prefix) and rest and "." not in rest:
                        self._edge(module, node.lineno, f"{how} f-string")
            else:
                self.dynamic = True
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and node.value in self.graph.modules:
            self.strings.append((node.value, node.lineno))

    def visit_Attribute(self, node):
        # resedis.models._canonical / store._helper through a name bound to a module.
        chain: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if _is_private(node.attr):
            base = node.value
            if isinstance(value, ast.Name) and value.id in self.aliases:
                dotted = ".".join([self.aliases[value.id], *reversed(chain[1:])])
                if dotted in self.graph.modules:
                    self._private_name(dotted, node.attr, node.lineno)
            elif isinstance(base, ast.Name) and base.id in ("self", "cls"):
                if isinstance(node.ctx, ast.Store):
                    self.defines.add(node.attr)
            else:
                self.reaches.append((node.attr, node.lineno))
        self.generic_visit(node)

    def finish(self) -> None:
        if self.dynamic:  # a lazy table of module names feeding import_module(variable)
            for target, line in self.strings:
                if target != self.module:
                    self._edge(target, line, "dynamic: module name passed to import_module")


def scan(root: Path = SRC, package: str = PACKAGE) -> Graph:
    """Parse every ``.py`` file of ``root/package`` and collect its imports.

    Besides imports, it records private names used across modules: ``from m import _x``,
    ``m._x`` through a name bound to module ``m``, and ``obj._x`` (``obj`` not ``self`` or
    ``cls``) where ``_x`` is defined by another module of the package and not by this one
    (``index._db`` outside the module whose class sets ``self._db``)."""
    graph = Graph(root=root, package=package)
    files = sorted((root / package).rglob("*.py"))
    for path in files:
        graph.modules[module_name(path, root)] = path
        if path.name == "__init__.py":
            graph.packages.add(module_name(path, root))
    visitors: list[_Visitor] = []
    for path in files:
        name = module_name(path, root)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as exc:
            graph.errors.append(f"{path}: does not parse: {exc}")
            continue
        visitor = _Visitor(graph, name, path.name == "__init__.py")
        visitor.visit(tree)
        visitor.finish()
        visitors.append(visitor)
    definers: dict[str, list[str]] = {}
    for visitor in visitors:
        for attr in visitor.defines:
            definers.setdefault(attr, []).append(visitor.module)
    for visitor in visitors:
        for attr, line in visitor.reaches:
            if attr in definers and attr not in visitor.defines:
                owner = " / ".join(sorted(definers[attr]))
                graph.private.append(PrivateUse(visitor.module, owner, f"<obj>.{attr}", line))
    return graph


# --------------------------------------------------------------------------- checks


def strongly_connected(nodes: Iterable[str], targets: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative); each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(targets.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(targets.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def shortest_cycle(start: str, members: set[str], targets: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(targets[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in seen:
                    seen.add(child)
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def cycles(graph: Graph) -> list[str]:
    """One message per import cycle (strongly connected component of 2+ modules)."""
    targets = graph.targets()
    out = []
    for component in strongly_connected(graph.modules, targets):
        if len(component) < 2:
            continue
        members = set(component)
        example = shortest_cycle(component[0], members, targets)
        inner = sorted(
            {
                e.where(graph.modules, graph.root) + f" -> {e.target}"
                for e in graph.edges
                if e.importer in members and e.target in members and e.importer != e.target
            }
        )
        out.append(
            f"import cycle of {len(component)} modules: {', '.join(component)}\n"
            f"    e.g. {' -> '.join(example)}\n"
            f"    imports inside the cycle:\n      " + "\n      ".join(inner)
        )
    return out


def private_imports(graph: Graph) -> list[str]:
    seen = set()
    out = []
    for use in graph.private:
        key = (use.importer, use.owner, use.name, use.line)
        if key in seen:
            continue
        seen.add(key)
        path = graph.modules[use.importer].relative_to(graph.root)
        if use.name.startswith("<obj>."):
            what = f"private attribute {use.name[5:]} of an object (defined in {use.owner})"
        else:
            what = f"private {use.owner}.{use.name}"
        out.append(f"{path}:{use.line}: {use.importer} uses {what}")
    return sorted(out)


def layer_of(module: str, package: str, layers: Sequence[tuple[str, tuple[str, ...], str]]):
    """(position, layer name) of a module, by its longest matching entry; None if unplaced."""
    relative = module[len(package) + 1 :] if module != package else "__init__"
    best: tuple[int, int, str] | None = None  # (match length, position, name)
    for position, (layer, names, _) in enumerate(layers):
        for entry in names:
            if relative == entry or relative.startswith(entry + "."):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), position, layer)
    return None if best is None else (best[1], best[2])


def unplaced(graph: Graph, layers=LAYERS) -> list[str]:
    return [
        f"{name} ({graph.modules[name].relative_to(graph.root)}) is in no layer: add it to "
        "LAYERS in tests/test_layers.py and to the README's architecture table"
        for name in sorted(graph.modules)
        if layer_of(name, graph.package, layers) is None
    ]


def stale_entries(graph: Graph, layers=LAYERS) -> list[str]:
    out = []
    for layer, names, _ in layers:
        for entry in names:
            full = graph.package if entry == "__init__" else f"{graph.package}.{entry}"
            if full not in graph.modules:
                out.append(f"LAYERS[{layer!r}] lists {entry!r}, which is no module of {graph.package}")
    return out


def upward_imports(graph: Graph, layers=LAYERS) -> list[str]:
    out = set()
    for edge in graph.edges:
        here = layer_of(edge.importer, graph.package, layers)
        there = layer_of(edge.target, graph.package, layers)
        if here is None or there is None or there[0] <= here[0]:
            continue
        out.add(
            f"{edge.where(graph.modules, graph.root)}: {edge.importer} [{here[1]}] imports "
            f"{edge.target} [{there[1]}], a higher layer"
        )
    return sorted(out)


def violations(root: Path = SRC, package: str = PACKAGE, layers=LAYERS) -> dict[str, list[str]]:
    """Every rule's violations, by rule; all lists empty means the package is clean."""
    graph = scan(root, package)
    return {
        "unparsable or unresolved": list(graph.errors),
        "cycles": cycles(graph),
        "private imports": private_imports(graph),
        "unplaced modules": unplaced(graph, layers),
        "stale layer entries": stale_entries(graph, layers),
        "upward imports": upward_imports(graph, layers),
    }


def main(argv: Sequence[str] = ()) -> int:
    found = violations()
    if "--graph" in argv:
        graph = scan()
        for edge in sorted(graph.edges, key=lambda e: (e.importer, e.line, e.target)):
            print(f"{edge.importer} -> {edge.target}  [{edge.where(graph.modules, graph.root)}]")
        print()
    total = 0
    for rule, messages in found.items():
        if not messages:
            continue
        total += len(messages)
        print(f"== {rule}: {len(messages)}")
        for message in messages:
            print(f"  {message}")
    print(f"{total} violation(s)" if total else "no violations")
    return 1 if total else 0


# --------------------------------------------------------------------------- the rules


def _explain(messages: list[str]) -> str:
    return "\n" + "\n".join(messages)


@pytest.fixture(scope="module")
def source_graph() -> Graph:
    return scan()


def test_the_scanner_sees_the_whole_package(source_graph):
    # Guards against a scan that silently finds nothing (wrong root, renamed package).
    assert len(source_graph.modules) > 50
    assert f"{PACKAGE}.search" in source_graph.modules
    assert len(source_graph.edges) > 100
    assert not source_graph.errors, _explain(source_graph.errors)


def test_no_import_cycle(source_graph):
    found = cycles(source_graph)
    assert not found, _explain(found)


def test_no_private_name_crosses_a_module(source_graph):
    found = private_imports(source_graph)
    assert not found, _explain(found)


def test_every_module_is_placed_in_a_layer(source_graph):
    found = unplaced(source_graph) + stale_entries(source_graph)
    assert not found, _explain(found)


def test_no_module_imports_a_higher_layer(source_graph):
    found = upward_imports(source_graph)
    assert not found, _explain(found)


def test_the_readme_lists_every_layer_entry():
    # The README's architecture table mirrors LAYERS: every layer and every entry.
    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[-1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("*"): line
        for line in section.splitlines()
        if line.startswith("|") and line.count("|") >= 3
    }
    missing = []
    for layer, names, _ in LAYERS:
        row = rows.get(layer)
        if row is None:
            missing.append(f"no row for layer {layer!r}")
            continue
        missing += [f"{layer}: `{n}`" for n in names if n != "__init__" and f"`{n}`" not in row]
    assert not missing, _explain(missing)


# --------------------------------------------------------------------------- the scanner itself


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


TOY_LAYERS = (
    ("low", ("base", "util", "gone", "store", "reader"), ""),
    ("mid", ("engine",), ""),
    ("high", ("app", "__init__", "lazy"), ""),
)


@pytest.fixture()
def toy(tmp_path) -> Path:
    """A package with one of each planted violation, hidden the ways real code hides them."""
    _write(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/base.py": (
                "def helper():\n"
                "    from toy.engine import run  # planted: cycle via a function-level import\n"
                "    return run\n"
            ),
            "toy/util.py": (
                "import importlib\n\n"
                "def later():\n"
                "    return importlib.import_module('toy.app')  # planted: upward, dynamic\n"
            ),
            "toy/engine/__init__.py": "from ..base import helper  # relative, two levels\n\n\ndef run(): ...\n",
            "toy/engine/core.py": (
                "from . import run  # relative to toy.engine\n"
                "from toy.app import _secret  # planted: private name\n"
            ),
            "toy/engine/_impl.py": "VALUE = 1\n",
            "toy/store.py": (
                "class Store:\n"
                "    def __init__(self):\n"
                "        self._db = {}\n\n"
                "    def get(self, other):\n"
                "        return other._db  # allowed: the defining module\n"
            ),
            "toy/reader.py": (
                "def rows(store):\n"
                "    return store._db  # planted: another module's private attribute\n"
            ),
            "toy/engine/uses_impl.py": "from toy.engine._impl import VALUE  # allowed: own package\n",
            "toy/app.py": (
                "import toy.base as b\n"
                "from toy.engine import _impl  # planted: private module from outside its package\n"
                "_secret = 1\n\n"
                "def f():\n"
                "    return b._hidden  # planted: private attribute of a module\n"
            ),
            "toy/lazy.py": (
                "import importlib\n"
                "_TABLE = {'x': 'toy.util'}\n\n"
                "def get(name):\n"
                "    return importlib.import_module(_TABLE[name])\n"
            ),
            "toy/plugins/__init__.py": (
                "import importlib\n\n"
                "def load(name):\n"
                "    return importlib.import_module(f'toy.plugins.{name}')\n"
            ),
            "toy/plugins/one.py": "",
        },
    )
    return tmp_path


def test_scanner_resolves_relative_and_dynamic_imports(toy):
    graph = scan(toy, "toy")
    edges = {(e.importer, e.target) for e in graph.edges}
    assert ("toy.engine", "toy.base") in edges  # from ..base (package __init__, level 2)
    assert ("toy.engine.core", "toy.engine") in edges  # from . import run
    assert ("toy.base", "toy.engine") in edges  # inside a function
    assert ("toy.util", "toy.app") in edges  # importlib.import_module literal
    assert ("toy.lazy", "toy.util") in edges  # module-name string feeding import_module
    assert ("toy.plugins", "toy.plugins.one") in edges  # f-string prefix
    assert ("toy.engine.uses_impl", "toy.engine._impl") in edges
    assert not graph.errors


def test_scanner_finds_a_cycle_through_a_function_level_import(toy):
    found = cycles(scan(toy, "toy"))
    assert len(found) == 1
    assert "import cycle of 2 modules: toy.base, toy.engine" in found[0]
    assert "toy/base.py:2 (in helper)" in found[0]


def test_scanner_finds_private_names_and_private_modules(toy):
    found = private_imports(scan(toy, "toy"))
    assert found == [
        "toy/app.py:2: toy.app uses private toy.engine._impl",
        "toy/app.py:6: toy.app uses private toy.base._hidden",
        "toy/engine/core.py:2: toy.engine.core uses private toy.app._secret",
        "toy/reader.py:2: toy.reader uses private attribute ._db of an object (defined in toy.store)",
    ]


def test_scanner_finds_upward_imports(toy):
    graph = scan(toy, "toy")
    found = upward_imports(graph, TOY_LAYERS)
    assert [m.split(": ", 1)[1] for m in found] == [
        "toy.base [low] imports toy.engine [mid], a higher layer",
        "toy.engine.core [mid] imports toy.app [high], a higher layer",
        "toy.util [low] imports toy.app [high], a higher layer",
    ]
    assert layer_of("toy.engine._impl", "toy", TOY_LAYERS) == (1, "mid")  # under "engine"
    assert layer_of("toy", "toy", TOY_LAYERS) == (2, "high")  # the package's __init__
    assert unplaced(graph, TOY_LAYERS) == [
        "toy.plugins (toy/plugins/__init__.py) is in no layer: add it to LAYERS in "
        "tests/test_layers.py and to the README's architecture table",
        "toy.plugins.one (toy/plugins/one.py) is in no layer: add it to LAYERS in "
        "tests/test_layers.py and to the README's architecture table",
    ]
    assert stale_entries(graph, TOY_LAYERS) == ["LAYERS['low'] lists 'gone', which is no module of toy"]


def test_a_clean_package_has_no_violations(tmp_path):
    _write(
        tmp_path,
        {
            "clean/__init__.py": "from clean.top import main\n",
            "clean/low.py": "def f(): ...\n",
            "clean/top.py": "from clean.low import f\n\ndef main():\n    from . import low\n    return f, low\n",
        },
    )
    layers = (("low", ("low",), ""), ("top", ("top", "__init__"), ""))
    assert all(not v for v in violations(tmp_path, "clean", layers).values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
