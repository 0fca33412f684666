"""Record machinery: the envelope every record carries, field types with
their validation rules, deterministic event ids, and the strict codec.

Wire format (version 1 of the envelope): one UTF-8 JSON object per Kafka
message, the record's fields at top level, no extra keys. Timestamps are
integer nanoseconds since the Unix epoch (UTC). Enums are lower-case strings.

Decoding is strict: unknown or missing keys, wrong JSON types, NaN/inf,
non-positive prices, negative quantities, unknown enum values, timestamps
outside [2009-01-01, 2100-01-01) and a schema_version other than the class's
all raise :class:`RecordError` with a stable ``reason`` code, which the agents
turn into a dead-letter record. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

import orjson

from topics.errors import BadInput

__all__ = [
    "MAX_RECORD_BYTES",
    "TS_MAX_NS",
    "TS_MIN_NS",
    "Codec",
    "ErrorReason",
    "JsonScalar",
    "NonNegative",
    "Positive",
    "Price",
    "Quantity",
    "Record",
    "RecordError",
    "Symbol",
    "Timestamp",
    "codec_for",
    "event_id_for",
    "keyword_constructor",
]

#: Hard upper bound on one encoded record; larger payloads are dead-lettered.
MAX_RECORD_BYTES = 256 * 1024
#: Sane event-time window: 2009-01-01 (first bitcoin block) .. 2100-01-01.
TS_MIN_NS = 1_230_768_000_000_000_000
TS_MAX_NS = 4_102_444_800_000_000_000

_sha256 = hashlib.sha256
_NON_FINITE_TOKEN = re.compile(rb"[:\[,]\s*-?(NaN|Infinity)\b")
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ErrorReason(enum.StrEnum):
    """Why a message could not become a record. Stable: used as a metric label."""

    OVERSIZE = "oversize"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_ENUM = "unknown_enum"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_SYMBOL = "bad_symbol"
    SCHEMA_VERSION = "schema_version"
    INVALID_VALUE = "invalid_value"
    EVENT_ID_MISMATCH = "event_id_mismatch"


class RecordError(BadInput, ValueError):
    """A message that is not a valid record. Not retriable: dead-letter it."""

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------
# Field constraints (used through typing.Annotated)
# ---------------------------------------------------------------------------


class _Constraint:
    name = "constraint"

    def check(self, field: str, value: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Positive(_Constraint):
    name = "positive"

    def check(self, field: str, value: Any) -> None:
        if not value > 0:
            raise RecordError(ErrorReason.OUT_OF_RANGE, f"{field} must be > 0, got {value!r}")


class NonNegative(_Constraint):
    name = "non_negative"

    def check(self, field: str, value: Any) -> None:
        if not value >= 0:
            raise RecordError(ErrorReason.OUT_OF_RANGE, f"{field} must be >= 0, got {value!r}")


class _Timestamp(_Constraint):
    name = "timestamp_ns"

    def check(self, field: str, value: Any) -> None:
        if not TS_MIN_NS <= value < TS_MAX_NS:
            raise RecordError(
                ErrorReason.BAD_TIMESTAMP,
                f"{field}={value!r} is not nanoseconds within [2009-01-01, 2100-01-01)",
            )


class _Symbol(_Constraint):
    name = "symbol"

    def check(self, field: str, value: Any) -> None:
        if not _SYMBOL_RE.match(value):
            raise RecordError(ErrorReason.BAD_SYMBOL, f"{field}={value!r} is not a unified symbol like BTC/USDT")


class _MaxLen(_Constraint):
    def __init__(self, n: int) -> None:
        self.n = n
        self.name = f"max_len_{n}"

    def check(self, field: str, value: Any) -> None:
        if len(value) > self.n:
            raise RecordError(ErrorReason.OUT_OF_RANGE, f"{field} longer than {self.n}")


Price = Annotated[float, Positive()]
Quantity = Annotated[float, NonNegative()]
Timestamp = Annotated[int, _Timestamp()]
Symbol = Annotated[str, _Symbol()]
JsonScalar = str | int | float | bool


# ---------------------------------------------------------------------------
# Event ids
# ---------------------------------------------------------------------------


def event_id_for(kind: str, *identity: object) -> str:
    """Deterministic event id: sha256 over the record kind and its identity.

    The same logical event (e.g. a bar of BTC/USDT 1h opening at t, revision r)
    always gets the same id, so a redelivered or re-derived record dedupes.
    """
    # sha256 of kind, then 0x1f + str(part) per part, UTF-8: hashed as one string (the same bytes; the
    # common arities as one f-string, which is most of the cost of an id saved)
    n = len(identity)
    if n == 3:
        a, b, c = identity
        text = f"{kind}\x1f{a!s}\x1f{b!s}\x1f{c!s}"
    elif n == 4:
        a, b, c, d = identity
        text = f"{kind}\x1f{a!s}\x1f{b!s}\x1f{c!s}\x1f{d!s}"
    elif n == 5:
        a, b, c, d, e = identity
        text = f"{kind}\x1f{a!s}\x1f{b!s}\x1f{c!s}\x1f{d!s}\x1f{e!s}"
    else:
        text = "\x1f".join([kind, *[str(part) for part in identity]])
    return _sha256(text.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------
# Base record
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Envelope shared by every record.

    ``event_id`` is deterministic (see :func:`event_id_for`) wherever the
    record has a natural identity; ``correlation_id`` ties a chain of records
    to the event that started it, ``causation_id`` names the direct parent.
    """

    KIND: ClassVar[str] = "record"
    SCHEMA_VERSION: ClassVar[int] = 1
    #: Largest accepted encoded size; bigger messages are dead-lettered.
    MAX_BYTES: ClassVar[int] = MAX_RECORD_BYTES

    event_id: Annotated[str, _MaxLen(128)]
    schema_version: int
    ts_event: Timestamp
    ts_init: Timestamp
    correlation_id: Annotated[str, _MaxLen(128)]
    causation_id: Annotated[str, _MaxLen(128)] | None

    #: Fields whose values identify the event; hashed into ``event_id``.
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    #: Older schema versions this reader still decodes: version -> a function turning such a
    #: wire object into the current version's (new fields at their defaults). Empty: only the current.
    UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = MappingProxyType({})

    @classmethod
    def new(
        cls: type[R],
        *,
        ts_init: int,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
        **fields: Any,
    ) -> R:
        """Build a record with its deterministic id and current schema version.

        ``ts_init`` is passed in by the caller (engines get it from their
        injected clock); ``correlation_id`` defaults to the event's own id,
        i.e. the record starts a new chain.
        """
        if event_id is None:
            if not cls.IDENTITY:
                raise TypeError(f"{cls.__name__} has no IDENTITY: pass event_id explicitly")
            event_id = event_id_for(cls.KIND, *[fields[f] for f in cls.IDENTITY])
        return _record_constructor(cls)(
            event_id=event_id,
            schema_version=cls.SCHEMA_VERSION,
            ts_init=ts_init,
            correlation_id=correlation_id if correlation_id is not None else event_id,
            causation_id=causation_id,
            **fields,
        )

    def validate(self) -> None:
        """Cross-field rules; subclasses extend. Raise RecordError."""

    def key(self) -> bytes:
        """Kafka message key. Subclasses key by symbol (or their entity)."""
        return self.event_id.encode()


