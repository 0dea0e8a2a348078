"""The agent's NETCONF server over real SSH on loopback, driven by qsdn's asyncssh client."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncssh
import pytest
from lxml import etree

from qsdn.errors import QsdnError
from qsdn.netconf.client import NetconfClient, NetconfRpcError
from tests.functional.agents import (
    NODE_NS,
    PASSWORD,
    TYPES_NS,
    USER,
    AgentFactory,
    node_config,
    pair_configs,
    phys_link_xml,
    wait_until,
)

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
EMU = "urn:qsdn:yang:qsdn-qkd-emulation"


def find(el: etree._Element, path: str) -> list[etree._Element]:
    return el.xpath(
        path,
        namespaces={
            "n": NODE_NS,
            "e": EMU,
            "nc": NC,
            "m": "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring",
        },
    )  # type: ignore[no-any-return]


async def test_hello_capabilities_and_session_id(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        assert c.session_id is not None and c.session_id > 0
        caps = set(c.server_capabilities)
        assert "urn:ietf:params:netconf:base:1.1" in caps
        for cap in (
            "urn:ietf:params:netconf:capability:writable-running:1.0",
            "urn:ietf:params:netconf:capability:candidate:1.0",
            "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
            "urn:ietf:params:netconf:capability:validate:1.1",
            "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
            "urn:ietf:params:netconf:capability:xpath:1.0",
            "urn:ietf:params:netconf:capability:notification:1.0",
            "urn:ietf:params:netconf:capability:interleave:1.0",
        ):
            assert cap in caps
        modcaps = [x for x in caps if "module=" in x]
        assert any(x.startswith(NODE_NS + "?module=etsi-qkd-sdn-node&revision=2022-01-30") for x in modcaps)
        assert any("module=etsi-qkd-node-types&revision=2022-01-30" in x for x in modcaps)
        assert any("module=ietf-netconf-monitoring" in x for x in modcaps)
        assert c.framing == "1.1"


async def test_get_config_has_node_identity_and_interfaces(start_agent: AgentFactory, tmp_path: Path) -> None:
    a, _ = pair_configs(tmp_path)
    h = await start_agent(a)
    async with h.client() as c:
        data = await c.get_config()
        assert find(data, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]
        assert find(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_id/text()") == ["1"]
        # config-false data never appears in get-config
        assert not find(data, "//n:qkdn_status")


async def test_get_with_subtree_filter_returns_state(start_agent: AgentFactory, tmp_path: Path) -> None:
    a, _ = pair_configs(tmp_path)
    h = await start_agent(a)
    async with h.client() as c:
        data = await c.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkdn_status/><qkd_interfaces/></qkd_node>')
        assert [etree.QName(x).localname for x in data] == ["qkd_node"]
        status = find(data, "n:qkd_node/n:qkdn_status/text()")
        assert len(status) == 1 and status[0].endswith(":OPERATING")
        assert find(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/n:qkdi_status")
        lengths = find(data, "n:qkd_node/n:qkd_interfaces/n:qkd_interface/e:qsdn_fibre/e:length_km/text()")
        assert [float(x) for x in lengths] == [50.0]
        assert not find(data, "n:qkd_node/n:qkdn_id")  # not selected


async def test_get_with_xpath_filter(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        data = await c.get_config(xpath="/q:qkd_node/q:qkdn_id", nsmap={"q": NODE_NS})
        assert find(data, "n:qkd_node/n:qkdn_id/text()") == [h.node_id]
        with pytest.raises(NetconfRpcError) as ei:
            await c.get_config(xpath="/zz:qkd_node", nsmap={})
        assert ei.value.first.tag == "invalid-value"


async def test_edit_config_creates_phys_link_then_get_config_shows_it(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    a_cfg, b_cfg = pair_configs(tmp_path)
    a = await start_agent(a_cfg)
    b = await start_agent(b_cfg)
    link = str(uuid.uuid4())
    async with a.client() as ca, b.client() as cb:
        await ca.edit_config(phys_link_xml(link, a.node_id, b.node_id, "TRANSMITTER"))
        await cb.edit_config(phys_link_xml(link, b.node_id, a.node_id, "RECEIVER"))
        for c in (ca, cb):
            data = await c.get_config()
            assert find(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_id/text()") == [link]
        await wait_until(
            lambda: a.agent.keystore.stored_bits(link) > 0 and b.agent.keystore.stored_bits(link) > 0
        )
        state = await ca.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
        skr = find(state, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_performance/n:skr/text()")
        assert skr and int(skr[0]) > 0


async def test_edit_config_keeps_a_prefix_declared_on_the_leaf(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An identityref whose prefix is declared on the leaf, for a namespace an ancestor also declares.

    lxml drops such a declaration when it moves the element into another tree, which would unbind
    ``t:`` and make the agent refuse a valid edit: the client must send the bytes it was given.
    """
    a = await start_agent(node_config(tmp_path, "alice"))
    link, remote = str(uuid.uuid4()), str(uuid.uuid4())
    edit = f"""
<qkd_node xmlns="{NODE_NS}" xmlns:other="{TYPES_NS}">
  <qkdn_id>{a.node_id}</qkdn_id>
  <qkd_links><qkd_link>
    <qkdl_id>{link}</qkdl_id>
    <qkdl_local><qkdn_id>{a.node_id}</qkdn_id></qkdl_local>
    <qkdl_remote><qkdn_id>{remote}</qkdn_id></qkdl_remote>
    <qkdl_type xmlns:t="{TYPES_NS}">t:VIRT</qkdl_type>
  </qkd_link></qkd_links>
</qkd_node>"""
    async with a.client() as c:
        await c.edit_config(edit)
        await c.edit_config(etree.fromstring(f'<config xmlns="{NC}">{edit}</config>'))
        data = await c.get_config()
    (value,) = find(data, "n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_type")
    prefix, _, name = (value.text or "").partition(":")
    assert name == "VIRT" and value.nsmap[prefix] == TYPES_NS


