"""Server-sent-event fan-out with one bounded queue per client.

Why bounded queues and drop-on-full: the hub runs on the worker's event loop,
the same loop as the pipeline agents. ``publish`` never awaits: it puts the
already-serialized frame into each client's queue with ``put_nowait``; a
client whose queue is full (it reads slower than updates arrive) is
disconnected and counted, so one slow browser tab can never back-pressure the
pipeline or grow memory without bound. The frame is serialized once per
update and shared by every client.

Each frame is a complete snapshot, not a delta: a client that reconnects (or
whose frames were coalesced) is correct with the next frame it reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from runtime.metrics import DASHBOARD_CLIENTS_DROPPED

__all__ = ["Client", "SseHub", "sse_frame"]

CLIENTS = Gauge("tradeflow_dashboard_clients", "Connected dashboard event-stream clients")
FRAMES = Counter("tradeflow_dashboard_frames_total", "Dashboard snapshot frames published")

#: Sentinel a dropped client's writer sees instead of a frame.
_CLOSE = b""


def sse_frame(data: bytes, event: str = "snapshot", event_id: int | None = None) -> bytes:
    """One SSE frame; ``data`` must be a single line (compact JSON is)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


@dataclass(eq=False, slots=True)
class Client:
    """One connected event stream: its queue and whether the hub dropped it."""

    queue: asyncio.Queue[bytes]
    dropped: bool = False


class SseHub:
    """Registry of clients; ``publish`` is synchronous and never blocks."""

    def __init__(self, queue_size: int = 8, max_clients: int = 1000) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.queue_size = queue_size
        self.max_clients = max_clients
        self._clients: set[Client] = set()
        self.dropped_total = 0
        self.published = 0
        self.latest: bytes | None = None

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def connect(self) -> Client | None:
        """A new client (primed with the latest frame), or None when the hub is full."""
        if len(self._clients) >= self.max_clients:
            DASHBOARD_CLIENTS_DROPPED.labels("too_many_clients").inc()
            return None
        client = Client(asyncio.Queue(self.queue_size))
        if self.latest is not None:
            client.queue.put_nowait(self.latest)
        self._clients.add(client)
        CLIENTS.set(len(self._clients))
        return client

    def disconnect(self, client: Client) -> None:
        self._clients.discard(client)
        CLIENTS.set(len(self._clients))

    def publish(self, frame: bytes) -> int:
        """Queue ``frame`` for every client; drop the ones whose queue is full. Returns drops."""
        self.latest = frame
        self.published += 1
        FRAMES.inc()
        slow = []
        for client in self._clients:
            try:
                client.queue.put_nowait(frame)
            except asyncio.QueueFull:
                slow.append(client)
        for client in slow:
            self._drop(client)
        return len(slow)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        self.disconnect(client)
        self.dropped_total += 1
        DASHBOARD_CLIENTS_DROPPED.labels("slow_client").inc()
        # Make room for the close sentinel so the writer wakes up and ends the response.
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(_CLOSE)

    def close_all(self) -> None:
        """End every stream (worker shutdown): open streams must not hold the web server's stop."""
        for client in list(self._clients):
            self.disconnect(client)
            while not client.queue.empty():
                client.queue.get_nowait()
            client.queue.put_nowait(_CLOSE)

    @staticmethod
    def is_close(frame: bytes) -> bool:
        return frame == _CLOSE
