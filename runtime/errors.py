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
as a second parent, so ``except ValueError`` callers still work. The classes
live in :mod:`topics.errors` (the lowest layer, so that ``RecordError`` can
derive from them); import them from here. ``docs/errors.md`` lists which
class is in which branch.
"""

from __future__ import annotations

from topics.errors import BadInput, NeedsOperator, Retriable, TradeflowError

__all__ = ["BadInput", "NeedsOperator", "Retriable", "TradeflowError"]