async def test_invalid_edit_returns_rpc_error_with_path_and_leaves_datastore(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        before = etree.tostring(await c.get_config())
        bad = f"""<qkd_node xmlns="{NODE_NS}"><qkd_interfaces><qkd_interface>
          <qkdi_id>not-a-number</qkdi_id></qkd_interface></qkd_interfaces></qkd_node>"""
        with pytest.raises(NetconfRpcError) as ei:
            await c.edit_config(bad)
        err = ei.value.first
        assert err.tag == "invalid-value"
        assert err.path is not None and "qkd_interface" in err.path
        assert etree.tostring(await c.get_config()) == before


async def test_lock_is_enforced_between_sessions(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c1, h.client() as c2:
        await c1.lock("running")
        with pytest.raises(NetconfRpcError) as ei:
            await c2.lock("running")
        assert ei.value.first.tag == "lock-denied"
        assert ei.value.first.info.get("session-id") == str(c1.session_id)
        with pytest.raises(NetconfRpcError) as ei:
            await c2.edit_config(f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>x</qkdn_version></qkd_node>')
        assert ei.value.first.tag == "in-use"
        await c1.unlock("running")
        await c2.lock("running")
    # the lock of a closed session is released
    async with h.client() as c3:
        await c3.lock("running")
        await c3.unlock("running")


async def test_candidate_commit_and_discard(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    edit = f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>v2</qkdn_version></qkd_node>'
    async with h.client() as c:
        await c.edit_config(edit, target="candidate")
        assert not find(await c.get_config(), "n:qkd_node/n:qkdn_version")
        assert find(await c.get_config("candidate"), "n:qkd_node/n:qkdn_version/text()") == ["v2"]
        await c.discard_changes()
        assert not find(await c.get_config("candidate"), "n:qkd_node/n:qkdn_version")
        await c.edit_config(edit, target="candidate")
        await c.validate("candidate")
        await c.commit()
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["v2"]


async def test_confirmed_commit_rolls_back_on_timeout_and_on_session_loss(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    edit = f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>tmp</qkdn_version></qkd_node>'
    async with h.client() as c:
        await c.edit_config(edit, target="candidate")
        await c.commit(confirmed=True, confirm_timeout_s=1)
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["tmp"]
        await wait_until(lambda: "tmp" not in h.agent.datastores.get("running"), timeout_s=5)
    async with h.client() as c:
        await c.edit_config(edit, target="candidate")
        await c.commit(confirmed=True, confirm_timeout_s=60)
    # the session that made the unconfirmed, non-persistent commit is gone: rolled back
    await wait_until(lambda: "tmp" not in h.agent.datastores.get("running"), timeout_s=5)
    async with h.client() as c:
        await c.edit_config(edit, target="candidate")
        await c.commit(confirmed=True, confirm_timeout_s=60, persist="tok")
    async with h.client() as c:
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["tmp"]
        with pytest.raises(NetconfRpcError):
            await c.commit()  # without persist-id
        await c.commit(persist_id="tok")
        assert h.agent.datastores.confirmed is None
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["tmp"]


async def test_cancel_commit(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        await c.edit_config(
            f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>x</qkdn_version></qkd_node>', target="candidate"
        )
        await c.commit(confirmed=True)
        await c.cancel_commit()
        assert not find(await c.get_config(), "n:qkd_node/n:qkdn_version")
        with pytest.raises(NetconfRpcError):
            await c.cancel_commit()


async def test_get_schema_of_both_etsi_modules(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        for name in ("etsi-qkd-sdn-node", "etsi-qkd-node-types"):
            text = await c.get_schema(name)
            assert text.lstrip().startswith(f"module {name}")
        with pytest.raises(NetconfRpcError) as ei:
            await c.get_schema("no-such-module")
        assert ei.value.first.tag == "invalid-value"


async def test_kill_session_releases_lock(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c1, h.client() as c2:
        await c1.lock("running")
        assert c1.session_id is not None
        await c2.kill_session(c1.session_id)
        await wait_until(lambda: "running" not in h.agent.datastores.locks)
        await c2.lock("running")
        with pytest.raises(QsdnError):
            await c1.get_config()


async def test_unknown_operation_and_bad_params(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        reply = await c.rpc(etree.Element(f"{{{NC}}}frobnicate"), check=False)
        assert reply.errors[0].tag == "operation-not-supported"
        reply = await c.rpc(etree.Element(f"{{{NC}}}get-config"), check=False)
        assert reply.errors[0].tag == "missing-element"
        assert reply.errors[0].info["bad-element"] == "source"
        op = etree.fromstring(f'<get-config xmlns="{NC}"><source><bogus/></source></get-config>')
        reply = await c.rpc(op, check=False)
        assert reply.errors[0].tag == "invalid-value"


async def test_password_and_public_key_auth(start_agent: AgentFactory, tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "id").write_bytes(key.export_private_key())
    (tmp_path / "id.pub").write_bytes(key.export_public_key())
    cfg = node_config(tmp_path, "n1")
    cfg["netconf"]["users"].append({"name": "ctrl", "authorized_keys": str(tmp_path / "id.pub")})
    h = await start_agent(cfg)
    async with NetconfClient("127.0.0.1", h.port, "ctrl", client_keys=[tmp_path / "id"]) as c:
        assert c.session_id
    with pytest.raises(QsdnError):
        await NetconfClient("127.0.0.1", h.port, USER, password="wrong", timeout_s=5).connect()
    with pytest.raises(QsdnError):
        await NetconfClient("127.0.0.1", h.port, "nobody", password=PASSWORD, timeout_s=5).connect()


async def test_monitoring_state_lists_sessions_and_schemas(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        data = await c.get(
            subtree='<netconf-state xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"/>'
        )
        sids = find(data, "m:netconf-state/m:sessions/m:session/m:session-id/text()")
        assert str(c.session_id) in sids
        schemas = find(data, "m:netconf-state/m:schemas/m:schema/m:identifier/text()")
        assert "etsi-qkd-sdn-node" in schemas


async def test_restart_keeps_running_configuration(start_agent: AgentFactory, tmp_path: Path) -> None:
    cfg = node_config(tmp_path, "n1")
    h = await start_agent(cfg)
    async with h.client() as c:
        await c.edit_config(f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>persisted</qkdn_version></qkd_node>')
    await h.agent.stop()
    h2 = await start_agent(cfg)
    async with h2.client() as c:
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["persisted"]


async def test_many_concurrent_sessions(start_agent: AgentFactory, tmp_path: Path) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    clients = [h.client() for _ in range(50)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        results = await asyncio.gather(*(c.get_config() for c in clients))
        assert all(find(r, "n:qkd_node/n:qkdn_id/text()") == [h.node_id] for r in results)
        assert len(h.agent.sessions) == 50
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    await wait_until(lambda: not h.agent.sessions)


_ = TYPES_NS


async def test_unconfirmed_commit_is_undone_when_the_agent_restarts(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    cfg = node_config(tmp_path, "n1")
    h = await start_agent(cfg)
    async with h.client() as c:
        await c.edit_config(
            f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>tentative</qkdn_version></qkd_node>',
            target="candidate",
        )
        await c.commit(confirmed=True, confirm_timeout_s=600, persist="tx-1")
        assert find(await c.get_config(), "n:qkd_node/n:qkdn_version/text()") == ["tentative"]
    await h.agent.stop()
    h2 = await start_agent(cfg)
    async with h2.client() as c:
        assert not find(await c.get_config(), "n:qkd_node/n:qkdn_version")


@pytest.mark.parametrize(
    "op",
    [
        "<get><bogus/></get>",
        "<lock><target><running/></target><bogus/></lock>",
        "<get-config><source><running/></source><filter type='subtree'/><extra/></get-config>",
        "<commit><confirmd/></commit>",
        '<create-subscription xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><bogus/></create-subscription>',
    ],
)
async def test_unknown_parameters_are_unknown_elements(
    start_agent: AgentFactory, tmp_path: Path, op: str
) -> None:
    h = await start_agent(node_config(tmp_path, "n1"))
    async with h.client() as c:
        el = etree.fromstring(op if "xmlns=" in op.split(">")[0] else op.replace(">", f' xmlns="{NC}">', 1))
        reply = await c.rpc(el, check=False)
        assert reply.errors and reply.errors[0].tag == "unknown-element"
        assert reply.errors[0].info["bad-element"] in ("bogus", "extra", "confirmd")
        assert c.session_id in {s for s in h.agent.sessions}  # still alive
