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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class AgentConfig:
    node_id: str
    name: str
    data_dir: Path
    netconf: NetconfConfig
    location: str | None = None
    device: DeviceConfig = field(default_factory=DeviceConfig)
    interfaces: tuple[InterfaceConfig, ...] = ()
    source: str = "node.yaml"


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
    )


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
