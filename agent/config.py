"""The agent's configuration file (``node.yaml``), validated once at load time.

Every error is a :class:`qsdn.errors.ConfigError` whose message names the offending key, e.g.
``node.yaml: interfaces[1].fibre.length_km: must be a number >= 0``.

Example::

    node_id: 6f1c7a3e-0000-4000-8000-000000000001
    name: alice
    location: Amsterdam
    data_dir: ./data/alice
    netconf:
      host: 127.0.0.1
      port: 8301
      idle_timeout_s: 600
      max_sessions: 64
      max_message_bytes: 16777216
      users:
        - {name: admin, password: admin}
        - {name: ctrl, authorized_keys: ~/.ssh/id_ed25519.pub}
    device: {eta_det: 0.2, dark_count: 1.0e-5, e_d: 0.015, pulse_rate_hz: 1.0e7}
    interfaces:
      - qkdi_id: 1
        listen: {host: 127.0.0.1, port: 7301}
        peer: {host: 127.0.0.1, port: 7302}
        fibre: {length_km: 50, band: C, extra_loss_db: 0.0}
    kme:                            # optional: the ETSI GS QKD 014 key delivery server (agent/kme)
      host: 127.0.0.1
      port: 8443
      kme_id: alice                 # default: name; also the CommonName of the node certificate
      cert: pki/nodes/alice.crt     # server certificate and client certificate towards peer KMEs
      key: pki/nodes/alice.key
      ca: pki/ca.crt                # verifies SAE and peer KME certificates
      default_key_size: 256         # bits; sizes are multiples of 8 within [min_key_size, max_key_size]
      min_key_size: 64
      max_key_size: 4096
      max_keys_per_request: 128     # status field max_key_per_request (at most 4096)
      max_key_count: 100000         # status field max_key_count
      peer_timeout_s: 5
      skip: true                    # also serve SKIP (draft-cisco-skip / draft-singh-skip) for encryptors,
                                    # at the root of the same port (agent/kme/skip.py)
      peers:                        # the KMEs at the far end of this node's links, by qkdn_id
        6f1c7a3e-0000-4000-8000-000000000002: {url: "https://127.0.0.1:8444", kme_id: bob}
    entanglement:                   # optional: run qsdn-entanglement sessions (entanglement_driver.py)
      medium: {host: 127.0.0.1, port: 7400}   # the lab's quantum medium (`qsdn medium run`)
      timeout_s: 5                  # connect and register with the medium within this time
      bbm92: {block_size: 1024, p_z: 0.5, sample_fraction: 0.2}   # BBM92 at the ends of bbm92-key sessions
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from qsdn.configfile import YamlReader as _Reader
from qsdn.errors import ConfigError


@dataclass(frozen=True)
class UserConfig:
    name: str
    password: str | None = None
    password_hash: str | None = None
    authorized_keys: Path | None = None

    def check_password(self, password: str) -> bool:
        if self.password_hash:
            return verify_password(self.password_hash, password)
        if self.password is not None:
            return hmac.compare_digest(self.password.encode(), password.encode())
        return False

    def __repr__(self) -> str:  # never show secrets
        return f"UserConfig(name={self.name!r})"


@dataclass(frozen=True)
class NetconfConfig:
    host: str = "127.0.0.1"
    port: int = 830
    idle_timeout_s: float = 600.0
    hello_timeout_s: float = 30.0
    max_sessions: int = 64
    max_message_bytes: int = 16 * 1024 * 1024
    confirm_timeout_s: int = 600
    users: tuple[UserConfig, ...] = ()
    host_key: Path | None = None


@dataclass(frozen=True)
class FibreConfig:
    length_km: float
    band: str = "C"
    extra_loss_db: float = 0.0


@dataclass(frozen=True)
class InterfaceConfig:
    qkdi_id: int
    listen_host: str
    listen_port: int
    peer_host: str
    peer_port: int
    fibre: FibreConfig
    role_support: str = "TRANSCEIVER"
    model: str = "qsdn-emulated-bb84"


@dataclass(frozen=True)
class DeviceConfig:
    eta_det: float = 0.2
    dark_count: float = 1e-5
    e_d: float = 0.015
    pulse_rate_hz: float = 10e6
    tick_s: float = 0.2


@dataclass(frozen=True)
class KmePeerConfig:
    """The KME at the far end of a link: where to reach it and the CommonName its certificate carries."""

    qkdn_id: str
    url: str
    kme_id: str


@dataclass(frozen=True)
class KmeConfig:
    """The ETSI GS QKD 014 KME of the node (``kme`` section)."""

    kme_id: str
    port: int
    cert: Path
    key: Path
    ca: Path
    host: str = "127.0.0.1"
    default_key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 4096
    max_keys_per_request: int = 128
    max_key_count: int = 100_000
    peer_timeout_s: float = 5.0
    peers: tuple[KmePeerConfig, ...] = ()
    skip: bool = True

    def peer(self, qkdn_id: str) -> KmePeerConfig | None:
        for p in self.peers:
            if p.qkdn_id == qkdn_id:
                return p
        return None


@dataclass(frozen=True)
class EntanglementConfig:
    """The ``entanglement`` section: where the lab's quantum medium is, and BBM92 parameters."""

    medium_host: str
    medium_port: int
    timeout_s: float = 5.0
    bbm92_block_size: int = 1024
    bbm92_p_z: float = 0.5
    bbm92_sample_fraction: float = 0.2


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    name: str
    data_dir: Path
    netconf: NetconfConfig
    location: str | None = None
    device: DeviceConfig = field(default_factory=DeviceConfig)
    interfaces: tuple[InterfaceConfig, ...] = ()
    source: str = "node.yaml"
    kme: KmeConfig | None = None
    entanglement: EntanglementConfig | None = None


