"""Reading a method's settings: one error type for every user mistake, and the checks that raise it.

``ConfigError`` is the one exception a bad setting raises anywhere in
ham-bench (sparsifiers, optimizers, models, data, the run config): its
message is one line naming the key, what is allowed and what was given, and
the command line prints it and exits with status 2. It lives here, in the
lowest layer, so that sparsifiers (and plugins: ``from sparsifiers import
ConfigError``) raise the same type as the framework.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A user-fixable problem with a setting; the message is one line naming the key."""


def number(key: str, value: Any, kind=float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, where: str = "sparsifier") -> float | int:
    """``kind(value)`` checked against ``[low, high]`` (``*_open``: strict), else a ConfigError naming ``where.key``.

    Booleans are not numbers; ``kind=int`` accepts 3 and 3.0, not 3.5.
    """
    label = f"{where}.{key}" if where else key
    try:
        if isinstance(value, bool) or value is None:
            raise TypeError
        as_float = float(value)
        if not math.isfinite(as_float) or (kind is int and as_float != int(as_float)):
            raise ValueError
        parsed = int(as_float) if kind is int else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    too_low = low is not None and (parsed <= low if low_open else parsed < low)
    too_high = high is not None and (parsed >= high if high_open else parsed > high)
    if too_low or too_high:
        kind_text = "an integer " if kind is int else ""
        raise ConfigError(f"{label} must be {kind_text}{_range(low, high, low_open, high_open)}, got {value!r}")
    return parsed


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def choice(key: str, value: Any, allowed: Sequence[str], where: str = "sparsifier") -> str:
    """``value`` if it is one of ``allowed``, else a ConfigError listing them."""
    if value not in allowed:
        raise ConfigError(f"{where}.{key} must be one of [{', '.join(allowed)}], got {value!r}")
    return value


def flag(key: str, value: Any, where: str = "sparsifier") -> bool:
    """A real boolean, else a ConfigError (``"false"`` as a string is a mistake, not False)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value