R = TypeVar("R", bound=Record)


# ---------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------

_Check = Callable[[str, Any], Any]


def _build_check(tp: Any) -> _Check:
    """Compile a type annotation into a function(field, value) -> value."""
    constraints: tuple[_Constraint, ...] = ()
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        constraints = tuple(m for m in meta if isinstance(m, _Constraint))
        inner = _build_check(base)

        def check_annotated(field: str, value: Any) -> Any:
            value = inner(field, value)
            for c in constraints:
                c.check(field, value)
            return value

        return check_annotated

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) < len(args) and len(non_none) == 1:
            inner = _build_check(non_none[0])

            def check_optional(field: str, value: Any) -> Any:
                return None if value is None else inner(field, value)

            return check_optional
        if set(non_none) == {str, int, float, bool}:
            return _check_scalar
        raise TypeError(f"unsupported union {tp!r}")

    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[T, ...] is supported, got {tp!r}")
        item = _build_check(args[0])

        def check_tuple(field: str, value: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be an array")
            return tuple(item(f"{field}[{i}]", v) for i, v in enumerate(value))

        return check_tuple

    if origin is dict:
        kt, vt = get_args(tp)
        if kt is not str:
            raise TypeError("dict keys must be str")
        val = _build_check(vt)

        def check_dict(field: str, value: Any) -> Any:
            if not isinstance(value, dict):
                raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be an object")
            return {k: val(f"{field}.{k}", v) for k, v in value.items()}

        return check_dict

    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_tp = tp

        def check_enum(field: str, value: Any) -> Any:
            if isinstance(value, enum_tp):
                return value
            try:
                return enum_tp(value)
            except ValueError:
                raise RecordError(
                    ErrorReason.UNKNOWN_ENUM,
                    f"{field}={value!r} not in {[m.value for m in enum_tp]}",
                ) from None

        return check_enum
    if tp is bool:
        return _check_bool
    if tp is int:
        return _check_int
    if tp is float:
        return _check_float
    if tp is str:
        return _check_str
    raise TypeError(f"unsupported field type {tp!r}")


def _check_bool(field: str, value: Any) -> Any:
    if value is True or value is False:
        return value
    raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be a boolean")


def _check_int(field: str, value: Any) -> Any:
    if type(value) is int:
        return value
    raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be an integer")


def _check_float(field: str, value: Any) -> Any:
    t = type(value)
    if t is float:
        if math.isfinite(value):
            return value
        raise RecordError(ErrorReason.NOT_FINITE, f"{field} must be finite, got {value!r}")
    if t is int:
        return float(value)
    raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be a number")


def _check_str(field: str, value: Any) -> Any:
    if type(value) is str:
        return value
    raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be a string")


def _check_scalar(field: str, value: Any) -> Any:
    t = type(value)
    if t is float:
        return _check_float(field, value)
    if t in (str, int, bool):
        return value
    raise RecordError(ErrorReason.WRONG_TYPE, f"{field} must be a string, number or boolean")


class Codec(typing.Generic[R]):
    """Strict encoder/decoder for one record class.

    The decoder is compiled once per class into straight-line Python (scalar
    checks inlined, containers through the checker functions above): the
    sink validates every message it persists, so this is a hot path.
    """

    def __init__(self, cls: type[R], max_bytes: int | None = None) -> None:
        self.cls = cls
        self.max_bytes = cls.MAX_BYTES if max_bytes is None else max_bytes
        hints = typing.get_type_hints(cls, include_extras=True)
        self.fields: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(cls))
        self._field_set = frozenset(self.fields)
        self._from_obj = _compile_decoder(cls, self.fields, hints)
        self._upgrades = dict(cls.UPGRADES)

    # -- encode -------------------------------------------------------------
    def encode(self, record: R) -> bytes:
        return orjson.dumps(record)

    # -- decode -------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview | str) -> R:
        if len(data) > self.max_bytes:
            raise RecordError(ErrorReason.OVERSIZE, f"{len(data)} bytes exceeds the {self.max_bytes} byte limit")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # Python's json emits NaN/Infinity tokens; orjson refuses them and
            # overflowing literals. Name that precisely: it is a numeric fault.
            msg = str(exc)
            raw = data.encode() if isinstance(data, str) else bytes(data)
            if "infinity" in msg or _NON_FINITE_TOKEN.search(raw):
                raise RecordError(ErrorReason.NOT_FINITE, f"non-finite number in JSON: {msg[:160]}") from None
            raise RecordError(ErrorReason.INVALID_JSON, msg[:200]) from None
        return self.from_dict(obj)

    def from_dict(self, obj: Any) -> R:
        if type(obj) is not dict:
            raise RecordError(ErrorReason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
        if self._upgrades:
            old = obj.get("schema_version")
            if type(old) is int and old in self._upgrades:
                obj = self._upgrades[old](obj)
        if obj.keys() != self._field_set:
            missing = sorted(self._field_set - obj.keys())
            if missing:
                raise RecordError(ErrorReason.MISSING_FIELD, f"missing {missing}")
            unknown = sorted(obj.keys() - self._field_set)
            raise RecordError(ErrorReason.UNKNOWN_FIELD, f"unknown {unknown[:5]}")
        sv = obj["schema_version"]
        if type(sv) is not int or sv != self.cls.SCHEMA_VERSION:
            raise RecordError(
                ErrorReason.SCHEMA_VERSION,
                f"{self.cls.KIND} schema_version={sv!r}, this reader speaks {self.cls.SCHEMA_VERSION}",
            )
        record: R = self._from_obj(obj)
        record.validate()
        return record

    def to_dict(self, record: R) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(orjson.dumps(record))
        return out


def _compile_decoder(
    cls: type[Record], fields: tuple[str, ...], hints: dict[str, Any]
) -> Callable[[dict[str, Any]], Any]:
    """Generate ``obj -> record`` as one straight-line function.

    Scalar checks (and their constraints, also under ``| None``) are inlined;
    containers go through the checker functions. The record is built by
    setting its slots directly: a frozen dataclass ``__init__`` pays an
    ``object.__setattr__`` call per field, half the cost of a decode. Records
    have no ``__post_init__`` (asserted); cross-field rules live in
    ``validate()``, which the codec calls after construction.
    """
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__: the compiled decoder would skip it")
    env: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "RE": RecordError,
        "ER": ErrorReason,
        "isfinite": math.isfinite,
        "TS_MIN": TS_MIN_NS,
        "TS_MAX": TS_MAX_NS,
        "SYMBOL_MATCH": _SYMBOL_RE.match,
    }
    lines = ["def decode(obj):"]
    for i, name in enumerate(fields):
        tp = hints[name]
        var = f"v{i}"
        lines.append(f"    {var} = obj[{name!r}]")
        optional = False
        if get_origin(tp) in (Union, types.UnionType):
            args = get_args(tp)
            non_none = [a for a in args if a is not type(None)]
            if len(args) == 2 and len(non_none) == 1:
                optional, tp = True, non_none[0]
        base: Any = tp
        constraints: tuple[_Constraint, ...] = ()
        if get_origin(tp) is Annotated:
            base, *meta = get_args(tp)
            constraints = tuple(m for m in meta if isinstance(m, _Constraint))
        inline = _inline_check(var, name, base, constraints)
        if inline is None:
            env[f"check{i}"] = _build_check(tp)
            inline = [f"{var} = check{i}({name!r}, {var})"]
        if optional:
            lines.append(f"    if {var} is not None:")
            lines.extend("        " + ln for ln in inline)
        else:
            lines.extend("    " + ln for ln in inline)
    lines.append("    rec = new(cls)")
    for i, name in enumerate(fields):
        env[f"set{i}"] = getattr(cls, name).__set__
        lines.append(f"    set{i}(rec, v{i})")
    lines.append("    return rec")
    exec("\n".join(lines), env)  # noqa: S102 - generated from type hints only
    fn: Callable[[dict[str, Any]], Any] = env["decode"]
    return fn