# --- password hashing (scrypt, RFC 7914) -----------------------------------------------------------
def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${dk.hex()}"


def verify_password(stored: str, password: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    dk = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
    )
    return hmac.compare_digest(dk.hex(), digest)


# --- loading ---------------------------------------------------------------------------------------
def _parse_uuid(r: _Reader, key: str) -> str:
    v = r.text(key, required=True)
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise r.fail(key, f"{v!r} is not a UUID") from None


def parse_config(data: Any, source: str = "node.yaml", base_dir: Path | None = None) -> AgentConfig:
    base = base_dir or Path.cwd()
    top = _Reader(data, "", source)
    node_id = _parse_uuid(top, "node_id")
    name = top.text("name", node_id[:8])
    location = top.text("location")
    data_dir = Path(top.text("data_dir", required=True)).expanduser()
    if not data_dir.is_absolute():
        data_dir = base / data_dir

    nc = top.sub("netconf", required=True)
    users: list[UserConfig] = []
    for u in nc.items("users"):
        uname = u.text("name", required=True)
        keys = u.text("authorized_keys")
        user = UserConfig(
            name=uname,
            password=u.text("password"),
            password_hash=u.text("password_hash"),
            authorized_keys=(
                Path(keys).expanduser() if Path(keys).expanduser().is_absolute() else base / keys
            )
            if keys
            else None,
        )
        if user.password is None and user.password_hash is None and user.authorized_keys is None:
            raise u.fail("name", f"user {uname!r} has neither password, password_hash nor authorized_keys")
        if user.authorized_keys is not None and not user.authorized_keys.is_file():
            raise u.fail("authorized_keys", f"file {user.authorized_keys} does not exist")
        u.done()
        users.append(user)
    if not users:
        raise nc.fail("users", "at least one user is required")
    if len({u.name for u in users}) != len(users):
        raise nc.fail("users", "user names must be unique")
    host_key = nc.text("host_key")
    netconf = NetconfConfig(
        host=nc.text("host", "127.0.0.1"),
        port=nc.int("port", 830, lo=0, hi=65535),
        idle_timeout_s=nc.num("idle_timeout_s", 600.0, lo=1),
        hello_timeout_s=nc.num("hello_timeout_s", 30.0, lo=0.1),
        max_sessions=nc.int("max_sessions", 64, lo=1, hi=10000),
        max_message_bytes=nc.int("max_message_bytes", 16 * 1024 * 1024, lo=4096),
        confirm_timeout_s=nc.int("confirm_timeout_s", 600, lo=1),
        users=tuple(users),
        host_key=(base / host_key if not Path(host_key).is_absolute() else Path(host_key))
        if host_key
        else None,
    )
    nc.done()

    dev = top.sub("device")
    device = DeviceConfig(
        eta_det=dev.num("eta_det", 0.2, lo=0, hi=1),
        dark_count=dev.num("dark_count", 1e-5, lo=0, hi=1),
        e_d=dev.num("e_d", 0.015, lo=0, hi=0.5),
        pulse_rate_hz=dev.num("pulse_rate_hz", 10e6, lo=1),
        tick_s=dev.num("tick_s", 0.2, lo=0.001, hi=60),
    )
    dev.done()

    interfaces: list[InterfaceConfig] = []
    for it in top.items("interfaces"):
        listen = it.sub("listen", required=True)
        peer = it.sub("peer", required=True)
        fib = it.sub("fibre", required=True)
        band = fib.text("band", "C")
        if band not in ("C", "O"):
            raise fib.fail("band", f"{band!r} is not a band (C or O)")
        role = it.text("role_support", "TRANSCEIVER")
        if role not in ("TRANSMITTER", "RECEIVER", "TRANSCEIVER"):
            raise it.fail("role_support", f"{role!r} is not TRANSMITTER, RECEIVER or TRANSCEIVER")
        iface = InterfaceConfig(
            qkdi_id=it.int("qkdi_id", lo=0, hi=2**32 - 1),
            listen_host=listen.text("host", "127.0.0.1"),
            listen_port=listen.int("port", lo=0, hi=65535),
            peer_host=peer.text("host", "127.0.0.1"),
            peer_port=peer.int("port", lo=1, hi=65535),
            fibre=FibreConfig(
                length_km=fib.num("length_km", lo=0),
                band=band,
                extra_loss_db=fib.num("extra_loss_db", 0.0, lo=0),
            ),
            role_support=role,
            model=it.text("model", "qsdn-emulated-bb84"),
        )
        for r in (listen, peer, fib, it):
            r.done()
        interfaces.append(iface)
    if len({i.qkdi_id for i in interfaces}) != len(interfaces):
        raise top.fail("interfaces", "qkdi_id values must be unique")
    kme = _parse_kme(top, name, node_id, base) if top.get("kme") is not None else None
    entanglement = _parse_entanglement(top) if top.get("entanglement") is not None else None
    top.done()
    return AgentConfig(
        node_id=node_id,
        name=name,
        location=location,
        data_dir=data_dir,
        netconf=netconf,
        device=device,
        interfaces=tuple(interfaces),
        source=source,
        kme=kme,
        entanglement=entanglement,
    )


