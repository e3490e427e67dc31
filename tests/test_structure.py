"""The dependency rules of the layout (docs/design.md), as tests:

    core  <-  service  <-  api  <-  cli
                      <-  worker

core imports none of api, service, worker, cli; service imports neither api nor worker nor cli; the API never
imports the worker (it enqueues by task name); the worker never imports the API; the command line (cli/, on
top) imports core, service and api but never the worker (`skillkd worker` starts it as a command line), and
nothing imports cli. Checked twice: statically over every module's import statements (including imports inside
functions), and by importing the entry points in a fresh interpreter. No private name (`_x`) is imported from
another module of these packages.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "core": ("api", "service", "worker", "cli"),
    "service": ("api", "worker", "cli"),
    "api": ("worker", "cli"),
    "worker": ("api", "cli"),
    "cli": ("worker",),
}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_dependency_direction(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_across_modules() -> None:
    """bench/ included: a benchmark measures what core offers, through its public names."""
    bad = []
    for package in ("api", "service", "worker", "cli", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module, names in imports(path):
                if module.split(".")[0] not in ("core", "api", "service", "worker", "cli"):
                    continue
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or any(
                    part.startswith("_") and not part.startswith("__") for part in module.split(".")
                ):
                    bad.append(f"{path.relative_to(ROOT)}:{line} from {module} import {names}")
    assert not bad, "\n".join(bad)


def test_bench_runs_as_modules_without_path_edits() -> None:
    """`python -m bench.NAME` from the repository root: no script reaches core by editing sys.path."""
    bad = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.path")
    assert not bad, "\n".join(bad)


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {m.split(".")[0] for m in result.stdout.split()}


def test_the_api_process_never_loads_the_worker() -> None:
    # cli: the `skillkd` entry point, every command registered (`skillkd serve` runs the API in it)
    loaded = loaded_after("import api.app, cli, api.reaper; api.app.create_app; cli.skillkd")
    assert "worker" not in loaded
    assert "torch" not in loaded  # the engine is loaded lazily, where a job or an upload check needs it


def test_the_engine_loads_no_service_package() -> None:
    loaded = loaded_after("import core.pipeline, core.estimate")
    assert not loaded & {
        "api",
        "service",
        "worker",
        "cli",
        "click",
        "fastapi",
        "celery",
        "sqlalchemy",
        "redis",
    }
    # the engine's commands: the service's packages load only inside the service commands
    loaded = loaded_after("import cli.engine, cli.evaluate, cli.spec_options")
    assert not loaded & {"api", "service", "worker", "fastapi", "celery", "sqlalchemy", "redis"}


def test_core_needs_neither_click_nor_tqdm() -> None:
    """The terminal is the command line's (cli/): no module of core imports click or tqdm (imports inside
    functions included), and core's entry points import with both made unimportable. (torch.hub imports tqdm
    when it is installed and does without it, so a plain import of torch may still load it.)"""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "core").rglob("*.py"))
        for line, module, _ in imports(path)
        if module.split(".")[0] in ("click", "tqdm")
    ]
    assert not bad, "\n".join(bad)
    entry_points = "import core.pipeline, core.estimate, core.evaluation"
    assert "click" not in loaded_after(entry_points)
    loaded_after(f"sys.modules.update(click=None, tqdm=None); {entry_points}")  # an ImportError fails here


def test_the_worker_never_loads_the_api() -> None:
    loaded = loaded_after("import worker.tasks, worker.runner")
    assert not loaded & {"api", "fastapi"}


def test_routes_leave_data_access_to_the_store() -> None:
    """Routes call service.crud / service.jobstore; they do not query, add, delete or commit themselves."""
    bad = []
    for path in sorted((ROOT / "api" / "routes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr
                in (
                    "add",
                    "add_all",
                    "commit",
                    "execute",
                    "query",
                    "scalar",
                    "scalars",
                    "delete",
                    "get",
                    "refresh",
                    "rollback",
                )
                and isinstance(node.func.value, ast.Name)
                and "session" in node.func.value.id
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} session.{node.func.attr}()")
    assert not bad, "\n".join(bad)


def test_one_definition_of_the_vocabularies() -> None:
    """The job statuses, the stage list and the id pattern are spelled out once (whitespace, line breaks
    included, does not matter: a formatter may put each status on its own line)."""
    texts = {
        p: re.sub(r"\s+", " ", p.read_text())
        for pkg in ("core", "service", "api", "worker", "cli")
        for p in (ROOT / pkg).rglob("*.py")
    }
    for needle in ('"queued", "running"', '"distill_prune", "finalize"', "[0-9a-f]{28}"):
        where = [str(p.relative_to(ROOT)) for p, text in texts.items() if needle in text]
        assert len(where) == 1, (needle, where)


def test_the_engine_has_no_import_cycle() -> None:
    """No circle between core's modules, imports inside functions included (a function-level import only hides
    a circle: core.models once reached back into core.export, core.distill.parallel into core.pipeline)."""
    modules: dict[str, Path] = {}
    for path in (ROOT / "core").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {
        name: {
            candidate
            for _, module, names in imports(path)
            for candidate in (module, *(f"{module}.{n}" for n in names))
            if candidate in modules and candidate != name
        }
        for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for dependency in sorted(graph[name]):
            visit(dependency, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


_SQL_CALLS = ("select", "update", "delete", "insert")


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a name inside a module, not a module (sqlalchemy.exc.IntegrityError)
        return False


def sql_statements(path: Path) -> list[str]:
    """Where the module builds an SQLAlchemy select/update/delete/insert: imports of those names from
    sqlalchemy, calls of them (aliases included, and `sqlalchemy.select(...)`, `sa.update(...)`), and table
    methods (`Job.__table__.update()`). `digest.update(chunk)`, `router.delete(...)`, `crud.insert(...)` are
    not SQL and not reported."""
    tree = ast.parse(path.read_text(), str(path))
    functions: set[str] = set()  # local names of sqlalchemy's select/update/delete/insert
    modules: set[str] = set()  # local names bound to sqlalchemy or one of its modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            for alias in node.names:
                if alias.name in _SQL_CALLS:
                    functions.add(alias.asname or alias.name)
                    found.append(f"{node.lineno} imports {alias.name} from {node.module}")
                elif _is_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)  # from sqlalchemy import sql
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in functions:
            found.append(f"{node.lineno} {func.id}(...)")
        elif isinstance(func, ast.Attribute) and func.attr in _SQL_CALLS:
            root = func.value
            while isinstance(root, ast.Attribute):
                if root.attr == "__table__":
                    break
                root = root.value
            if (isinstance(root, ast.Attribute) and root.attr == "__table__") or (
                isinstance(root, ast.Name) and root.id in modules
            ):
                found.append(f"{node.lineno} {ast.unparse(func)}(...)")
    return found


def test_job_state_sql_lives_in_the_store() -> None:
    """Only service/ issues SQL: job state (service/jobstore.py) and the owned resources (service/crud.py).
    The API's routes, reaper and metrics and the worker's runner call their functions, so the guarded
    transitions (`... WHERE status IN (...)`) are written, and reviewed, in one place."""
    bad = []
    for package in ("api", "worker", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad += [f"{path.relative_to(ROOT)}:{where}" for where in sql_statements(path)]
    assert not bad, "\n".join(bad)
