"""Time units: every timestamp in the platform is int nanoseconds since the epoch (UTC).

One spelling for the constants (``NS_PER_<UNIT>``, ``MS_PER_<UNIT>``) and the
one parser of operator-typed times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

NS_PER_US: Final = 1_000
NS_PER_MS: Final = 1_000_000
NS_PER_SECOND: Final = 1_000_000_000
NS_PER_MINUTE: Final = 60 * NS_PER_SECOND
NS_PER_HOUR: Final = 3_600 * NS_PER_SECOND
NS_PER_DAY: Final = 86_400 * NS_PER_SECOND
NS_PER_YEAR: Final = 365 * NS_PER_DAY
MS_PER_DAY: Final = 86_400_000


def parse_when(text: str) -> int:
    """ISO date/time (UTC when no offset) -> ns since the epoch."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_SECOND
