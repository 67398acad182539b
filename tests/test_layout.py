"""The shape of the package, read from its source with ``ast``.

* No import circles between budgeted's modules, counting the imports inside
  functions too (a lazy import still ties two modules together).
* joblib's and loky's private names are reached only through
  :mod:`budgeted._compat` (``tests/test_compat.py`` checks they still exist):
  elsewhere only ``import joblib`` and joblib's public names (``joblib.__all__``).
* A module's private names stay in it (no ``from .x import _y``).

Exceptions are listed below, each with its file and its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import joblib

SRC = Path(__file__).resolve().parents[1] / "src"
COMPAT = "budgeted._compat"

#: Private attributes of joblib objects budgeted relies on: only
#: budgeted._compat may read, write or override them. (``_workers``, the
#: attribute joblib's ``Parallel`` and ``LokyBackend.terminate`` read on the
#: backend, is not listed: budgeted's backend sets it as joblib expects, see
#: tests/test_compat.py.)
PRIVATE_JOBLIB_ATTRIBUTES = frozenset(
    {
        "_backend",
        "_callbacks",
        "_clean_temporary_resources",
        "_current_context_id",
        "_finalizers",
        "_get_backing_memmap",
        "_id",
        "_max_nbytes",
        "_prepare_worker_env",
        "_results",
        "_temp_folder_manager",
        "_temp_folder_root",
        "_to_func_args",
    }
)

#: (file, private name) -> why it is still there. Only for files whose owner
#: has yet to apply the change named.
JOBLIB_ALLOWED: dict[tuple[str, str], str] = {}

#: (file, imported private name) -> why. Empty: every module imports only the
#: public names of the others.
PRIVATE_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Every module of budgeted: dotted name -> file."""
    modules = {}
    for path in sorted((SRC / "budgeted").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _absolute(name: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` statement of module ``name`` reads from."""
    if not node.level:
        return node.module or ""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(name: str, node: ast.stmt) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) of one import statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        module = _absolute(name, node)
        for alias in node.names:
            yield module, alias.name


def _import_graph() -> dict[str, set[str]]:
    """Module -> the budgeted modules it imports, at any level of the file."""
    graph = {}
    for name in MODULES:
        targets = set()
        for node in ast.walk(_tree(name)):
            for module, imported in _imported(name, node):
                submodule = f"{module}.{imported}"
                target = submodule if submodule in MODULES else module
                if target in MODULES and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(graph, set(group)) for group in groups]


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path through ``group`` back to its start: a -> b -> ... -> a."""
    start = min(group)
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                todo.append(target)
    raise AssertionError(group)  # pragma: no cover - a group is a circle


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _joblib_violations(name: str) -> Iterator[tuple[int, str, str]]:
    """(line, private name, what) of each private joblib/loky use in a module."""
    public = set(joblib.__all__)
    for node in ast.walk(_tree(name)):
        for module, imported in _imported(name, node):
            root = module.split(".")[0]
            if root == "loky" or module.startswith("joblib.externals"):
                yield node.lineno, imported or module, f"imports loky: {module}"
            elif root == "joblib" and module != "joblib":
                yield node.lineno, imported or module, f"imports {module}"
            elif module == "joblib" and imported and imported not in public:
                yield node.lineno, imported, "imports a name not in joblib.__all__"
        if isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_JOBLIB_ATTRIBUTES:
                yield node.lineno, node.attr, f"uses {ast.unparse(node)}"
            is_joblib = isinstance(node.value, ast.Name) and node.value.id == "joblib"
            if is_joblib and node.attr not in public:
                yield node.lineno, node.attr, f"uses {ast.unparse(node)}"
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                is_method = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_method and item.name in PRIVATE_JOBLIB_ATTRIBUTES:
                    yield item.lineno, item.name, f"overrides {item.name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            attribute_call = node.func.id in ("getattr", "setattr", "hasattr")
            for arg in node.args[1:2] if attribute_call else ():
                value = getattr(arg, "value", None)
                if value in PRIVATE_JOBLIB_ATTRIBUTES:
                    yield node.lineno, value, f"{node.func.id}(..., {value!r})"


def test_no_import_circles():
    circles = _cycles(_import_graph())
    assert not circles, "import circles:\n" + "\n".join(
        " -> ".join(circle) for circle in circles
    )


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_private_joblib_names_only_in_compat():
    found = []
    for name, path in MODULES.items():
        if name == COMPAT or name.startswith(COMPAT + "."):
            continue
        for line, private, what in _joblib_violations(name):
            if (_rel(path), private) not in JOBLIB_ALLOWED:
                found.append(f"{_rel(path)}:{line}: {what}")
    assert not found, "private joblib/loky names outside budgeted._compat:\n" + (
        "\n".join(found)
    )


def test_the_checker_sees_private_joblib_use():
    """The checks above would see each kind of use (guards the checker)."""
    seen = {private for _, private, _ in _joblib_violations("budgeted._compat")}
    assert {"_get_backing_memmap", "_temp_folder_manager", "_id"} <= seen
    assert "_clean_temporary_resources" in seen  # an override
    dask = {p for _, p, _ in _joblib_violations("budgeted._compat.dask_backend")}
    assert {"_to_func_args", "_results", "_callbacks"} <= dask


def test_private_names_stay_in_their_module():
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(_tree(name)):
            if not isinstance(node, ast.ImportFrom):
                continue
            for module, imported in _imported(name, node):
                if not module.startswith("budgeted") or not _is_private(imported):
                    continue
                if f"{module}.{imported}" in MODULES:
                    continue  # a private module (budgeted._compat), not a name
                if (_rel(path), imported) not in PRIVATE_IMPORTS_ALLOWED:
                    found.append(f"{_rel(path)}:{node.lineno}: {module}.{imported}")
    assert not found, "private names imported from another module:\n" + (
        "\n".join(found)
    )


def test_dask_backend_name_is_written_alike():
    """Written twice to keep registration -> distributed one way (see there)."""
    import pytest

    pytest.importorskip("distributed")
    from budgeted import distributed, registration

    assert distributed.BACKEND_NAME == registration.DASK_BACKEND_NAME
