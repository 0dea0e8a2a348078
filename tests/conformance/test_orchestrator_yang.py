"""qsdn-orchestrator: lint-clean, loads everywhere, keeps its tree, accepts and refuses the right data.

The module is qsdn's northbound model, shaped after ETSI GS QKD 018 concepts. Instance documents are in
``instances/orchestrator``: each is checked with yanglint and with the libyang Python bindings, valid
ones must pass and invalid ones must fail with the libyang message fragment listed here. Operation
documents are validated against ``network-config.xml`` as the datastore their leafrefs point into.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libyang
import pytest
from _libyang import ffi, lib

from qsdn.errors import QsdnError
from qsdn.yang import SchemaContext, to_qsdn_error
from tests.conformance.yangpaths import IETF_DIR, YANG_DIR, yanglint_path

MODULE = YANG_DIR / "qsdn-orchestrator@2026-11-28.yang"
ETSI_FILES = [
    YANG_DIR / "etsi-qkd-node-types@2022-01-30.yang",
    YANG_DIR / "etsi-qkd-sdn-node@2022-01-30.yang",
]
INSTANCES = Path(__file__).resolve().parent / "instances" / "orchestrator"
DATASTORE = INSTANCES / "network-config.xml"

# kind: config (configuration datastore), data (with state), rpc (input), reply (output in the RPC node)
VALID: dict[str, str] = {
    "network-config.xml": "config",
    "network-state.json": "data",
    "rpc-compute-path.json": "rpc",
    "rpc-create-session.xml": "rpc",
    "reply-compute-path.xml": "reply",
    "reply-get-node-data.xml": "reply",
}

INVALID: dict[str, tuple[str, str]] = {
    "invalid-same-node-span.xml": ("config", "a fibre span joins two different nodes"),
    "invalid-session-same-node.json": ("config", "a service link needs two different nodes"),
    "invalid-dangling-node-ref.json": (
        "config",
        'Invalid leafref value "aaaaaaaa-0000-4000-8000-00000000000b"',
    ),
    "invalid-state-in-config.xml": ("config", 'Unexpected data state node "status" found'),
    "invalid-missing-host.xml": ("config", 'Mandatory node "host" instance does not exist'),
    "invalid-negative-length.json": ("config", 'value "-1.0" is out of the allowed range'),
    "invalid-band.json": ("config", 'Invalid enumeration value "L"'),
    "invalid-zero-rate.json": ("config", 'value "0" is out of the allowed range'),
    "invalid-span-id.xml": ("config", 'Unsatisfied pattern - "ams to utr"'),
    "invalid-rpc-unknown-node.json": ("rpc", 'Invalid leafref value "bbbbbbbb-0000-4000-8000-000000000000"'),
    "invalid-rpc-missing-rate.xml": ("rpc", 'Mandatory node "requested_rate_bps" instance does not exist'),
}

TREE = """\
module: qsdn-orchestrator
  +--rw qkd_network
     +--rw network_id?      yang:uuid
     +--rw qkd_node* [qkdn_id]
     |  +--rw qkdn_id         yang:uuid
     |  +--rw name?           string
     |  +--rw location?       string
     |  +--rw netconf
     |  |  +--rw host        inet:host
     |  |  +--rw port?       inet:port-number
     |  |  +--rw username?   string
     |  +--rw trusted?        boolean
     |  +--rw role?           enumeration
     |  +--rw entanglement
     |  |  +--rw memories?                   uint32
     |  |  +--rw coherence_time_s?           decimal64
     |  |  +--rw swap_success_probability?   decimal64
     |  |  +--rw initial_fidelity?           decimal64
     |  |  +--rw modes?                      uint32
     |  |  +--rw detector_efficiency?        decimal64
     |  +--ro status?         enumeration
     |  +--ro last_seen?      yang:date-and-time
     |  +--ro interfaces*     uint32
     +--rw qkd_phys_link* [span_id]
     |  +--rw span_id              span-id
     |  +--rw node_a               node-ref
     |  +--rw node_b               node-ref
     |  +--rw length_km            decimal64
     |  +--rw extra_loss_db?       decimal64
     |  +--rw bands*               fibre-band
     |  +--ro span_class?          span-class
     |  +--ro band?                fibre-band
     |  +--ro loss_db?             decimal64
     |  +--ro predicted_skr_bps?   rate-bps
     |  +--ro reserved_bps?        rate-bps
     |  +--ro qkdl_id?             yang:uuid
     |  +--ro status?              enumeration
     +--rw qkd_svc_link* [session_id]
        +--rw session_id                 yang:uuid
        +--rw src_node                   node-ref
        +--rw dst_node                   node-ref
        +--rw src_sae?                   string
        +--rw dst_sae?                   string
        +--rw requested_rate_bps         rate-bps
        +--rw max_hops?                  uint8
        +--rw disjoint_backup?           boolean
        +--rw avoid*                     node-ref
        +--rw trusted_relays*            node-ref
        +--rw service?                   enumeration
        +--rw repeaters?                 boolean
        +--rw target_fidelity?           decimal64
        +--rw min_pair_rate_hz?          decimal64
        +--rw max_trusted_nodes?         uint8
        +--rw max_purification_rounds?   uint8
        +--ro status?                    session-status
        +--ro achieved_rate_bps?         rate-bps
        +--ro path*                      yang:uuid
        +--ro backup_path*               yang:uuid
        +--ro relays*                    yang:uuid
        +--ro virt_qkdl_id?              yang:uuid
        +--ro plan
        |  +--ro service?          enumeration
        |  +--ro node*             yang:uuid
        |  +--ro key_rate_bps?     decimal64
        |  +--ro pair_rate_hz?     decimal64
        |  +--ro fidelity?         decimal64
        |  +--ro key_visible_to*   yang:uuid
        |  +--ro trusted_relays*   yang:uuid
        |  +--ro segment* [index]
        |     +--ro index                    uint8
        |     +--ro technology?              enumeration
        |     +--ro node*                    yang:uuid
        |     +--ro span*                    span-id
        |     +--ro key_rate_bps?            decimal64
        |     +--ro pair_rate_hz?            decimal64
        |     +--ro fidelity?                decimal64
        |     +--ro unpurified_fidelity?     decimal64
        |     +--ro swap_order?              enumeration
        |     +--ro purification_rounds?     uint8
        |     +--ro purification_protocol?   enumeration
        |     +--ro repeaters*               yang:uuid
        |     +--ro bsm_stations*            yang:uuid
        |     +--ro memory* [node]
        |     |  +--ro node        yang:uuid
        |     |  +--ro memories?   uint32
        |     +--ro link* [index]
        |        +--ro index                  uint8
        |        +--ro node_a?                yang:uuid
        |        +--ro node_b?                yang:uuid
        |        +--ro bsm_station?           yang:uuid
        |        +--ro length_km?             decimal64
        |        +--ro success_probability?   decimal64
        |        +--ro attempt_time_s?        decimal64
        |        +--ro initial_fidelity?      decimal64
        +--ro last_error?                string
        +--ro last_error_info
           +--ro node?     yang:uuid
           +--ro reason?   string

  rpcs:
    +---x compute-path
    |  +---w input
    |  |  +---w src_node              node-ref
    |  |  +---w dst_node              node-ref
    |  |  +---w requested_rate_bps?   rate-bps
    |  |  +---w max_hops?             uint8
    |  |  +---w k?                    uint8
    |  |  +---w disjoint_backup?      boolean
    |  |  +---w avoid*                node-ref
    |  +--ro output
    |     +--ro path* [index]
    |     |  +--ro index             uint8
    |     |  +--ro node*             yang:uuid
    |     |  +--ro bottleneck_bps?   rate-bps
    |     |  +--ro hop* [span_id]
    |     |     +--ro span_id              span-id
    |     |     +--ro span_class?          span-class
    |     |     +--ro band?                fibre-band
    |     |     +--ro predicted_skr_bps?   rate-bps
    |     |     +--ro available_bps?       rate-bps
    |     +--ro backup!
    |        +--ro node*             yang:uuid
    |        +--ro bottleneck_bps?   rate-bps
    |        +--ro hop* [span_id]
    |           +--ro span_id              span-id
    |           +--ro span_class?          span-class
    |           +--ro band?                fibre-band
    |           +--ro predicted_skr_bps?   rate-bps
    |           +--ro available_bps?       rate-bps
    +---x create-session
    |  +---w input
    |  |  +---w session_id?                yang:uuid
    |  |  +---w src_node                   node-ref
    |  |  +---w dst_node                   node-ref
    |  |  +---w src_sae?                   string
    |  |  +---w dst_sae?                   string
    |  |  +---w requested_rate_bps         rate-bps
    |  |  +---w max_hops?                  uint8
    |  |  +---w disjoint_backup?           boolean
    |  |  +---w avoid*                     node-ref
    |  |  +---w trusted_relays*            node-ref
    |  |  +---w service?                   enumeration
    |  |  +---w repeaters?                 boolean
    |  |  +---w target_fidelity?           decimal64
    |  |  +---w min_pair_rate_hz?          decimal64
    |  |  +---w max_trusted_nodes?         uint8
    |  |  +---w max_purification_rounds?   uint8
    |  +--ro output
    |     +--ro session_id?   yang:uuid
    |     +--ro status?       session-status
    |     +--ro path*         yang:uuid
    +---x delete-session
    |  +---w input
    |     +---w session_id    -> /qkd_network/qkd_svc_link/session_id
    +---x get-node-data
    |  +---w input
    |  |  +---w qkdn_id    node-ref
    |  |  +---w content?   enumeration
    |  +--ro output
    |     +--ro data?   <anydata>
    +---x compute-entanglement-path
       +---w input
       |  +---w src_node                   node-ref
       |  +---w dst_node                   node-ref
       |  +---w service?                   enumeration
       |  +---w target_fidelity?           decimal64
       |  +---w min_pair_rate_hz?          decimal64
       |  +---w requested_rate_bps?        rate-bps
       |  +---w max_trusted_nodes?         uint8
       |  +---w max_purification_rounds?   uint8
       |  +---w k?                         uint8
       |  +---w avoid*                     node-ref
       +--ro output
          +--ro service?          enumeration
          +--ro node*             yang:uuid
          +--ro key_rate_bps?     decimal64
          +--ro pair_rate_hz?     decimal64
          +--ro fidelity?         decimal64
          +--ro key_visible_to*   yang:uuid
          +--ro trusted_relays*   yang:uuid
          +--ro segment* [index]
             +--ro index                    uint8
             +--ro technology?              enumeration
             +--ro node*                    yang:uuid
             +--ro span*                    span-id
             +--ro key_rate_bps?            decimal64
             +--ro pair_rate_hz?            decimal64
             +--ro fidelity?                decimal64
             +--ro unpurified_fidelity?     decimal64
             +--ro swap_order?              enumeration
             +--ro purification_rounds?     uint8
             +--ro purification_protocol?   enumeration
             +--ro repeaters*               yang:uuid
             +--ro bsm_stations*            yang:uuid
             +--ro memory* [node]
             |  +--ro node        yang:uuid
             |  +--ro memories?   uint32
             +--ro link* [index]
                +--ro index                  uint8
                +--ro node_a?                yang:uuid
                +--ro node_b?                yang:uuid
                +--ro bsm_station?           yang:uuid
                +--ro length_km?             decimal64
                +--ro success_probability?   decimal64
                +--ro attempt_time_s?        decimal64
                +--ro initial_fidelity?      decimal64
