"""The hardware driver interface: what a QKD device offers to the agent.

The NETCONF agent translates the ETSI GS QKD 015 ``etsi-qkd-sdn-node`` configuration into calls on a
:class:`QkdDriver` and turns its :class:`DriverEvent` stream into notifications (``sdqkdn_link_down``,
``sdqkdn_link_perf_update``, ``sdqkdn_interface_down``, ``alarm``...). A real QKD system is supported by
writing one class that satisfies the protocol; the emulator (:mod:`agent.drivers.emulated_qkd`) is the
reference implementation.

The enum values are the ETSI identity names (``etsi-qkd-node-types``, V2.1.1) without module prefix, so
``LinkRole.TRANSMITTER.value == "TRANSMITTER"`` is what goes into ``phys_qkd_role``.

Every failing operation raises :class:`qsdn.errors.DriverError` with a message naming the link or
interface. Events are delivered synchronously, on the event loop thread, to each subscriber; a subscriber
must not block and must not raise (a raising subscriber is logged and skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from agent.keystore import KeyStore

__all__ = [
    "DriverEvent",
    "DriverEventKind",
    "ElementaryLinkConfig",
    "EntanglementDriver",
    "EntanglementEvent",
    "EntanglementSessionConfig",
    "FaultKind",
    "FibreInfo",
    "InterfaceInfo",
    "InterfaceState",
    "LinkGenerationState",
    "LinkPerformance",
    "LinkRole",
    "LinkSpec",
    "LinkState",
    "MemoryConfig",
    "MemoryState",
    "QkdDriver",
    "SessionState",
]


class LinkRole(StrEnum):
    """``etsi-qkd-node-types:qkd-role-types``."""

    TRANSMITTER = "TRANSMITTER"
    RECEIVER = "RECEIVER"
    TRANSCEIVER = "TRANSCEIVER"


class LinkState(StrEnum):
    """``etsi-qkd-node-types:link-status-types``."""

    OFF = "OFF"
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    PASSIVE = "PASSIVE"


class InterfaceState(StrEnum):
    """``etsi-qkd-node-types:iface-status-types``."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    FAILED = "FAILED"


class DriverEventKind(StrEnum):
    LINK_UP = "LINK_UP"
    LINK_DOWN = "LINK_DOWN"
    LINK_PERF = "LINK_PERF"
    INTERFACE_DOWN = "INTERFACE_DOWN"
    INTERFACE_UP = "INTERFACE_UP"
    ALARM = "ALARM"


class FaultKind(StrEnum):
    """Faults a driver can inject (emulator) or report (real device) for tests and demonstrations."""

    FIBRE_CUT = "FIBRE_CUT"
    EAVESDROPPER = "EAVESDROPPER"
    DETECTOR_FAILURE = "DETECTOR_FAILURE"


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """One QKD interface (``qkd_interface``): its module, capabilities and attachment point."""

    qkdi_id: int
    model: str
    technology: str
    role_support: LinkRole
    wavelength_range_nm: tuple[int, int] | None
    max_absorption_db: float | None
    device: str
    port: int


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """The driver-relevant part of a PHYS ``qkd_link``: same ``qkdl_id`` at both ends."""

    qkdl_id: str
    local_qkdi_id: int
    remote_qkdn_id: str
    remote_qkdi_id: int | None
    role: LinkRole
    wavelength_nm: int | None = None
    channel_att_db: float | None = None


@dataclass(frozen=True, slots=True)
class LinkPerformance:
    """``qkdl_performance`` plus the physical quantities behind it.

    ``skr_bps`` is the secret-key rate the link is producing now, ``eskr_bps`` the rate of key actually
    stored, measured over a sliding window, ``stored_key_bits`` the unconsumed key in the key store.
    ``expected_consumption_bps`` is what the driver knows of planned consumption (0 if it does not).
    ``mu`` is the signal intensity (mean photon number) in use, when the driver knows it.
    """

    skr_bps: int
    eskr_bps: int
    expected_consumption_bps: int
    qber: float | None
    stored_key_bits: int
    length_km: float | None
    band: str | None
    loss_db: float | None
    mu: float | None = None


@dataclass(frozen=True, slots=True)
class FibreInfo:
    """The fibre span behind an interface, as an emulator (or a planning tool) knows it.

    Optional capability: drivers that know their span offer ``fibre(qkdi_id) -> FibreInfo | None``.
    """

    length_km: float
    band: str
    extra_loss_db: float
    loss_db: float
    peer_address: str


@dataclass(frozen=True, slots=True)
class DriverEvent:
    """Something the agent should know about (and usually notify the controller of)."""

    kind: DriverEventKind
    reason: str = ""
    qkdl_id: str | None = None
    qkdi_id: int | None = None
    performance: LinkPerformance | None = None


