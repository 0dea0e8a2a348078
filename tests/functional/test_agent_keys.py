"""Two agents, one emulated fibre: key production at the model's rate, visible over NETCONF."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from lxml import etree

from qsdn.physics.bb84 import DeviceParams, secret_key_rate_bps
from qsdn.physics.loss import Band, fibre_loss_db
from tests.functional.agents import (
    NODE_NS,
    AgentFactory,
    AgentHandle,
    pair_configs,
    phys_link_xml,
    wait_until,
)

EMU = "urn:qsdn:yang:qsdn-qkd-emulation"
NS = {"n": NODE_NS, "e": EMU}
CUT = f'<qsdn_faults xmlns="{EMU}"><fibre_cut>true</fibre_cut></qsdn_faults>'


def _common_blocks_identical(a: AgentHandle, b: AgentHandle, link: str) -> int:
    ka = {blk.block_id for blk in a.agent.keystore.blocks(link)}
    kb = {blk.block_id for blk in b.agent.keystore.blocks(link)}
    common = sorted(ka & kb)
    for block_id in common:
        assert a.agent.keystore.get_block(link, block_id) == b.agent.keystore.get_block(link, block_id)
    return len(common)


async def _provision(a: AgentHandle, b: AgentHandle, link: str, extra_a: str = "") -> None:
    async with a.client() as ca, b.client() as cb:
        await ca.edit_config(phys_link_xml(link, a.node_id, b.node_id, "TRANSMITTER", extra=extra_a))
        await cb.edit_config(phys_link_xml(link, b.node_id, a.node_id, "RECEIVER"))


async def test_50km_c_band_link_produces_identical_keys_at_model_rate(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    a_cfg, b_cfg = pair_configs(tmp_path, length_km=50.0, band="C")
    a = await start_agent(a_cfg)
    b = await start_agent(b_cfg)
    link = str(uuid.uuid4())
    await _provision(a, b, link)
    model_bps = secret_key_rate_bps(fibre_loss_db(50.0, Band.C), DeviceParams())
    await wait_until(
        lambda: a.agent.keystore.stored_bits(link) > 0 and b.agent.keystore.stored_bits(link) > 0
    )

    loop = asyncio.get_running_loop()
    t0, bits0 = loop.time(), b.agent.keystore.stored_bits(link)
    await asyncio.sleep(3.0)
    t1, bits1 = loop.time(), b.agent.keystore.stored_bits(link)
    measured = (bits1 - bits0) / (t1 - t0)
    assert abs(measured - model_bps) / model_bps < 0.05, (measured, model_bps)

    assert _common_blocks_identical(a, b, link) >= 10

    async with a.client() as ca:
        data = await ca.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
    perf = data.xpath("n:qkd_node/n:qkd_links/n:qkd_link/n:qkdl_performance", namespaces=NS)[0]
    skr = int(perf.findtext(f"{{{NODE_NS}}}skr"))
    eskr = int(perf.findtext(f"{{{NODE_NS}}}eskr"))
    assert abs(skr - model_bps) / model_bps < 0.01
    assert abs(eskr - model_bps) / model_bps < 0.05
    qber = perf.xpath("n:phys_perf[contains(n:perf_type, 'QBER')]/n:value/text()", namespaces=NS)
    assert qber and 0.0 < float(qber[0]) < 0.05
    phys = data.xpath("n:qkd_node/n:qkd_links/n:qkd_link/e:qsdn_phys", namespaces=NS)[0]
    assert float(phys.findtext(f"{{{EMU}}}loss_db")) == 10.0
    assert int(phys.findtext(f"{{{EMU}}}stored_key_bits")) > 0


async def test_fibre_cut_stops_production_and_notifies_both_ends(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    a_cfg, b_cfg = pair_configs(tmp_path)
    a = await start_agent(a_cfg)
    b = await start_agent(b_cfg)
    link = str(uuid.uuid4())
    await _provision(a, b, link)
    await wait_until(lambda: b.agent.keystore.stored_bits(link) > 0)
    async with a.client() as ca, b.client() as cb:
        await ca.create_subscription()
        await cb.create_subscription()
        await ca.edit_config(phys_link_xml(link, a.node_id, b.node_id, "TRANSMITTER", extra=CUT))
        for c in (ca, cb):
            while True:
                note = await asyncio.wait_for(c.notifications.get(), 10)
                if etree.QName(note.body).localname == "sdqkdn_link_down":
                    break
            assert note.body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}qkdl_id") == link
            assert "cut" in (note.body.findtext(f"{{{NODE_NS}}}qkd_link/{{{NODE_NS}}}reason") or "")
        await asyncio.sleep(0.3)  # blocks already in the emulated fibre land (propagation delay)
        settled = (a.agent.keystore.stored_bits(link), b.agent.keystore.stored_bits(link))
        await asyncio.sleep(0.5)
        assert (a.agent.keystore.stored_bits(link), b.agent.keystore.stored_bits(link)) == settled
        _common_blocks_identical(a, b, link)
        data = await ca.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
        assert data.xpath("string(//n:qkdl_performance/n:skr)", namespaces=NS) == "0"


async def test_config_change_notification_on_edit(start_agent: AgentFactory, tmp_path: Path) -> None:
    a_cfg, _ = pair_configs(tmp_path)
    a = await start_agent(a_cfg)
    async with a.client() as watcher, a.client() as editor:
        await watcher.create_subscription()
        await editor.edit_config(f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>7</qkdn_version></qkd_node>')
        note = await asyncio.wait_for(watcher.notifications.get(), 10)
        ns = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
        assert etree.QName(note.body).localname == "netconf-config-change"
        assert note.body.findtext(f"{{{ns}}}changed-by/{{{ns}}}session-id") == str(editor.session_id)
        assert note.body.findtext(f"{{{ns}}}datastore") == "running"
        target = note.body.find(f"{{{ns}}}edit/{{{ns}}}target")
        assert target is not None and (target.text or "").startswith("/etsi-qkd-sdn-node:qkd_node")
        assert target.nsmap.get("etsi-qkd-sdn-node") == NODE_NS


async def test_restart_keeps_configuration_and_stored_keys(start_agent: AgentFactory, tmp_path: Path) -> None:
    a_cfg, b_cfg = pair_configs(tmp_path)
    a = await start_agent(a_cfg)
    b = await start_agent(b_cfg)
    link = str(uuid.uuid4())
    await _provision(a, b, link)
    await wait_until(lambda: b.agent.keystore.stored_bits(link) > 20000)
    await a.agent.stop()
    await b.agent.stop()
    a2 = await start_agent(a_cfg)
    b2 = await start_agent(b_cfg)
    stored_after_restart = b2.agent.keystore.stored_bits(link)
    assert stored_after_restart > 20000
    async with a2.client() as c:
        data = await c.get_config()
        assert data.xpath("//n:qkd_link/n:qkdl_id/text()", namespaces=NS) == [link]
    # the link comes back from the persisted configuration and produces again
    await wait_until(lambda: b2.agent.keystore.stored_bits(link) > stored_after_restart)
    assert _common_blocks_identical(a2, b2, link) >= 1