"""


def pyang(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "pyang"
    found = str(exe) if exe.exists() else shutil.which("pyang")
    if found is None:
        pytest.skip("pyang is not installed")
    return subprocess.run(
        [found, "-p", str(YANG_DIR), "-p", str(IETF_DIR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def yanglint(kind: str, instance: Path) -> subprocess.CompletedProcess[str]:
    exe = yanglint_path()
    if exe is None:
        pytest.skip("yanglint is not installed")
    cmd = [exe, "-D", "-p", str(YANG_DIR), "-p", str(IETF_DIR), "-t", kind]
    if kind in ("rpc", "reply"):
        cmd += ["-O", str(DATASTORE)]
    schemas = [MODULE, *ETSI_FILES] if kind == "reply" else [MODULE]
    cmd += [*map(str, schemas), str(instance)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def schema() -> Iterator[SchemaContext]:
    yield SchemaContext(
        [("qsdn-orchestrator", ()), ("etsi-qkd-node-types", ()), ("etsi-qkd-sdn-node", ())],
        search_dirs=[YANG_DIR, IETF_DIR],
    )


def validate(schema: SchemaContext, kind: str, instance: Path) -> None:
    """Validate like the RESTCONF server does; raises QsdnError with libyang's messages."""
    text = instance.read_text()
    fmt = instance.suffix[1:]
    ctx = schema.ctx
    try:
        if kind in ("config", "data"):
            tree = ctx.parse_data_mem(
                text, fmt, no_state=kind == "config", strict=True, validate_present=True
            )
            if tree is not None:
                tree.free()
            return
        dtype = libyang.DataType.RPC_YANG if kind == "rpc" else libyang.DataType.REPLY_YANG
        op = ctx.parse_op_mem(fmt, text, dtype)
        dep = ctx.parse_data_mem(
            DATASTORE.read_text(), "xml", no_state=True, strict=True, validate_present=True
        )
        try:
            flag = lib.LYD_TYPE_RPC_YANG if kind == "rpc" else lib.LYD_TYPE_REPLY_YANG
            if lib.lyd_validate_op(op.cdata, dep.cdata, flag, ffi.NULL) != lib.LY_SUCCESS:
                raise ctx.error("invalid operation")
        finally:
            op.free()
            dep.free()
    except libyang.LibyangError as exc:
        raise to_qsdn_error(exc) from None


