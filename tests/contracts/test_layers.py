"""The project's layers, read from the source with `ast` (imports inside functions included): the networks and
samplers import nothing of the project but sculpting/sde.py, nothing imports a script, and no imports form a cycle.

    python -m pytest -q tests/contracts/test_layers.py
"""
import ast
import sys
from pathlib import Path

from repository import python_sources

REPO = Path(__file__).resolve().parents[2]
SOURCES = python_sources(exclude_folders=("tests",))  # what a clone holds: no environment or cache
LOWEST_LAYERS = ("models", "samplers")  # these import only torch, numpy, tqdm, the standard library and each other
ALLOWED_THERE = {"torch", "numpy", "tqdm", *LOWEST_LAYERS}
LIBRARY_AT_THE_TOP = {"custom_datasets.py"}  # the design card keeps its name and place


def module_name(path: Path) -> str:
    """models/oracle.py -> models.oracle, models/__init__.py -> models; a benchmark by its file (not importable)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SOURCES}


def imported(path: Path) -> set:
    """Every module name an import statement of the file names, at any depth; `from a import b` also names a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_imports(path: Path) -> set:
    return {name for name in imported(path) if name in MODULES}


def is_script(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_a_top_level_module_is_an_entry_point():
    top_level = [path for path in SOURCES if path.parent == REPO and path.name not in LIBRARY_AT_THE_TOP]
    libraries = [path.name for path in top_level if not is_script(path)]
    assert top_level and not libraries, f"library modules at the top level (move them into sculpting/): {libraries}"


def test_networks_and_samplers_import_only_torch_numpy_tqdm_and_each_other():
    for name, path in MODULES.items():
        if name.split(".")[0] in LOWEST_LAYERS:
            outside = {module for module in imported(path) if module.split(".")[0] not in ALLOWED_THERE
                       and module.split(".")[0] not in sys.stdlib_module_names}
            assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)}"


def test_no_module_imports_a_script():
    scripts = {name for name, path in MODULES.items() if is_script(path)}
    for name, path in MODULES.items():
        assert not project_imports(path) & scripts, f"{path.relative_to(REPO)} imports a script"


def test_no_import_cycle():
    graph = {name: project_imports(path) - {name} for name, path in MODULES.items()}
    finished, path_so_far = set(), []

    def visit(name):
        if name in path_so_far:
            cycle = path_so_far[path_so_far.index(name):] + [name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in finished:
            return
        path_so_far.append(name)
        for dependency in sorted(graph[name]):
            visit(dependency)
        path_so_far.pop()
        finished.add(name)

    for name in sorted(graph):
        visit(name)
