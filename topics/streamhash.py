"""The one framing of a record stream's hash (backtest replay, audit).

``sha256`` over, for every record in order, ``KIND || 0x00 || len(payload)
as 8-byte big-endian || payload``, where the payload is the record's codec
bytes (what the agents publish). Length-prefixed, so no payload can imitate
a frame boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["stream_hash"]


def stream_hash(frames: Iterable[tuple[str, bytes]]) -> str:
    """Hash ``(kind, payload)`` frames in the order given."""
    h = hashlib.sha256()
    update = h.update
    heads: dict[str, bytes] = {}  # kind -> its encoding and the 0x00 separator
    for kind, payload in frames:
        head = heads.get(kind)
        if head is None:
            head = heads[kind] = kind.encode() + b"\x00"
        # one update per frame: the same bytes in the same order as one per part
        update(head + len(payload).to_bytes(8, "big") + payload)
    return h.hexdigest()
