"""Schema documentation for outside consumers, generated from the records.

``tradeflow topics`` prints it; docs/topics.md embeds it (a test keeps that
copy in sync with the code).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

from topics.catalogue import TOPICS
from topics.schema import Record, _Constraint
from topics.units import MS_PER_DAY

BEGIN = "<!-- BEGIN GENERATED SCHEMAS (tradeflow topics) -->"
END = "<!-- END GENERATED SCHEMAS -->"


def _describe(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        cons = [m.name for m in meta if isinstance(m, _Constraint)]
        return _describe(base) + (f" ({', '.join(cons)})" if cons else "")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if set(non_none) == {str, int, float, bool}:
            return "string \\| number \\| boolean"
        inner = " \\| ".join(_describe(a) for a in non_none)
        return inner + (" \\| null" if len(non_none) < len(args) else "")
    if origin is tuple:
        return f"array of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"object of {_describe(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "enum: " + ", ".join(f"`{m.value}`" for m in tp)
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def record_table(cls: type[Record]) -> str:
    hints = typing.get_type_hints(cls, include_extras=True)
    lines = ["| field | type |", "|---|---|"]
    lines += [f"| `{f.name}` | {_describe(hints[f.name])} |" for f in dataclasses.fields(cls)]
    return "\n".join(lines)


def catalogue_markdown() -> str:
    out = [
        "| topic | record | key | partitions | cleanup | retention |",
        "|---|---|---|---|---|---|",
    ]
    for t in TOPICS:
        ret = "forever" if t.retention_ms is None else f"{t.retention_ms // MS_PER_DAY} d"
        out.append(
            f"| `{t.name}` | {t.record.__name__} v{t.record.SCHEMA_VERSION} | `{t.key}` | {t.partitions} "
            f"| {t.cleanup.value} | {ret} |"
        )
    seen: set[type[Record]] = set()
    for t in TOPICS:
        if t.record in seen:
            continue
        seen.add(t.record)
        topics = ", ".join(f"`{x.name}`" for x in TOPICS if x.record is t.record)
        doc = " ".join((t.record.__doc__ or "").split())
        out += [
            "",
            f"#### {t.record.__name__} (schema_version {t.record.SCHEMA_VERSION}) on {topics}",
            "",
            doc,
            "",
            record_table(t.record),
        ]
    return "\n".join(out)
