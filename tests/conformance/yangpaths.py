"""Paths, the instance catalogue and small validation helpers for the YANG conformance tests.

The official ETSI texts and third-party payloads are not part of the repository: they live in
``shared/reference`` beside the repository root (``<root>/../shared``), both on a developer machine
and in CI, and the tests that need them skip when that folder is absent.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import libyang

REPO_ROOT = Path(__file__).resolve().parents[2]
YANG_DIR = REPO_ROOT / "yang"
# pyang installs the IETF modules it ships under <prefix>/share/yang/modules.
IETF_DIR = Path(sys.prefix) / "share" / "yang" / "modules" / "ietf"

SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"
OFFICIAL_YANG_DIR = SHARED_REFERENCE / "etsi-yang"
TFS_INSTANCES_DIR = SHARED_REFERENCE / "third-party-instances" / "tfs"
OFFICIAL_MISSING_REASON = (
    f"official ETSI YANG reference texts not found at {OFFICIAL_YANG_DIR} "
    "(expected in shared/reference/etsi-yang beside the repository)"
)
TFS_MISSING_REASON = f"third-party TFS instances not found at {TFS_INSTANCES_DIR}"

INSTANCES_DIR = Path(__file__).resolve().parent / "instances"
VALID_DIR = INSTANCES_DIR / "valid"
INVALID_DIR = INSTANCES_DIR / "invalid"

TYPES_MODULE = "etsi-qkd-node-types@2022-01-30.yang"
NODE_MODULE = "etsi-qkd-sdn-node@2022-01-30.yang"
EMULATION_MODULE = "qsdn-qkd-emulation@2026-11-28.yang"
NOTIFICATIONS_MODULE = "notifications@2008-07-14.yang"
ENTANGLEMENT_MODULE = "qsdn-entanglement@2026-11-28.yang"

# Modules a qsdn agent implements, in load order.  etsi-qkd-node-types must be *implemented*,
# not only imported: identities of an import-only module are not valid identityref values
# (RFC 7950, section 9.10.2), and libyang enforces that.
IMPLEMENTED_MODULES = (
    "etsi-qkd-node-types",
    "etsi-qkd-sdn-node",
    "qsdn-qkd-emulation",
    "qsdn-entanglement",
    "notifications",
    "ietf-netconf",
)


def yanglint_path() -> str | None:
    return shutil.which("yanglint")


# --------------------------------------------------------------------------------------------
# Instance catalogue
#
# kind: how the document is validated
#   config  configuration datastore: state (config false) nodes are an error  (yanglint -t config)
#   data    complete datastore with state data, as returned by <get>          (yanglint -t data)
#   rpc     RPC input, without the NETCONF <rpc> envelope                      (yanglint -t rpc)
#   notif   notification content, without the <notification> envelope         (yanglint -t notif)
# --------------------------------------------------------------------------------------------
VALID_INSTANCES: dict[str, str] = {
    "session-abc-node-a.xml": "config",
    "session-abc-node-b.xml": "config",
    "session-abc-node-c.json": "config",
    "phys-link-full.xml": "data",
    "virt-link-relay.json": "config",
    "virt-link-multicast.json": "config",
    "discovery-get-node-a.json": "data",
    "emulation-phys-link-state.xml": "data",
    "emulation-faults-config.json": "config",
    "node-minimal.xml": "config",
    "identity-any-xml-prefix.xml": "config",
    "app-client-qos-full.json": "config",
    "rpc-create-subscription-replay.xml": "rpc",
    "notif-link-perf-update.json": "notif",
    "notif-alarm-link.xml": "notif",
    # Entanglement-based networking: the chain A - R - B of one session (end, repeater, end), the
    # midpoint station of hop A - R, an end node's state, and the session notification.
    "entanglement-chain-end-a.xml": "config",
    "entanglement-chain-repeater.json": "config",
    "entanglement-chain-end-b.xml": "config",
    "entanglement-midpoint-station.xml": "config",
    "entanglement-end-a-state.json": "data",
    # A pairs session whose applications at end B are named for the entanglement delivery API.
    "entanglement-pairs-end-b.xml": "config",
    # Two sessions over the same repeater segment, each on its own elementary links (named by
    # prev_link_id/next_link_id) and memories, which add up to exactly memories/count.
    "entanglement-two-sessions-repeater.json": "config",
    "notif-entanglement-session-update.xml": "notif",
}


@dataclass(frozen=True)
class Rejection:
    kind: str
    message: str  # fragment of the libyang error message that names the intended reason


INVALID_INSTANCES: dict[str, Rejection] = {
    "invalid-string-for-uint32.json": Rejection("config", 'Invalid non-number-encoded uint32 value "100"'),
    "invalid-phys-leaf-on-virt-link.xml": Rejection(
        "config", "When condition \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:PHYS')\" not satisfied"
    ),
    "invalid-virt-leaf-on-phys-link.json": Rejection(
        "config", "When condition \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')\" not satisfied"
    ),
    "invalid-phys-perf-on-virt-link.xml": Rejection(
        "data", "When condition \"derived-from-or-self(../qkdl_type, 'etsi-qkdn-types:PHYS')\" not satisfied"
    ),
    "invalid-qsdn-faults-on-virt-link.xml": Rejection(
        "config",
        "When condition \"derived-from-or-self(etsi-qkdn:qkdl_type, 'etsi-qkdn-types:PHYS')\" not satisfied",
    ),
    "invalid-bad-identity.xml": Rejection(
        "config", 'Invalid identityref "etsi-qkdn-types:WORMHOLE" value - identity not found'
    ),
    "invalid-identity-wrong-base.json": Rejection(
        "config", 'identity not derived from the base "etsi-qkd-node-types:QKD-LINK-TYPES"'
    ),
    "invalid-unqualified-identity.json": Rejection(
        "config", 'Invalid identityref "PHYS" value - identity not found in module "etsi-qkd-sdn-node"'
    ),
    "invalid-missing-key.xml": Rejection("config", 'List instance is missing its key "qkdl_id"'),
    "invalid-duplicate-key.json": Rejection("config", 'Duplicate instance of "qkd_interface"'),
    "invalid-missing-qkdn-id.json": Rejection("config", 'Mandatory node "qkdn_id" instance does not exist'),
    "invalid-unknown-leaf.xml": Rejection(
        "config", 'Node "qkdl_auth_status" not found as a child of "qkd_link" node'
    ),
    "invalid-state-leaf-in-config.xml": Rejection("config", 'Unexpected data state node "qkdn_status" found'),
    "invalid-bad-uuid.xml": Rejection("config", 'Unsatisfied pattern - "node-a" does not conform'),
    "invalid-wavelength-pattern.xml": Rejection("config", 'Unsatisfied pattern - "1550nm" does not conform'),
    "invalid-too-many-fraction-digits.xml": Rejection(
        "config", 'Value "3.14159" of decimal64 type exceeds defined number (3) of fraction digits'
    ),
    "invalid-uint32-overflow.json": Rejection(
        "config", 'Value "4294967296" is out of type uint32 min/max bounds'
    ),
    "invalid-boolean-as-string.json": Rejection("config", 'Invalid non-boolean-encoded boolean value "true"'),
    "invalid-leaf-list-not-array.json": Rejection(
        "config", 'The leaf-list "virt_next_hop" is expected to be represented as JSON name/array'
    ),
    "invalid-top-level-not-qualified.json": Rejection(
        "config", 'Top-level JSON object member "qkd_node" must be namespace-qualified'
    ),
    "invalid-eavesdropper-out-of-range.xml": Rejection(
        "config", 'Unsatisfied range - value "1.5" is out of the allowed range'
    ),
    "invalid-qber-out-of-range.json": Rejection(
        "data", 'Unsatisfied range - value "1.2" is out of the allowed range'
    ),
    "invalid-negative-fibre-length.xml": Rejection(
        "data", 'Unsatisfied range - value "-5.0" is out of the allowed range'
    ),
    "invalid-unknown-band.json": Rejection("data", 'Invalid enumeration value "L"'),
    "invalid-peer-address-without-port.json": Rejection(
        "data", 'Unsatisfied pattern - "node-b.example" does not conform'
    ),
    "invalid-create-subscription-bad-time.xml": Rejection(
        "rpc", 'Unsatisfied pattern - "yesterday" does not conform'
    ),
    "invalid-notif-unknown-leaf.json": Rejection(
        "notif", 'Node "qkdl_status" not found as a child of "qkd_link" node'
    ),
    # qsdn-entanglement: each case breaks one rule of the module, named by its error-message.
    "invalid-ent-memories-over-committed.json": Rejection(
        "config", "the sessions of this node use more memories than it has"
    ),
    "invalid-ent-memories-implicitly-over-committed.json": Rejection(
        "config", "the sessions of this node use more memories than it has"
    ),
    "invalid-ent-link-id-other-neighbour.json": Rejection(
        "config", "prev_link_id names an elementary link to another node than prev_hop"
    ),
    "invalid-ent-hop-link-ambiguous.json": Rejection(
        "config", "prev_hop has several elementary links to it: prev_link_id names the session's"
    ),
    "invalid-ent-key-link-on-repeater.json": Rejection(
        "config", "key_qkdl_id is set on a repeater: BBM92 key exists only at the two end nodes"
    ),
    "invalid-ent-key-link-for-pairs.xml": Rejection(
        "config", "key_qkdl_id belongs to bbm92-key sessions only"
    ),
    "invalid-ent-clients-on-repeater.json": Rejection(
        "config", "clients is set on a repeater: a repeater holds no end of any pair"
    ),
    "invalid-ent-clients-for-bbm92.xml": Rejection("config", "clients belongs to pairs sessions only"),
    "invalid-ent-key-link-dangling.xml": Rejection(
        "config", 'Invalid leafref value "2e000000-0000-4000-8000-0000000000ff" - no target instance'
    ),
    "invalid-ent-bbm92-end-without-key-link.xml": Rejection(
        "config", "a bbm92-key session needs key_qkdl_id on its end nodes"
    ),
    "invalid-ent-bbm92-low-target-fidelity.json": Rejection(
        "config", "a bbm92-key session needs a target fidelity above 0.835"
    ),
    "invalid-ent-fidelity-above-one.xml": Rejection(
        "config", "a pair fidelity is between 0.25 (maximally mixed) and 1"
    ),
    "invalid-ent-fidelity-below-quarter.json": Rejection(
        "config", "a pair fidelity is between 0.25 (maximally mixed) and 1"
    ),
    "invalid-ent-probability-out-of-range.xml": Rejection("config", "a probability is between 0 and 1"),
    "invalid-ent-zero-memories.xml": Rejection("config", "a node with memories has at least one"),
    "invalid-ent-zero-modes.json": Rejection("config", "an elementary link uses at least one mode"),
    "invalid-ent-missing-coherence-time.json": Rejection(
        "config", 'Mandatory node "coherence_time_s" instance does not exist'
    ),
    "invalid-ent-unknown-swap-order.json": Rejection("config", 'Invalid enumeration value "fastest-first"'),
    "invalid-ent-nested-without-round.json": Rejection(
        "config", 'Mandatory node "swap_round" instance does not exist'
    ),
    "invalid-ent-swap-round-too-large.json": Rejection(
        "config", "swap_round is at most the number of repeaters of the path"
    ),
    "invalid-ent-repeater-without-memories.json": Rejection("config", "a repeater needs quantum memories"),
    "invalid-ent-repeater-one-hop.json": Rejection(
        "config", "a repeater has a previous and a next hop, an end node exactly one of them"
    ),
    "invalid-ent-role-repeater-on-end.xml": Rejection(
        "config", "role is 'end' exactly on the two end nodes of the session, 'repeater' on the others"
    ),
    "invalid-ent-same-end-nodes.json": Rejection(
        "config", "an entanglement session joins two different end nodes"
    ),
    "invalid-ent-path-wrong-end.xml": Rejection(
        "config", "the path of a session starts at end_a_qkdn_id and ends at end_b_qkdn_id"
    ),
    "invalid-ent-path-without-this-node.json": Rejection(
        "config", "a node only holds sessions whose path goes through it"
    ),
    "invalid-ent-hop-not-in-path-order.json": Rejection(
        "config", "prev_hop is the node before this one in path"
    ),
    "invalid-ent-hop-without-elementary-link.json": Rejection(
        "config", "next_hop needs an elementary link to that node"
    ),
    "invalid-ent-elementary-link-to-self.xml": Rejection(
        "config", "an elementary link joins this node to another node"
    ),
    "invalid-ent-dangling-source.xml": Rejection(
        "config", 'Invalid leafref value "7" - no target instance "../../../sources/source/source_id"'
    ),
    "invalid-ent-alpha-on-barrett-kok.xml": Rejection(
        "config", "When condition \"../kind = 'single-click'\" not satisfied"
    ),
    "invalid-ent-rounds-without-purification.xml": Rejection(
        "config", "When condition \"../protocol != 'none'\" not satisfied"
    ),
    "invalid-ent-state-in-config.xml": Rejection(
        "config", 'Unexpected data state node "achieved_fidelity" found'
    ),
    "invalid-ent-key-bits-on-repeater.json": Rejection(
        "data", "When condition \"../role = 'end' and ../application = 'bbm92-key'\" not satisfied"
    ),
    "invalid-ent-notif-unknown-reason.xml": Rejection("notif", 'Invalid enumeration value "bad_weather"'),
}


# --------------------------------------------------------------------------------------------
# libyang helpers
# --------------------------------------------------------------------------------------------
def make_context(*search_dirs: Path, modules: tuple[str, ...] = IMPLEMENTED_MODULES) -> libyang.Context:
    """A libyang context over ``search_dirs`` (first match wins) with ``modules`` implemented."""
    ctx = libyang.Context(":".join(str(d) for d in search_dirs))
    for name in modules:
        ctx.load_module(name)
    return ctx


def data_format(path: Path) -> str:
    return "json" if path.suffix == ".json" else "xml"


def validate_instance(ctx: libyang.Context, path: Path, kind: str) -> None:
    """Parse and fully validate one instance document; raises ``libyang.LibyangError`` if invalid."""
    text = path.read_text(encoding="utf-8")
    fmt = data_format(path)
    if kind in ("config", "data"):
        # validate_present: validate the modules the document has data for.  Without it libyang
        # also validates its own ietf-yang-library state (mandatory content-id), which an instance
        # document does not carry; yanglint fills that in by itself.
        tree = ctx.parse_data_mem(text, fmt, no_state=kind == "config", strict=True, validate_present=True)
        if tree is not None:
            tree.free()
        return
    dtype = {"rpc": libyang.DataType.RPC_YANG, "notif": libyang.DataType.NOTIF_YANG}[kind]
    op = ctx.parse_op_mem(fmt, text, dtype=dtype)
    try:
        op.validate_op(dtype)
    finally:
        op.root().free()


def yanglint_command(
    kind: str, schema_files: list[Path], search_dirs: list[Path], instance: Path
) -> list[str]:
    """yanglint invocation validating ``instance`` as ``kind`` (see the catalogue above)."""
    exe = yanglint_path()
    assert exe is not None
    cmd = [exe, "-D"]
    for d in search_dirs:
        cmd += ["-p", str(d)]
    cmd += ["-t", kind]
    cmd += [str(f) for f in schema_files]
    cmd.append(str(instance))
    return cmd


def our_schema_files() -> list[Path]:
    """The schema files of IMPLEMENTED_MODULES, from yang/ and pyang's IETF directory."""
    return [
        YANG_DIR / TYPES_MODULE,
        YANG_DIR / NODE_MODULE,
        YANG_DIR / EMULATION_MODULE,
        YANG_DIR / ENTANGLEMENT_MODULE,
        YANG_DIR / NOTIFICATIONS_MODULE,
        IETF_DIR / "ietf-netconf.yang",
    ]
