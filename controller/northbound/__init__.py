"""The controller's northbound interface: RESTCONF (RFC 8040) over the qsdn-orchestrator model.

``build_app(backend)`` is the aiohttp application; ``RestconfBackend`` is what it needs from the
controller, and ``MemoryBackend`` a complete in-memory backend. See ``restconf.py`` for the resources
and the RFC choices.
"""

from controller.northbound.backend import (
    NORTHBOUND_MODULES,
    MemoryBackend,
    RestconfBackend,
    northbound_schema,
)
from controller.northbound.restconf import SERVER, build_app

__all__ = [
    "NORTHBOUND_MODULES",
    "SERVER",
    "MemoryBackend",
    "RestconfBackend",
    "build_app",
    "northbound_schema",
]
