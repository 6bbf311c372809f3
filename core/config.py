"""Settings machinery: fields bound to environment variables, and reading them from the environment and `.env`.

Each package declares its own frozen dataclasses of settings with :func:`setting`, so every field
carries its environment variable and a one-line meaning; ``app.settings`` composes them into the
service's settings. A wrong value raises :class:`~core.errors.SettingsError` naming the variable.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from core.errors import SettingsError

__all__ = ["build_section", "check_range", "convert", "duration_s", "env_rows", "read_env_file", "setting"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def setting(env: str, default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a settings field bound to environment variable ``env``."""
    return field(default=default, metadata={"env": env, "doc": doc, "choices": choices})


def check_range(env: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SettingsError(f"{env}={value} is out of range; it must be between {low} and {high}")


def duration_s(env: str, text: str) -> float:
    """A duration such as ``24h``, ``30m``, ``7d``, ``90s`` or ``90`` (seconds) in seconds; empty is 0.

    Raises:
        SettingsError: naming ``env``, when ``text`` is none of those.
    """
    raw = text.strip().lower()
    number = raw.rstrip("smhd")
    unit = raw[len(number) :]
    try:
        value = float(number) if raw else 0.0
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or unit not in _UNITS:
        raise SettingsError(f"{env}={text!r} is not a duration: give a number with s, m, h or d, such as 24h or 30m")
    return value * _UNITS[unit]


def convert(env: str, raw: str, kind: Any) -> Any:
    raw = raw.strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file of `NAME=value` lines (comments and blanks ignored)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise SettingsError(f"{path}:{number}: expected NAME=value")
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def build_section(section: type, env: dict[str, str]) -> Any:
    hints = get_type_hints(section)
    kwargs: dict[str, Any] = {}
    for f in fields(section):
        name = f.metadata["env"]
        if name not in env:
            continue
        value = convert(name, env[name], hints[f.name])
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(choices)}")
        kwargs[f.name] = value
    return section(**kwargs)


def env_rows(sections: tuple[type, ...]) -> list[tuple[str, str, str]]:
    """Every field of ``sections`` as ``(ENV_NAME, default, meaning)``, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    for section in sections:
        for f in fields(section):
            default = f.default if f.default is not MISSING else ""
            if isinstance(default, bool):
                shown = "true" if default else "false"
            else:
                shown = str(default)
            doc = f.metadata["doc"]
            if f.metadata.get("choices"):
                doc += f" One of: {', '.join(f.metadata['choices'])}."
            rows.append((f.metadata["env"], shown, doc))
    return rows
