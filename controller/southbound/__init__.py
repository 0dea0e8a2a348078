"""Southbound: the controller's NETCONF sessions to node agents.

:class:`NodeClient` is the contract (``base.py``); :func:`node_client` makes one for an endpoint.
``"asyncssh"`` (the default) is qsdn's own asyncio client; ``"ncclient"`` wraps ncclient in worker
threads and is imported only when asked for, since ncclient is not a runtime dependency.
"""

from __future__ import annotations

from typing import Literal

from controller.southbound.base import (
    NodeClient,
    NodeEndpoint,
    NodeError,
    NodeRpcError,
    NodeUnreachableError,
)

Implementation = Literal["asyncssh", "ncclient"]
IMPLEMENTATIONS: tuple[Implementation, ...] = ("asyncssh", "ncclient")


def node_client(endpoint: NodeEndpoint, implementation: Implementation = "asyncssh") -> NodeClient:
    """A new, unconnected client for ``endpoint``."""
    if implementation == "asyncssh":
        from controller.southbound.asyncssh_client import AsyncsshNodeClient

        return AsyncsshNodeClient(endpoint)
    if implementation == "ncclient":
        from controller.southbound.ncclient_client import NcclientNodeClient

        return NcclientNodeClient(endpoint)
    raise ValueError(f"unknown southbound implementation {implementation!r}: use one of {IMPLEMENTATIONS}")


__all__ = [
    "IMPLEMENTATIONS",
    "Implementation",
    "NodeClient",
    "NodeEndpoint",
    "NodeError",
    "NodeRpcError",
    "NodeUnreachableError",
    "node_client",
]
