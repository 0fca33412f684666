"""The root of the exception tree and its three branches.

Defined in the lowest layer so that :class:`topics.schema.RecordError` can
derive from it; everything above imports them from :mod:`runtime.errors`,
which documents the tree.
"""

from __future__ import annotations

__all__ = ["BadInput", "NeedsOperator", "Retriable", "TradeflowError"]


class TradeflowError(Exception):
    """Root of every exception the platform raises on purpose."""


class NeedsOperator(TradeflowError):
    """Stop what you are doing and tell a person; an automatic retry would hide it."""


class Retriable(TradeflowError):
    """Transient: the same operation may succeed if tried again later."""


class BadInput(TradeflowError):
    """The input (record, file, argument, configuration) is wrong; do not retry it unchanged."""