def positional_constructor(cls: type[R], order: tuple[str, ...] | None = None) -> Callable[..., R]:
    """``make(*values in field order) -> record`` that sets slots directly (no validation).

    For trusted hot paths that have already validated their values (the CSV
    importer): skips the frozen-dataclass ``__init__`` like the compiled decoder.
    ``order``: the field order the caller passes values in; refused (``TypeError``,
    at import for a module-level constructor) unless it is the class's, so a field
    added to or moved in the class cannot shift values silently.
    """
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__: a positional constructor would skip it")
    names = [f.name for f in dataclasses.fields(cls)]
    if order is not None and tuple(names) != order:
        raise TypeError(f"{cls.__name__} fields are {names}, the caller passes {list(order)}")
    env: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({', '.join(names)}):", "    obj = new(cls)"]
    for n in names:
        env[f"set_{n}"] = getattr(cls, n).__set__
        lines.append(f"    set_{n}(obj, {n})")
    lines.append("    return obj")
    exec("\n".join(lines), env)  # noqa: S102 - generated from the dataclass's own field names
    make: Callable[..., R] = env["make"]
    return make


_KEYWORD_CONSTRUCTORS: dict[type[Any], Callable[..., Any]] = {}
D = TypeVar("D")


def keyword_constructor(cls: type[D]) -> Callable[..., D]:
    """``make(**fields) -> object``: a slotted dataclass ``__init__``'s signature and defaults, slots set directly.

    The same object as ``cls(**fields)`` (for a class without ``__post_init__``: records, engine
    states), without the frozen ``__init__``'s ``object.__setattr__`` per field: half the cost of
    building a record. Compiled once per class (a pure function of the class); keywords, so a
    reordered field cannot swap values.
    """
    make = _KEYWORD_CONSTRUCTORS.get(cls)
    if make is None:
        make = _KEYWORD_CONSTRUCTORS[cls] = _compile_keyword_constructor(cls)
    return make


