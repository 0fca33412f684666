"""The error every command raises for a command line it refuses: exit
:data:`runtime.exits.EXIT_USAGE` with the message, no traceback."""

from __future__ import annotations

from runtime.errors import BadInput

__all__ = ["UsageError"]


class UsageError(BadInput, ValueError):
    """Arguments, input or key configuration the command refuses (exit 2); the message says which."""
