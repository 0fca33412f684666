"""One exception tree: every exception class of ours derives from
``TradeflowError`` through at most one branch, no two share a name, and
``docs/errors.md`` lists each one under its branch."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from runtime.errors import BadInput, NeedsOperator, Retriable, TradeflowError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("topics", "runtime", "agents", "models", "storage", "backtest", "gpu_workers", "ops")
BRANCHES: tuple[type[TradeflowError], ...] = (NeedsOperator, Retriable, BadInput)
#: The root and its branches, defined in topics/errors.py and documented in its introduction.
TREE = {TradeflowError, *BRANCHES}


def _our_exceptions() -> list[type[BaseException]]:
    """Every exception class defined at module level in our packages (each module imported)."""
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if info.name.endswith("__main__"):  # runs the command line on import
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


EXCEPTIONS = _our_exceptions()


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_exception_classes_then_found_in_every_layer() -> None:
    """The scan itself works: it sees classes from the lowest and the highest layers."""
    names = {_qualified(c) for c in EXCEPTIONS}
    assert {"topics.schema.RecordError", "runtime.env.ConfigError", "ops.cli.usage.UsageError"} <= names
    assert len(EXCEPTIONS) > 30


def test_every_exception_class_then_derives_from_tradeflow_error() -> None:
    offenders = [_qualified(c) for c in EXCEPTIONS if not issubclass(c, TradeflowError)]
    assert offenders == [], f"not under runtime.errors.TradeflowError: {offenders}"


def test_every_exception_class_then_in_at_most_one_branch() -> None:
    offenders = {
        _qualified(c): [b.__name__ for b in BRANCHES if issubclass(c, b)]
        for c in EXCEPTIONS
        if sum(issubclass(c, b) for b in BRANCHES) > 1
    }
    assert offenders == {}, f"in more than one branch: {offenders}"


def test_exception_class_names_then_unique() -> None:
    by_name: dict[str, list[str]] = {}
    for c in EXCEPTIONS:
        by_name.setdefault(c.__name__, []).append(_qualified(c))
    assert {n: q for n, q in by_name.items() if len(q) > 1} == {}


def _documented() -> dict[str, str]:
    """Qualified class name -> the ``##`` section of docs/errors.md it is listed in."""
    section, out = "", {}
    for line in (ROOT / "docs" / "errors.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        for name in re.findall(r"^\| `([a-z_.]+\.[A-Za-z]+)` \|", line):
            out[name] = section
    return out


def test_errors_doc_then_lists_every_class_under_its_branch() -> None:
    documented = _documented()
    expected = {}
    for c in EXCEPTIONS:
        if c in TREE:
            continue
        branch = [b.__name__ for b in BRANCHES if issubclass(c, b)]
        expected[_qualified(c)] = branch[0] if branch else "Family roots (no branch of their own)"
    assert documented == expected


@pytest.mark.parametrize("base", [ValueError, RuntimeError])
def test_former_builtin_bases_then_still_caught(base: type[Exception]) -> None:
    """A class rebased onto a branch keeps its old builtin parent: ``except ValueError`` still catches it."""
    from models.inference import FeatureMismatch
    from runtime.broker import BrokerLost

    cls = FeatureMismatch if base is ValueError else BrokerLost
    with pytest.raises(base):
        raise cls("x")