def _parse_entanglement(top: _Reader) -> EntanglementConfig:
    e = top.sub("entanglement")
    m = e.sub("medium", required=True)
    host = m.text("host", "127.0.0.1")
    port = m.int("port", lo=1, hi=65535)
    m.done()
    b = e.sub("bbm92")
    cfg = EntanglementConfig(
        medium_host=host,
        medium_port=port,
        timeout_s=e.num("timeout_s", 5.0, lo=0.1, hi=300),
        bbm92_block_size=b.int("block_size", 1024, lo=16, hi=1 << 20),
        bbm92_p_z=b.num("p_z", 0.5, lo=0.01, hi=0.99),
        bbm92_sample_fraction=b.num("sample_fraction", 0.2, lo=0.01, hi=0.9),
    )
    b.done()
    e.done()
    return cfg


#: Largest key the KME may be configured to hand out, in bits (64 KiB).
KME_MAX_KEY_BITS = 1 << 19


def _parse_kme(top: _Reader, name: str, node_id: str, base: Path) -> KmeConfig:
    k = top.sub("kme")

    def path(key: str) -> Path:
        p = Path(k.text(key, required=True)).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise k.fail(key, f"file {p} does not exist")
        return p

    def bits(key: str, default: int) -> int:
        v: int = k.int(key, default, lo=8, hi=KME_MAX_KEY_BITS)
        if v % 8:
            raise k.fail(key, f"{v} is not a multiple of 8 (ETSI GS QKD 014 key sizes are whole bytes)")
        return v

    kme_id = k.text("kme_id", name)
    if not kme_id or len(kme_id) > 64:
        raise k.fail("kme_id", "must be 1 to 64 characters")
    min_size = bits("min_key_size", 64)
    max_size = bits("max_key_size", 4096)
    default_size = bits("default_key_size", 256)
    if min_size > max_size:
        raise k.fail("min_key_size", f"{min_size} is larger than max_key_size {max_size}")
    if not min_size <= default_size <= max_size:
        raise k.fail("default_key_size", f"{default_size} is not within [{min_size}, {max_size}]")
    peers: list[KmePeerConfig] = []
    pr = k.sub("peers")
    for raw_id in list(pr.data):
        if not isinstance(raw_id, str):
            raise pr.fail(str(raw_id), "peer keys must be qkdn_id strings (UUIDs)")
        try:
            qkdn_id = str(uuid.UUID(raw_id))
        except ValueError:
            raise pr.fail(raw_id, f"{raw_id!r} is not a qkdn_id (UUID)") from None
        if qkdn_id == node_id:
            raise pr.fail(raw_id, "is this node's own qkdn_id")
        if any(p.qkdn_id == qkdn_id for p in peers):
            raise pr.fail(raw_id, "is listed twice")
        one = pr.sub(raw_id, required=True)
        url = one.text("url", required=True)
        parsed = urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme != "https" or not parsed.hostname or port is None or parsed.path not in ("", "/"):
            raise one.fail("url", f"{url!r} is not https://host:port (the peer channel is mutual TLS)")
        peer_kme = one.text("kme_id", required=True)
        one.done()
        peers.append(KmePeerConfig(qkdn_id=qkdn_id, url=url.rstrip("/"), kme_id=peer_kme))
    if len({p.kme_id for p in peers}) != len(peers):
        raise k.fail("peers", "kme_id values must be unique")
    if any(p.kme_id == kme_id for p in peers):
        raise k.fail("peers", f"a peer has this KME's own kme_id {kme_id!r}")
    skip = k.get("skip", True)
    if not isinstance(skip, bool):
        raise k.fail("skip", "must be true or false")
    cfg = KmeConfig(
        kme_id=kme_id,
        host=k.text("host", "127.0.0.1"),
        port=k.int("port", lo=0, hi=65535),
        cert=path("cert"),
        key=path("key"),
        ca=path("ca"),
        default_key_size=default_size,
        min_key_size=min_size,
        max_key_size=max_size,
        max_keys_per_request=k.int("max_keys_per_request", 128, lo=1, hi=4096),
        max_key_count=k.int("max_key_count", 100_000, lo=1, hi=2**31 - 1),
        peer_timeout_s=k.num("peer_timeout_s", 5.0, lo=0.1, hi=300),
        peers=tuple(peers),
        skip=skip,
    )
    k.done()
    return cfg


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
