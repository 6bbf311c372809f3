"""The shape of the source tree (docs/architecture.md): unique module names and files a reader can take in.

The import layers themselves are import-linter's contracts in pyproject.toml, which `make lint` checks.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "core", "ingest", "memory")
MAX_LINES = 600


def _sources(*suffixes: str) -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.suffix in suffixes and "migrations" not in path.parts and "__pycache__" not in path.parts
    )


def test_every_module_has_a_name_of_its_own() -> None:
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for path in _sources(".py"):
        if path.name not in ("__init__.py", "__main__.py"):
            seen[path.stem].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def test_no_source_file_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _sources(".py", ".js", ".css", ".html")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
