"""The controller's configuration (``controller.yaml``) and topology files, validated at load time.

controller.yaml::

    data_dir: ./data/controller          # SQLite desired state
    topology: topology.yaml              # optional: nodes and spans to add at start-up
    restconf:
      host: 127.0.0.1
      port: 8080
      users: [{name: admin, password: admin}]
      tls: {cert: ctl.crt, key: ctl.key, client_ca: ca.crt}   # optional; HTTPS (client certs if client_ca)
    southbound:
      client: asyncssh                   # or ncclient
      timeout_s: 10
      confirm_timeout_s: 30
      username: admin                    # default NETCONF credentials for nodes without their own
      password: admin

topology.yaml::

    nodes:
      - {name: alice, id: <uuid>, netconf: {host: 127.0.0.1, port: 8301, username: admin, password: x},
         trusted: true, role: endpoint, location: Amsterdam}
      - {name: r1, id: <uuid>, netconf: {...}, role: repeater,      # or bsm-station
         entanglement: {memories: 4, coherence_time_s: 1.0, swap_success_probability: 1.0,
                        initial_fidelity: 0.98, modes: 1}}         # bsm-station: {detector_efficiency: 0.9}
    spans:
      - {id: s-ab, a: alice, b: bob, length_km: 50, extra_loss_db: 1.0, bands: [C, O], a_qkdi: 1, b_qkdi: 1}

Errors name the file and the key: ``topology.yaml: spans[2].b: unknown node 'carol'``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.store import NodeRecord, SpanRecord
from qsdn.configfile import YamlReader as _Reader
from qsdn.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ControllerConfig:
    data_dir: Path
    topology: Path | None
    restconf_host: str
    restconf_port: int
    users: dict[str, str]
    tls: TlsConfig | None
    client: str
    timeout_s: float
    confirm_timeout_s: int
    username: str
    password: str | None

    def __repr__(self) -> str:
        where = f"{self.restconf_host}:{self.restconf_port}"
        return f"ControllerConfig(data_dir={self.data_dir!s}, restconf={where})"


def _path(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_controller_config(path: Path) -> ControllerConfig:
    base = path.resolve().parent
    top = _Reader(_load_yaml(path), "", str(path))
    data_dir = _path(base, top.text("data_dir", required=True))
    topo = top.text("topology")
    rc = top.sub("restconf")
    users: dict[str, str] = {}
    for u in rc.items("users"):
        users[u.text("name", required=True)] = u.text("password", required=True)
        u.done()
    tls_r = rc.sub("tls")
    tls = None
    if tls_r.data:
        tls = TlsConfig(
            cert=_path(base, tls_r.text("cert", required=True)),
            key=_path(base, tls_r.text("key", required=True)),
            client_ca=_path(base, ca) if (ca := tls_r.text("client_ca")) else None,
        )
        tls_r.done()
    sb = top.sub("southbound")
    client = sb.text("client", "asyncssh")
    if client not in ("asyncssh", "ncclient"):
        raise sb.fail("client", f"{client!r} is not asyncssh or ncclient")
    cfg = ControllerConfig(
        data_dir=data_dir,
        topology=_path(base, topo) if topo else None,
        restconf_host=rc.text("host", "127.0.0.1"),
        restconf_port=rc.int("port", 8080, lo=0, hi=65535),
        users=users,
        tls=tls,
        client=client,
        timeout_s=sb.num("timeout_s", 10.0, lo=0.1),
        confirm_timeout_s=sb.int("confirm_timeout_s", 30, lo=1),
        username=sb.text("username", "admin"),
        password=sb.text("password"),
    )
    for r in (rc, sb, top):
        r.done()
    return cfg


def _entanglement(e: _Reader, role: str) -> dict[str, float] | None:
    """A node's optional entanglement parameters (names of the orchestrator's ``entanglement`` leaves)."""
    if not e.data:
        return None
    if not isinstance(e.data, dict):
        raise ConfigError(f"{e.source}: {e.where}: must be a mapping")
    out: dict[str, float] = {}
    if role == "bsm-station":
        out["detector_efficiency"] = e.num("detector_efficiency", 0.9, lo=1e-9, hi=1.0)
    else:
        for key, default, lo, hi in (
            ("coherence_time_s", 1.0, 1e-9, None),
            ("swap_success_probability", 1.0, 1e-9, 1.0),
            ("initial_fidelity", 0.98, 0.25, 1.0),
        ):
            if key in e.data:
                out[key] = e.num(key, default, lo=lo, hi=hi)
        for key, default, lo_i in (("memories", 2, 0), ("modes", 1, 1)):
            if key in e.data:
                out[key] = e.int(key, default, lo=lo_i, hi=1_000_000)
    e.done()
    return out


def load_topology(
    path: Path, *, username: str = "admin", password: str | None = None
) -> tuple[list[NodeRecord], list[SpanRecord]]:
    top = _Reader(_load_yaml(path), "", str(path))
    nodes: list[NodeRecord] = []
    by_name: dict[str, str] = {}
    for n in top.items("nodes"):
        name = n.text("name", required=True)
        nid = n.text("id") or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.nodes.qsdn"))
        try:
            nid = str(uuid.UUID(nid))
        except ValueError:
            raise n.fail("id", f"{nid!r} is not a UUID") from None
        nc = n.sub("netconf", required=True)
        role = n.text("role", "endpoint")
        if role not in ("endpoint", "relay", "repeater", "bsm-station"):
            raise n.fail("role", f"{role!r} is not endpoint, relay, repeater or bsm-station")
        entanglement = _entanglement(n.sub("entanglement"), role)
        if name in by_name:
            raise n.fail("name", f"duplicate node name {name!r}")
        nodes.append(
            NodeRecord(
                node_id=nid,
                name=name,
                host=nc.text("host", "127.0.0.1"),
                port=nc.int("port", 830, lo=1, hi=65535),
                username=nc.text("username", username),
                password=nc.text("password", password),
                client_key=nc.text("client_key"),
                trusted=bool(n.get("trusted", True)),
                role=role,
                location=n.text("location"),
                entanglement=entanglement,
            )
        )
        by_name[name] = nid
        nc.done()
        n.done()
    ids = set(by_name.values())
    spans: list[SpanRecord] = []
    seen: set[str] = set()
    for s in top.items("spans"):
        sid = s.text("id", required=True)
        if sid in seen:
            raise s.fail("id", f"duplicate span id {sid!r}")
        seen.add(sid)
        ends = []
        for key in ("a", "b"):
            v = s.text(key, required=True)
            nid = by_name.get(v, v)
            if nid not in ids:
                raise s.fail(key, f"unknown node {v!r}")
            ends.append(nid)
        if ends[0] == ends[1]:
            raise s.fail("b", "a span needs two different nodes")
        bands = s.get("bands", ["C", "O"])
        if not isinstance(bands, list) or not bands or any(b not in ("C", "O") for b in bands):
            raise s.fail("bands", "must be a non-empty list of C and O")
        spans.append(
            SpanRecord(
                span_id=sid,
                a=ends[0],
                b=ends[1],
                length_km=s.num("length_km", lo=0),
                extra_loss_db=s.num("extra_loss_db", 0.0, lo=0),
                bands=tuple(bands),
                a_qkdi_id=s.int("a_qkdi", 1, lo=0),
                b_qkdi_id=s.int("b_qkdi", 1, lo=0),
            )
        )
        s.done()
    top.done()
    return nodes, spans
