"""Ports for the embedded processes: bindable now, and outside the kernel's range of client source ports
(a client that took the port between the choice and the server's bind failed a platform start)."""

from __future__ import annotations

import socket

from ops.embedded.broker import _ephemeral_range, free_port


def test_free_port_then_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert 1024 <= port <= 65535 and not low <= port <= high
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))  # raises if it was not free
