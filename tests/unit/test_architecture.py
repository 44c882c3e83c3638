"""The layout's promises, checked on the source: ledger/ is pure, and services/ has no import cycle."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What the domain may never import: transports, SQL drivers, the storage side of eventsourcing, the environment.
FORBIDDEN_IN_LEDGER = ("grpc", "google.protobuf", "reserve_ledger", "services", "sqlite3", "psycopg",
                       "eventsourcing.persistence", "eventsourcing.sqlite", "eventsourcing.postgres",
                       "eventsourcing.popo", "os", "socket", "urllib", "http", "requests")


def imports_of(path: pathlib.Path, module_level_only: bool) -> set[str]:
    """Modules imported by a file (`from x import y` yields x and x.y)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_domain_imports_no_transport_storage_or_environment():
    offenders = []
    for path in sorted((ROOT / "ledger").rglob("*.py")):
        for name in imports_of(path, module_level_only=False):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_LEDGER):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def services_graph(module_level_only: bool) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "services").rglob("*.py")}
    return {name: {m for m in imports_of(path, module_level_only) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = "black"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_services_have_no_module_level_import_cycle():
    assert find_cycle(services_graph(module_level_only=True)) is None


def test_the_cli_modules_import_each_other_only_one_way():
    """main gathers the commands; no command module reaches back into main or into another command module."""
    graph = services_graph(module_level_only=False)
    commands = [m for m in graph if m.startswith("services.cli.") and m not in ("services.cli.main",)]
    for name in commands:
        assert "services.cli.main" not in graph[name], name
    assert find_cycle({m: graph[m] for m in graph if m.startswith("services.cli")}) is None


def test_the_cycle_finder_finds_a_cycle():
    """The check above could not pass by accident: a known cycle is found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
