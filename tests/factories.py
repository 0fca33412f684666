"""Type-driven record generators for tests: hypothesis strategies and seeded samples.

Both read the record classes' annotations (including the Annotated
constraints), so a new field or record type is covered without editing here.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

from hypothesis import strategies as st

from topics.schema import TS_MAX_NS, TS_MIN_NS, NonNegative, Positive, Record, _Symbol, _Timestamp

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BTC/USDT:USDT", "ETH/USD")
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)


def strategy_for_type(tp: Any) -> st.SearchStrategy[Any]:
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, _Timestamp):
                return st.integers(TS_MIN_NS, TS_MAX_NS - 1)
            if isinstance(m, _Symbol):
                return st.sampled_from(SYMBOLS)
            if isinstance(m, Positive):
                return st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False)
            if isinstance(m, NonNegative):
                if base is int:
                    return st.integers(0, 2**40)
                return st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
        return strategy_for_type(base)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if set(non_none) == {str, int, float, bool}:
            return st.one_of(_text, st.integers(-(2**53), 2**53), _finite, st.booleans())
        inner = st.one_of(*[strategy_for_type(a) for a in non_none])
        return st.one_of(st.none(), inner) if len(non_none) < len(args) else inner
    if origin is tuple:
        return st.lists(strategy_for_type(get_args(tp)[0]), max_size=6).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=12), strategy_for_type(get_args(tp)[1]), max_size=5)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    return {
        str: _text,
        int: st.integers(-(2**53), 2**53),
        float: _finite,
        bool: st.booleans(),
    }[tp]


def strategy_for(cls: type[Record]) -> st.SearchStrategy[Any]:
    """Records of ``cls`` that satisfy the field constraints and ``validate()``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {f.name: strategy_for_type(hints[f.name]) for f in dataclasses.fields(cls)}
    kwargs["schema_version"] = st.just(cls.SCHEMA_VERSION)
    if cls.KIND == "signal":  # probabilities must sum to one: draw two cut points
        cuts = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted)
        return st.builds(
            lambda c, **kw: cls(p_up=c[0], p_flat=c[1] - c[0], p_down=1.0 - c[1], **kw),
            cuts,
            **{k: v for k, v in kwargs.items() if not k.startswith("p_")},
        ).filter(_valid)
    if cls.KIND == "opening_status":  # parallel blocker arrays: draw the blockers, then split them
        blocker = st.tuples(
            _text,
            _text,
            _text,
            _text,
            st.one_of(st.none(), st.integers(0, 2**62)),
            st.sampled_from(("market", "wall")),
            st.one_of(st.none(), st.integers(0, 2**62)),
        )
        return st.builds(
            lambda bs, **kw: cls(allowed=not bs, **_blocker_arrays(bs), **kw),
            st.lists(blocker, max_size=4),
            **{k: v for k, v in kwargs.items() if not k.startswith("blocker_") and k != "allowed"},
        ).filter(_valid)
    return st.builds(cls, **kwargs).filter(_valid)


def _blocker_arrays(blockers: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    names = ("codes", "scopes", "targets", "details", "until_ns", "domains", "remaining_ns")
    return {f"blocker_{n}": tuple(b[i] for b in blockers) for i, n in enumerate(names)}


def _valid(r: Record) -> bool:
    try:
        r.validate()
    except ValueError:
        return False
    return True


# -- seeded samples (for integration tests, no hypothesis engine) --------------


def sample(cls: type[Record], rng: random.Random) -> Any:
    """One valid record drawn from a seeded RNG (retries until validate() passes)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for _ in range(1000):
        kwargs = {f.name: _sample_type(hints[f.name], rng) for f in dataclasses.fields(cls)}
        kwargs["schema_version"] = cls.SCHEMA_VERSION
        kwargs["event_id"] = f"{cls.KIND}-{rng.getrandbits(64):016x}"
        if cls.KIND == "signal":  # probabilities must sum to one
            a, b = rng.random(), rng.random()
            lo, hi = min(a, b), max(a, b)
            kwargs.update(p_up=lo, p_flat=hi - lo, p_down=1.0 - hi)
        if cls.KIND == "opening_status":  # parallel blocker arrays
            blockers = [
                ("kill_switch_global", "global", "*", "drill", rng.choice([None, 1_700_000_000 * 10**9]), "wall", None)
                for _ in range(rng.randrange(0, 3))
            ]
            kwargs.update(allowed=not blockers, **_blocker_arrays(blockers))
        rec = cls(**kwargs)
        if _valid(rec):
            return rec
    raise AssertionError(f"could not sample a valid {cls.__name__}")


def _sample_type(tp: Any, rng: random.Random) -> Any:
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, _Timestamp):
                return rng.randrange(1_500_000_000 * 10**9, 1_900_000_000 * 10**9)
            if isinstance(m, _Symbol):
                return rng.choice(SYMBOLS)
            if isinstance(m, Positive):
                return round(rng.uniform(0.01, 70_000), 6)
            if isinstance(m, NonNegative):
                return rng.randrange(0, 1000) if base is int else round(rng.uniform(0, 100), 8)
        return _sample_type(base, rng)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if set(non_none) == {str, int, float, bool}:
            return rng.choice(["x", 3, 0.25, True])
        if len(non_none) < len(args) and rng.random() < 0.3:
            return None
        return _sample_type(rng.choice(non_none), rng)
    if origin is tuple:
        return tuple(_sample_type(get_args(tp)[0], rng) for _ in range(rng.randrange(0, 4)))
    if origin is dict:
        return {f"k{i}": _sample_type(get_args(tp)[1], rng) for i in range(rng.randrange(0, 3))}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return rng.choice(list(tp))
    if tp is str:
        return rng.choice(["alpha", "β-beta", "", "x" * 20, "ünï ✓"])
    if tp is int:
        return rng.randrange(-1000, 1000)
    if tp is float:
        return rng.uniform(-1e6, 1e6)
    if tp is bool:
        return rng.random() < 0.5
    raise TypeError(tp)
