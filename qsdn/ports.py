"""Choosing TCP ports for local labs, tests and benchmarks.

A port found with ``bind(port 0)`` comes from the kernel's ephemeral range, which outgoing
connections also draw from: between choosing it and the server binding it, a client socket may take
it. Ports chosen here come from below the ephemeral range (``net.ipv4.ip_local_port_range``), starting
at a random offset per process and checked free by binding.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
from pathlib import Path

_LOCK = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HIGH = max(_ephemeral_low(), 12000)
_LOW = 10000
_counter = itertools.count(random.randrange(_LOW, _HIGH))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now and outside the ephemeral range."""
    with _LOCK:
        for _ in range(_HIGH - _LOW):
            port = _LOW + (next(_counter) - _LOW) % (_HIGH - _LOW)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no free TCP port below the ephemeral range")