@runtime_checkable
class QkdDriver(Protocol):
    """The operations a QKD device driver offers to the agent."""

    async def start(self) -> None:
        """Bring the device up (open its channel endpoints, start background work)."""

    async def stop(self) -> None:
        """Shut down: cancel and await every task the driver owns, close sockets and the key store."""

    def interfaces(self) -> list[InterfaceInfo]:
        """The QKD interfaces of the device, sorted by ``qkdi_id``."""
        ...

    def interface_state(self, qkdi_id: int) -> InterfaceState: ...

    async def create_link(self, spec: LinkSpec) -> None:
        """Configure a PHYS link on one of the interfaces; it starts disabled (OFF)."""

    async def enable_link(self, qkdl_id: str) -> None:
        """Start the link: PENDING until the quantum channel is up, then ACTIVE."""

    async def disable_link(self, qkdl_id: str) -> None:
        """Stop the link (OFF); its stored key stays in the key store."""

    async def remove_link(self, qkdl_id: str) -> None:
        """Disable and forget the link; its stored key stays in the key store."""

    def link_state(self, qkdl_id: str) -> LinkState: ...

    def performance(self, qkdl_id: str) -> LinkPerformance: ...

    def subscribe(self, callback: Callable[[DriverEvent], None]) -> Callable[[], None]:
        """Register an event callback; returns a function that unregisters it."""
        ...

    async def set_fault(
        self,
        kind: FaultKind,
        on: bool,
        *,
        qkdl_id: str | None = None,
        qkdi_id: int | None = None,
        level: float = 1.0,
    ) -> None:
        """Inject (``on=True``) or clear a fault on a link or an interface."""

    def faults(self, qkdl_id: str) -> dict[FaultKind, float]:
        """The faults affecting a link (its own and its interface's), with their levels."""
        ...

    @property
    def keystore(self) -> KeyStore: ...


# -- entanglement hardware (qsdn-entanglement) -----------------------------------------------------------
#
# The agent turns the ``entanglement`` container of its running configuration into calls on an
# :class:`EntanglementDriver`: one session at a time is created or removed, each carrying everything the
# device needs (its hops' elementary links, the node's memory), so a change of any of it is a remove and a
# create. The emulated implementation is :mod:`agent.drivers.entanglement_driver` (the node's engines over
# the lab's medium service). A real repeater implements the same few methods.


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """``entanglement/memories`` plus the Bell-measurement success of ``bsm_station``."""

    count: int
    coherence_time_s: float
    dephasing_time_s: float | None = None
    readout_fidelity: float = 1.0
    initialisation_fidelity: float = 1.0
    swap_success_probability: float = 1.0


@dataclass(frozen=True, slots=True)
class ElementaryLinkConfig:
    """One ``elementary_link`` (the same ``link_id`` at both of its ends)."""

    link_id: str
    remote_qkdn_id: str
    heralding: str
    station_qkdn_id: str | None = None
    length_km: float = 0.0
    loss_db: float | None = None
    modes: int = 1
    initial_fidelity: float = 1.0
    alpha: float | None = None


@dataclass(frozen=True, slots=True)
class EntanglementSessionConfig:
    """One ``session`` as this node runs it, with the links of its hops and the node's memory."""

    session_id: str
    role: str  # "end" or "repeater"
    end_a_qkdn_id: str
    end_b_qkdn_id: str
    path: tuple[str, ...]
    prev_hop: str | None
    next_hop: str | None
    application: str  # "bbm92-key" or "pairs"
    memory: MemoryConfig
    #: the elementary links to prev_hop and next_hop, in path order (``prev_link_id``/``next_link_id``,
    #: or the only link to that neighbour)
    links: tuple[ElementaryLinkConfig, ...]
    #: memories the session may use at this node for each of those hops, in the same order
    #: (``prev_memories``/``next_memories``, or 1 at a repeater and 1 + purification rounds at an end)
    memories: tuple[int, ...] = ()
    swap_order: str = "asap"
    swap_round: int | None = None
    purification: str = "none"
    purification_rounds: int = 0
    cutoff_time_s: float | None = None
    target_fidelity: float | None = None
    target_rate_pairs_per_s: float | None = None
    key_qkdl_id: str | None = None


@dataclass(frozen=True, slots=True)
class SessionState:
    """The ``config false`` leaves of a session; key bits and QBER only at the ends of bbm92-key."""

    status: str
    pairs_delivered: int = 0
    rate_pairs_per_s: float = 0.0
    achieved_fidelity: float | None = None
    key_bits: int | None = None
    qber: float | None = None


@dataclass(frozen=True, slots=True)
class LinkGenerationState:
    """The ``config false`` leaves of an elementary link."""

    status: str  # up, down, generating
    pairs_generated: int = 0
    rate_pairs_per_s: float = 0.0
    mean_fidelity: float | None = None


@dataclass(frozen=True, slots=True)
class MemoryState:
    in_use: int
    free: int


@dataclass(frozen=True, slots=True)
class EntanglementEvent:
    """A session's status changed (the ``entanglement_session_update`` notification)."""

    session_id: str
    status: str
    reason: str | None = None
    achieved_fidelity: float | None = None
    target_fidelity: float | None = None
    rate_pairs_per_s: float | None = None
    link_id: str | None = None


@runtime_checkable
class EntanglementDriver(Protocol):
    """The operations an entanglement device (memories, sources, BSM) driver offers to the agent.

    ``create_session`` either runs the session or raises :class:`qsdn.errors.DriverError` having
    started nothing; ``remove_session`` stops it, frees its memories and never fails for an unknown id.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create_session(self, spec: EntanglementSessionConfig) -> None: ...

    async def remove_session(self, session_id: str) -> None: ...

    def session_state(self, session_id: str) -> SessionState | None: ...

    def link_state(self, link_id: str) -> LinkGenerationState | None: ...

    def memory_state(self, count: int) -> MemoryState: ...

    def subscribe(self, callback: Callable[[EntanglementEvent], None]) -> Callable[[], None]: ...
