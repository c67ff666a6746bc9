"""A loopback port kept for a server that starts later, so that nothing else on the machine takes it meanwhile.

A port that was free when looked at is only named, not kept: until a test's orchestrator "comes back" on it,
any outgoing connection on the machine (its source port comes from the same ephemeral range) or another
suite's server may take it, and the orchestrator then fails to bind, or the "down" address answers. A held
port is bound but not listening: a connection to it is refused, as to a stopped server, and the kernel gives
it to no one else until the server that wants it releases it.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"

_held: dict[int, socket.socket] = {}
_lock = threading.Lock()


def hold_port(port: int = 0) -> int:
    """A loopback port (`port`, as a stopped server leaves it, or any free one) that refuses connections and
    stays this process's until `release_port`."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((HOST, port))
    port = holder.getsockname()[1]
    with _lock:
        _held[port] = holder
    return port


def release_port(port: int) -> None:
    """Give a held port up, just before a server binds it (nothing if it is not held)."""
    with _lock:
        holder = _held.pop(port, None)
    if holder is not None:
        holder.close()
