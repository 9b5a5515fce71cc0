"""Small checks the runner needs without importing torch (``modelshield._checks`` imports it)."""

from __future__ import annotations

from modelshield.errors import ConfigError


def check_int(name: str, value: object, *, owner: str, low: int, fix: str = "") -> None:
    """Raise ConfigError unless value is an int (not a bool) >= low."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= low:
        return
    raise ConfigError(f"{owner}: {name!r} must be an int in [{low}, inf]; got {value!r}."
                      + (f" {fix}" if fix else ""))


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first non-empty line of exc's message (at most limit characters), else its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
