"""The lock files pin every dependency pyproject.toml declares, each with hashes (the README installs from them)."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def declared(names: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in names}


def locked(path: pathlib.Path) -> dict[str, str]:
    """name -> the requirement's whole entry (version pin and its --hash lines)."""
    entries, name = {}, None
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            name = match[1].lower().replace("_", "-")
            entries[name] = line
        elif name and line.strip().startswith("--hash=sha256:"):
            entries[name] += line
    return entries


def test_every_declared_dependency_is_pinned_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = declared(project["dependencies"])
    dev = runtime | declared(project["optional-dependencies"]["dev"])
    for lock, names in (("runtime.lock", runtime), ("dev.lock", dev)):
        entries = locked(ROOT / "requirements" / lock)
        missing = sorted(names - entries.keys())
        assert not missing, f"{lock} lacks {missing}: regenerate it (README, Quick start)"
        unhashed = sorted(n for n, entry in entries.items() if "--hash=sha256:" not in entry)
        assert not unhashed, f"{lock} pins without hashes: {unhashed}"


def test_the_pinned_versions_satisfy_the_exact_pins_of_pyproject():
    """A pin in pyproject (==) and the lock must agree, or the install would fail or drift."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = locked(ROOT / "requirements" / "dev.lock")
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^,;\s]+)", spec)
        if match:
            name = match[1].lower().replace("_", "-")
            assert entries[name].startswith(f"{name}=={match[3]}"), (spec, entries[name][:60])
