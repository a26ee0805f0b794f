"""Import cost: the CLI and the bot's wiring import no heavy package they do not use (in a fresh
interpreter, so other tests' imports cannot hide one). Timing-free: which modules got loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("aiohttp", "mxnet", "matplotlib")


def loaded_after(code: str) -> dict[str, bool]:
    probe = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import chatops.cli, sys; print('aiohttp' in sys.modules, 'mxnet' in sys.modules, "
         "'matplotlib' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]


def test_a_bot_without_health_endpoint_never_imports_aiohttp(tmp_path: Path) -> None:
    build = (
        "from chatops.app import App\n"
        "from chatops.settings import HealthSettings, Settings\n"
        "app = App(Settings(data_dir={data!r}, health=HealthSettings(listen={listen!r})))\n"
        "assert (app.health is None) == ({listen!r} is None)\n"
    )
    assert loaded_after(build.format(data=str(tmp_path / "off"), listen=None)) == dict.fromkeys(HEAVY, False)
    # With /healthz asked for, the server is built (and aiohttp imported) as before.
    on = loaded_after(build.format(data=str(tmp_path / "on"), listen="127.0.0.1:0"))
    assert on == {"aiohttp": True, "mxnet": False, "matplotlib": False}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its source (top level, in functions,
    under TYPE_CHECKING alike: a circle a type checker needs is a circle)."""
    import ast

    modules = {}
    for package in ("chatops", "adapters", "jobs"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_the_layers_import_only_downwards() -> None:
    """Adapters know the router's types and nothing of jobs; jobs know nothing of chat; the core
    imports no adapter (it finds them by entry point)."""
    graph = _import_graph()
    arrows = [(a, b) for a, deps in graph.items() for b in deps]
    assert [(a, b) for a, b in arrows if a.startswith("chatops") and b.startswith("adapters")] == []
    assert [(a, b) for a, b in arrows if a.startswith("jobs") and not b.startswith("jobs")] == []
    assert [(a, b) for a, b in arrows if a.startswith("adapters") and b.startswith("jobs")] == []


def test_no_import_circle_inside_chatops() -> None:
    graph = {a: {b for b in deps if b.startswith("chatops")} for a, deps in _import_graph().items()
             if a.startswith("chatops")}  # fmt: skip
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                circles.append([*path[path.index(dep) :], dep])
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])
    assert circles == []


# Attributes that hold the job store itself: chat reaching through one of them (`ctx.jobs.store.list`,
# `app.job_store.get`, `manager.store.events`) decides or queries jobs behind the job service's back.
JOB_STORE_HOLDERS = {("jobs", "store"), ("manager", "store"), ("service", "store"), ("job_service", "store")}


def _store_reaches(tree: object) -> list[str]:
    """Where a module reads the job store object: `<x>.jobs.store`, `<x>.manager.store`,
    `<x>.job_service.store` or any use of `<x>.job_store` other than the App's own wiring of it."""
    import ast

    assert isinstance(tree, ast.AST)
    # The one allowed: the App hands its store to tests and tools as `app.job_store` (the wiring).
    wiring = {id(n) for a in ast.walk(tree) if isinstance(a, ast.Assign)
              and [ast.unparse(t) for t in a.targets] == ["self.job_store"] for n in ast.walk(a)}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in wiring:
            continue
        owner = node.value
        holder = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
        if (holder, node.attr) in JOB_STORE_HOLDERS or holder == "job_store":
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_chat_never_opens_the_job_store() -> None:
    """Chat talks to `jobs.service` and reads records from `jobs.records`: no module of `chatops/`
    imports `jobs.store` (anywhere, TYPE_CHECKING too), nor reaches the store object through the
    manager, the service or the app to call it."""
    import ast

    graph = _import_graph()
    importers = sorted(a for a, deps in graph.items() if a.startswith("chatops") and "jobs.store" in deps)
    assert importers == []
    reaches = {}
    for path in sorted((ROOT / "chatops").rglob("*.py")):
        found = _store_reaches(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            reaches[str(path.relative_to(ROOT))] = found
    assert reaches == {}


def test_the_store_check_sees_what_it_forbids() -> None:
    """The check above is not vacuous: it catches each way chat used to reach the store."""
    import ast

    code = (
        "from jobs.store import JobStore\n"
        "ctx.jobs.store.list()\nself.manager.store.get('1')\napp.job_store.events('1')\nx = y.job_service.store\n"
    )
    assert len(_store_reaches(ast.parse(code))) == 4
    allowed = "ctx.jobs.service.jobs()\nself.chat_store.audit()\nself.store.followers(1)\nself.job_store = s.store\n"
    assert _store_reaches(ast.parse(allowed)) == []