# ------------------------------------------------------------------------------------------------
# The module itself
# ------------------------------------------------------------------------------------------------
def test_pyang_lint_strict_is_clean() -> None:
    result = pyang("--lint", "--strict", str(MODULE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_yanglint_loads_module_without_warnings() -> None:
    exe = yanglint_path()
    if exe is None:
        pytest.skip("yanglint is not installed")
    result = subprocess.run(
        [exe, "-D", "-p", str(YANG_DIR), "-p", str(IETF_DIR), str(MODULE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_tree_is_the_agreed_contract() -> None:
    """The controller, its CLI and orchestrators use these names; change them only on purpose."""
    result = pyang("-f", "tree", str(MODULE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == TREE


def test_module_says_what_it_is(schema: SchemaContext) -> None:
    info = next(m for m in schema.modules() if m.name == "qsdn-orchestrator")
    assert (info.namespace, info.prefix, info.revision) == (
        "urn:qsdn:yang:qsdn-orchestrator",
        "qsdn-orch",
        "2026-11-28",
    )
    text = MODULE.read_text()
    assert "yang-version 1.1;" in text
    assert "ETSI GS QKD 018" in text and "qsdn's own module" in text


def test_catalogue_lists_every_instance_file() -> None:
    assert {p.name for p in INSTANCES.iterdir()} == set(VALID) | set(INVALID)


# ------------------------------------------------------------------------------------------------
# Instances
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), sorted(VALID.items()))
def test_valid_instance_yanglint(name: str, kind: str) -> None:
    result = yanglint(kind, INSTANCES / name)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(("name", "kind"), sorted(VALID.items()))
def test_valid_instance_libyang(schema: SchemaContext, name: str, kind: str) -> None:
    validate(schema, kind, INSTANCES / name)


@pytest.mark.parametrize(("name", "expected"), sorted(INVALID.items()))
def test_invalid_instance_yanglint(name: str, expected: tuple[str, str]) -> None:
    kind, fragment = expected
    result = yanglint(kind, INSTANCES / name)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(("name", "expected"), sorted(INVALID.items()))
def test_invalid_instance_libyang(schema: SchemaContext, name: str, expected: tuple[str, str]) -> None:
    kind, fragment = expected
    with pytest.raises(QsdnError) as info:
        validate(schema, kind, INSTANCES / name)
    messages = " | ".join(e.message for e in info.value.errors)
    assert fragment in messages, messages


def test_must_errors_carry_the_modules_app_tag(schema: SchemaContext) -> None:
    with pytest.raises(QsdnError) as info:
        validate(schema, "config", INSTANCES / "invalid-same-node-span.xml")
    assert info.value.first.app_tag == "same-node"
    assert info.value.first.path == "/qsdn-orchestrator:qkd_network/qkd_phys_link[span_id='loop']/node_b"


def test_defaults(schema: SchemaContext) -> None:
    tree = schema.ctx.parse_data_mem(
        DATASTORE.read_text(), "xml", no_state=True, strict=True, validate_present=True
    )
    try:
        a = "/qsdn-orchestrator:qkd_network/qkd_node[qkdn_id='aaaaaaaa-0000-4000-8000-00000000000a']"
        assert tree.find_path(f"{a}/netconf/port").value() == 830
        assert tree.find_path(f"{a}/trusted").value() is True
        assert tree.find_path(f"{a}/role").value() == "endpoint"
        span = "/qsdn-orchestrator:qkd_network/qkd_phys_link[span_id='ams-utr']"
        assert tree.find_path(f"{span}/extra_loss_db").value() == 0.0
        session = (
            "/qsdn-orchestrator:qkd_network/qkd_svc_link[session_id='5e55e55e-0000-4000-8000-000000000001']"
        )
        assert tree.find_path(f"{session}/disjoint_backup").value() is False
    finally:
        tree.free()
