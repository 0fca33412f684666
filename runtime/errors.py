"""The exception tree: every error of ours derives from :class:`TradeflowError`
through one branch that says what the caller should do.

- :class:`NeedsOperator`: stop and get a person (a lost broker, tampered
  checkpoint, a venue order whose fate is unknown). Never retried blindly.
- :class:`Retriable`: a transient failure; the same call may succeed later
  (a network timeout, a database failover). Callers retry with backoff.
- :class:`BadInput`: the input is wrong and retrying it changes nothing (a
  malformed record, bad configuration, a feature mismatch). Dead-letter it or
  exit with :data:`runtime.exits.EXIT_USAGE`.

Classes that used to subclass ``ValueError``/``RuntimeError`` keep that base
as a second parent, so ``except ValueError`` callers still work.
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
