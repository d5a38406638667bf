"""Free TCP ports on 127.0.0.1 for servers the tests start."""

from __future__ import annotations

import socket

#: Ports this process has handed out: the OS may offer a port again once its probe socket is
#: closed, and a stack given the same port twice cannot start (two listeners on one port).
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never the same one twice in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
