"""SKIP, the Secure Key Integration Protocol: a second key-delivery front end, for encryptors.

SKIP (Internet-Draft draft-cisco-skip, continued as draft-singh-skip; section numbers below are those
of draft-cisco-skip-02) is the API Cisco encryptors use to get a pre-shared key from their co-located
Key Provider (KP). Here the KP is the node's KME: SKIP is served over the same key store, the same
exactly-once machinery (one drawing end per PHYS link, the journal, aborts) and the same trusted relay
as ETSI GS QKD 014; only the requests and responses differ. This module validates and renders them
without I/O; :class:`SkipFrontEnd` is the thin shell the KME's HTTPS server routes to.

Endpoints (section 4, Table 2), at the root of the KME's HTTPS port, next to ETSI 014's
``/api/v1/keys/...`` (the draft puts them at ``https://{host:port}/...``; encryptors are configured
with a host and a port, not a path, so no prefix is used). Only GET (section 4, Table 3: 404 for
another path, 405 for another method):

``GET /capabilities``
    ``{"entropy": true, "key": true, "algorithm": "QKD", "localSystemID": ..., "remoteSystemID": [...]}``
    (section 4.1, Figure 3; the list is named ``remoteSystemID`` in the draft, an array).
``GET /key?remoteSystemID=<id>[&size=<bits>]``
    a new key shared with ``<id>``: ``{"keyId": <hex>, "key": <hex>}`` (section 4.2, Figure 5).
``GET /key/<keyId>?remoteSystemID=<id>``
    the key the peer encryptor got under ``keyId``, once (section 4.2).
``GET /entropy[?minentropy=<bits>]``
    ``{"randomStr": <hex>, "minentropy": <bits>}`` (section 4.3, Figure 7).

Identity and the mapping onto the 015 model
-------------------------------------------
Callers authenticate with TLS client certificates from the network CA exactly like SAEs (the draft's
certificate mode, section 3 Table 1; its PSK mode is not offered: Python's ``ssl`` module has no TLS
1.3 external PSK before 3.13). An encryptor *is* an SAE: its identity is its certificate's CommonName.

* ``localSystemID`` (section 4.1.1) is the calling encryptor's own SAE ID: the KME shows each
  encryptor its own view of the KP. SAE IDs are unique in the network, so this is the draft's *global
  uniqueness*, and an encryptor hands its peer (in IKEv2's USE_PPK, section 5) exactly the name the
  peer must use as ``remoteSystemID``.
* ``remoteSystemID`` is the peer encryptor's SAE ID. ``GET /key`` makes the caller the *master* and
  ``remoteSystemID`` the *slave*: a CLIENT ``qkd_app`` with ``server_app_id`` = caller and
  ``client_app_id`` = remoteSystemID must be running here. ``GET /key/{keyId}`` makes the caller the
  slave and ``remoteSystemID`` the master of such an application. Anything else is 401, as in ETSI 014
  (:mod:`agent.kme.authz`); a key session usable both ways needs an application each way.
* The capabilities' ``remoteSystemID`` list holds every SAE the caller shares an application with here,
  in either role (sorted; no glob patterns). ``/capabilities`` and ``/entropy`` are refused (401) to a
  certificate that no CLIENT application names: the draft requires at least one remote system
  (section 4.1.2), and the KME serves only the SAEs of its key sessions.

Keys and key IDs
----------------
A SKIP key is an ETSI 014 request of one key: ``keyId`` is that key's key_ID (an RFC 9562 version 7
UUID, :func:`agent.kme.etsi014.new_request_id`) written as its 32 hexadecimal digits, which is the
draft's default keyId length of 128 bits (section 4.2.1); the far KME keeps the key under the same
key_ID, so the peer encryptor fetches it there by the id the initiator got, and an SAE on ETSI 014 could
fetch it with ``dec_keys`` too (the two APIs share one store). A keyId is accepted in either case; key
and keyId are returned in lower case. ``size`` is in bits, default 256 (section 4.2.2), a multiple of 8
within the KME's ``[min_key_size, max_key_size]``. A key goes to each end once and is then erased
(section 4.2.2: the KP zeroises its copy).

Entropy
-------
``randomStr`` comes from the operating system's CSPRNG (:func:`secrets.token_bytes`, which is
``os.urandom``: ``getrandom(2)`` on Linux), never from QKD link key, so ``/entropy`` consumes no key.
``minentropy`` is in bits, default 256 (section 4.3), from 1 to :data:`MAX_ENTROPY_BITS`; a request
that is not a whole number of bytes is rounded up to one, and the answer's ``minentropy`` says how many
bits were given. If the CSPRNG fails: 503 (section 4.3, Table 9).

Errors
------
The draft defines status codes but no error body, so an error is the status with ``{"message": ...}``:
400 for a malformed request, a malformed keyId, or a key that is unknown or already delivered (section
4.2, Table 7); 401 for a caller the running configuration does not entitle; 503 when keys are not
ready (not enough link key, the peer KME unreachable, relay capacity used up; the draft lists 503 for
entropy only, and keys are as temporarily unavailable); 404/405 as above. Every check happens before
any key is touched: a refused request consumes nothing.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.kme.etsi014 import KmeError, Limits, bad, check_key_request, query_int, single_query
from qsdn.pki import SAE_ID_RE

if TYPE_CHECKING:
    from agent.kme.server import KmeServer

__all__ = [
    "ALGORITHM",
    "DEFAULT_ENTROPY_BITS",
    "DEFAULT_KEY_BITS",
    "MAX_ENTROPY_BITS",
    "ROUTE_PREFIX",
    "KeyByIdRequest",
    "KeyRequest",
    "SkipFrontEnd",
    "capabilities_body",
    "entropy_body",
    "error_body",
    "key_body",
    "key_id_hex",
    "key_id_uuid",
    "parse_entropy_query",
    "parse_key_by_id",
    "parse_key_query",
    "remote_systems",
]

#: Default key length (draft-cisco-skip-02 section 4.2.2).
DEFAULT_KEY_BITS = 256
#: Default entropy length (section 4.3).
DEFAULT_ENTROPY_BITS = 256
#: Largest ``minentropy`` served, in bits (8 KiB of random bytes).
MAX_ENTROPY_BITS = 1 << 16
#: The capabilities' ``algorithm`` (section 4.1, Table 4: how the KPs make and share keys).
ALGORITHM = "QKD"
#: The names of the SKIP routes start with this; the KME's error middleware renders their errors here.
ROUTE_PREFIX = "skip-"

_HEX_KEY_ID = re.compile(r"[0-9A-Fa-f]{32}")


@dataclass(frozen=True)
class KeyRequest:
    """A validated ``GET /key``: the peer encryptor (the slave SAE) and the key size in bits."""

    remote: str
    size: int


@dataclass(frozen=True)
class KeyByIdRequest:
    """A validated ``GET /key/{keyId}``: the peer encryptor (the master SAE) and the key_ID (a canonical
    UUID)."""

    remote: str
    key_id: str


# --- requests ----------------------------------------------------------------------------------------


def _remote(q: dict[str, str]) -> str:
    if "remoteSystemID" not in q:
        raise bad("the remoteSystemID query parameter is required", parameter="remoteSystemID")
    remote = q["remoteSystemID"]
    if not SAE_ID_RE.fullmatch(remote):
        raise bad(
            f"remoteSystemID {remote[:80]!r} is not a valid system ID (1 to 64 of A-Z a-z 0-9 . _ : -)",
            parameter="remoteSystemID",
        )
    return remote


def parse_key_query(query: Sequence[tuple[str, str]], limits: Limits) -> KeyRequest:
    """``GET /key?remoteSystemID=&size=`` (section 4.2); ``size`` in bits, default 256."""
    q = single_query(query, ("remoteSystemID", "size"))
    remote = _remote(q)
    size = query_int("size", q["size"]) if "size" in q else DEFAULT_KEY_BITS
    check_key_request(1, size, limits)
    return KeyRequest(remote, size)


def key_id_uuid(text: str) -> str:
    """The key_ID (canonical UUID) of a SKIP keyId (32 hexadecimal digits, any case); a 400 otherwise."""
    if not _HEX_KEY_ID.fullmatch(text):
        raise bad(f"keyId {text[:80]!r} is malformed: 32 hexadecimal digits are expected", parameter="keyId")
    return str(uuid.UUID(hex=text))


def key_id_hex(key_id: str) -> str:
    """The SKIP keyId of a key_ID: its 128 bits as 32 lower-case hexadecimal digits (section 4.2.1)."""
    return uuid.UUID(key_id).hex


def parse_key_by_id(key_id: str, query: Sequence[tuple[str, str]]) -> KeyByIdRequest:
    """``GET /key/{keyId}?remoteSystemID=`` (section 4.2)."""
    q = single_query(query, ("remoteSystemID",))
    remote = _remote(q)
    return KeyByIdRequest(remote, key_id_uuid(key_id))


def parse_entropy_query(query: Sequence[tuple[str, str]]) -> int:
    """``GET /entropy?minentropy=`` (section 4.3): the number of random *bytes* to return."""
    q = single_query(query, ("minentropy",))
    bits = query_int("minentropy", q["minentropy"]) if "minentropy" in q else DEFAULT_ENTROPY_BITS
    if not 1 <= bits <= MAX_ENTROPY_BITS:
        raise bad(
            f"minentropy {bits} is not within [1, {MAX_ENTROPY_BITS}] bits",
            parameter="minentropy",
            value=bits,
        )
    return (bits + 7) // 8


def remote_systems(pairs: Iterable[tuple[str, str]], caller: str) -> list[str]:
    """The SAEs ``caller`` shares a key session with, in either role, from (master, slave) pairs; sorted."""
    out = {slave for master, slave in pairs if master == caller}
    out |= {master for master, slave in pairs if slave == caller}
    out.discard(caller)
    return sorted(out)


# --- responses ---------------------------------------------------------------------------------------


def capabilities_body(local: str, remotes: Sequence[str]) -> dict[str, Any]:
    """Section 4.1, Figure 3 and Table 4."""
    return {
        "entropy": True,
        "key": True,
        "algorithm": ALGORITHM,
        "localSystemID": local,
        "remoteSystemID": list(remotes),
    }


def key_body(key_id: str, key: bytes) -> dict[str, str]:
    """Section 4.2, Figure 5 and Table 6: keyId and key in hexadecimal."""
    return {"keyId": key_id_hex(key_id), "key": key.hex()}


def entropy_body(random: bytes) -> dict[str, Any]:
    """Section 4.3, Figure 7 and Table 8: the random bytes in hexadecimal and their length in bits."""
    return {"randomStr": random.hex(), "minentropy": len(random) * 8}


def error_body(exc: KmeError) -> dict[str, str]:
    """The body of a SKIP error: the draft defines none, so ``{"message": ...}`` only."""
    return {"message": exc.message}


# --- the HTTP front end -------------------------------------------------------------------------------


class SkipFrontEnd:
    """SKIP handlers over a :class:`~agent.kme.server.KmeServer` (its identity, authorisation and key
    delivery, shared with ETSI 014)."""

    def __init__(self, kme: KmeServer) -> None:
        self.kme = kme
        self.entropy_bytes = 0

    def routes(self) -> list[web.RouteDef]:
        handlers = (
            ("/capabilities", self._capabilities, "capabilities"),
            ("/key", self._key, "key"),
            ("/key/{key_id}", self._key_by_id, "key-by-id"),
            ("/entropy", self._entropy, "entropy"),
        )
        return [web.get(path, h, allow_head=False, name=ROUTE_PREFIX + name) for path, h, name in handlers]

    def _remotes(self, caller: str) -> list[str]:
        """The caller's peers; 401 if no CLIENT application here names it."""
        remotes = remote_systems(self.kme._authz().by_pair, caller)
        if not remotes:
            raise KmeError(
                401,
                f"{caller} is not an SAE of any key session at KME {self.kme.config.kme_id}"
                " (no CLIENT qkd_app names it)",
            )
        return remotes

    async def _capabilities(self, request: web.Request) -> web.StreamResponse:
        caller = self.kme.identity(request)
        if request.query:
            name = next(iter(request.query))[:40]
            raise bad(f"capabilities takes no query parameters, got {name!r}", parameter=name)
        return web.json_response(capabilities_body(caller, self._remotes(caller)))

    async def _key(self, request: web.Request) -> web.StreamResponse:
        master = self.kme.identity(request)
        req = parse_key_query(list(request.query.items()), self.kme.limits)
        a = self.kme.authorise(master, master, req.remote, "master")
        request_id, keys = await self.kme.new_keys(a, master, req.remote, req.size, 1)
        return web.json_response(key_body(request_id, keys[0]))

    async def _key_by_id(self, request: web.Request) -> web.StreamResponse:
        slave = self.kme.identity(request)
        req = parse_key_by_id(request.match_info["key_id"], list(request.query.items()))
        self.kme.authorise(slave, req.remote, slave, "slave")
        try:
            keys = await self.kme.take_keys(req.remote, slave, [req.key_id])
        except KmeError as exc:
            if exc.status != 400:
                raise
            raise bad(
                f"keyId {key_id_hex(req.key_id)} is unknown or already delivered", parameter="keyId"
            ) from None
        return web.json_response(key_body(req.key_id, keys[0]))

    async def _entropy(self, request: web.Request) -> web.StreamResponse:
        caller = self.kme.identity(request)
        n = parse_entropy_query(list(request.query.items()))
        self._remotes(caller)
        try:
            random = secrets.token_bytes(n)
        except (OSError, NotImplementedError):
            raise KmeError(503, "the operating system's random number generator is not available") from None
        self.entropy_bytes += n
        return web.json_response(entropy_body(random))