def _record_constructor(cls: type[R]) -> Callable[..., R]:
    """What :meth:`Record.new` builds with: the keyword constructor, or the class itself for a record
    class the compiler refuses (no slots, or a ``__post_init__`` to run)."""
    make = _KEYWORD_CONSTRUCTORS.get(cls)
    if make is None:
        try:
            make = keyword_constructor(cls)
        except TypeError:
            make = _KEYWORD_CONSTRUCTORS[cls] = cls
    return make


def _compile_keyword_constructor(cls: type[D]) -> Callable[..., D]:
    if not dataclasses.is_dataclass(cls) or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__: a keyword constructor would skip it")
    env: dict[str, Any] = {"new": object.__new__, "cls": cls, "MISSING": dataclasses.MISSING}
    params: list[str] = []
    body = ["    obj = new(cls)"]
    for i, f in enumerate(dataclasses.fields(cls)):
        env[f"set{i}"] = getattr(cls, f.name).__set__
        if f.default is not dataclasses.MISSING:
            env[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"factory{i}"] = f.default_factory
            params.append(f"{f.name}=MISSING")
            body.append(f"    if {f.name} is MISSING: {f.name} = factory{i}()")
        else:
            params.append(f.name)
        body.append(f"    set{i}(obj, {f.name})")
    lines = [f"def make(*, {', '.join(params)}):", *body, "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - generated from the dataclass's own fields
    make: Callable[..., D] = env["make"]
    return make


def _inline_check(var: str, name: str, base: Any, constraints: tuple[_Constraint, ...]) -> list[str] | None:
    """Source lines validating a scalar field in place, or None if not inlinable."""
    lines: list[str]
    if base is str:
        lines = [f"if type({var}) is not str: raise RE(ER.WRONG_TYPE, '{name} must be a string')"]
        for c in constraints:
            if isinstance(c, _MaxLen):
                lines.append(f"if len({var}) > {c.n}: raise RE(ER.OUT_OF_RANGE, '{name} longer than {c.n}')")
            elif isinstance(c, _Symbol):
                lines.append(
                    f"if not SYMBOL_MATCH({var}): raise RE(ER.BAD_SYMBOL, "
                    f"'{name}=' + repr({var}) + ' is not a unified symbol like BTC/USDT')"
                )
            else:
                return None
        return lines
    if base is bool and not constraints:
        return [f"if {var} is not True and {var} is not False: raise RE(ER.WRONG_TYPE, '{name} must be a boolean')"]
    if base is int:
        lines = [f"if type({var}) is not int: raise RE(ER.WRONG_TYPE, '{name} must be an integer')"]
    elif base is float:
        lines = [
            f"if type({var}) is float:",
            f"    if not isfinite({var}): raise RE(ER.NOT_FINITE, '{name} must be finite, got ' + repr({var}))",
            f"elif type({var}) is int: {var} = float({var})",
            f"else: raise RE(ER.WRONG_TYPE, '{name} must be a number')",
        ]
    else:
        return None
    for c in constraints:
        if isinstance(c, Positive):
            lines.append(f"if not {var} > 0: raise RE(ER.OUT_OF_RANGE, '{name} must be > 0, got ' + repr({var}))")
        elif isinstance(c, NonNegative):
            lines.append(f"if not {var} >= 0: raise RE(ER.OUT_OF_RANGE, '{name} must be >= 0, got ' + repr({var}))")
        elif isinstance(c, _Timestamp):
            lines.append(
                f"if not TS_MIN <= {var} < TS_MAX: raise RE(ER.BAD_TIMESTAMP, "
                f"'{name}=' + repr({var}) + ' is not nanoseconds within [2009-01-01, 2100-01-01)')"
            )
        else:
            return None
    return lines


_CODECS: dict[type[Record], Codec[Any]] = {}


def codec_for(cls: type[R]) -> Codec[R]:
    """The shared codec of a record class (compiled once)."""
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = Codec(cls)
    return codec
