"""What the app tests share: small limits for a test server and a free local port."""

from __future__ import annotations

import socket

LIMITS = dict(max_upload_mb=0.25, max_duration_s=4.0, max_frames=8, max_new_tokens=16, concurrency=2, queue_size=16)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
