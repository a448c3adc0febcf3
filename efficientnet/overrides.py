"""Parsing of `--mparams`-style overrides: "dropout_rate=0.3,activation=relu" -> typed keyword arguments."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from efficientnet.params import ModelParams

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(ModelParams)}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(key: str, text: str) -> Any:
    kind = _FIELD_TYPES[key]
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple[float"):
            # Per-channel values: "127.5" for all channels or "123.7:116.3:103.5" (',' separates overrides).
            values = tuple(float(v) for v in text.split(":"))
            return values[0] if len(values) == 1 else values
        return text
    except ValueError:
        raise ValueError(f"model parameter {key}={text!r} is not a valid {kind}") from None


def parse_overrides(items: str | Iterable[str] | None) -> dict[str, Any]:
    """Accepts "a=1,b=2" or ["a=1", "b=2"]; unknown keys raise a ValueError listing the valid ones."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    pairs = [p.strip() for item in items for p in item.split(",") if p.strip()]
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"model parameter {pair!r} is not of the form key=value")
        if key not in _FIELD_TYPES:
            raise ValueError(f"unknown model parameter {key!r}; valid: {', '.join(sorted(_FIELD_TYPES))}")
        result[key] = _convert(key, value.strip())
    return result
