"""The one configuration hash every engine uses (so decisions, gate results and
backtest reports name a configuration the same way). Dependency-free on purpose:
every domain package imports it, so it must not import any of them."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


def _plain(value: Any) -> Any:
    """A config value as plain JSON data (dataclasses, mappings, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def stable_config_hash(config: Any) -> str:
    """sha256 (16 hex) of a config dataclass as canonical JSON (sorted keys)."""
    payload = orjson.dumps({"type": type(config).__name__, "fields": _plain(config)}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()[:16]
