"""Whole labs: ``qsdn lab up|status|cut|restore|down`` as processes, and in network namespaces (root)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qsdn.errors import QsdnError
from qsdn.lab import launcher, netns
from qsdn.lab.topology import load_topology
from qsdn.operator import Api

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
CHAIN3 = ROOT / "examples" / "labs" / "chain3.yaml"


def _lab_command() -> list[str]:
    """``qsdn lab`` once qsdn/cli.py registers it; until then the same commands run on their own."""
    from qsdn.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["lab", "down", "--dir", "."])
    except SystemExit:
        return [sys.executable, "-m", "qsdn.lab.lab_cli"]
    return [sys.executable, "-m", "qsdn.cli", "lab"]


LAB = _lab_command()


def lab(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QSDN_LAB_DIR"} | {"COLUMNS": "200"}
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def network(info: dict[str, Any]) -> dict[str, Any]:
    """The controller's ``qkd_network``, read with what lab.json says."""
    ctl = info["controller"]
    password = Path(ctl["password_file"]).read_text().strip()
    api = Api(
        argparse.Namespace(
            url=ctl["restconf_url"].removesuffix("/restconf"),
            user=ctl["username"],
            password=password,
            ca=None,
        )
    )
    return asyncio.run(api.network())


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def all_pids(info: dict[str, Any]) -> list[int]:
    return [n["pid"] for n in info["nodes"]] + [info["controller"]["pid"]]


def sessions_by_name(info: dict[str, Any], net: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = {s["session_id"]: s for s in net.get("qkd_svc_link", [])}
    return {s["name"]: svc[s["session_id"]] for s in info["sessions"]}


def up_and_check(tmp_path: Path, *mode: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    lab_dir = tmp_path / "lab"
    r = lab("up", str(CHAIN3), "--dir", str(lab_dir), "--detach", *mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alice - relay - bob" in r.stdout  # the summary table shows the session's path
    info = json.loads((lab_dir / "lab.json").read_text())
    topo = load_topology(CHAIN3)
    assert [n["name"] for n in info["nodes"]] == [n.name for n in topo.nodes]
    assert {n["qkdn_id"] for n in info["nodes"]} == {n.node_id for n in topo.nodes}
    assert all(alive(p) for p in all_pids(info))
    for n in info["nodes"]:
        assert Path(n["netconf"]["password_file"]).stat().st_mode & 0o077 == 0
        assert n["kme_url"].startswith("https://")
    net = network(info)
    assert {n["name"]: n["status"] for n in net["qkd_node"]} == {n.name: "reachable" for n in topo.nodes}
    sessions = sessions_by_name(info, net)
    assert set(sessions) == {s.name for s in topo.sessions}
    assert all(s["status"] == "active" for s in sessions.values()), sessions
    return lab_dir, info, net


def down_and_check(lab_dir: Path, info: dict[str, Any]) -> None:
    r = lab("down", "--dir", str(lab_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [p for p in all_pids(info) if alive(p)]
    after = json.loads((lab_dir / "lab.json").read_text())
    assert after["state"] == "down" and after["controller"]["pid"] is None


def reach_every_node_with_external_tools(info: dict[str, Any]) -> None:
    """netconf-console2 and curl reach every node and the controller using only lab.json."""
    console = str(Path(sys.executable).with_name("netconf-console2"))
    for n in info["nodes"]:
        nc = n["netconf"]
        password = Path(nc["password_file"]).read_text().strip()
        r = subprocess.run(
            [console, "--host", nc["host"], "--port", str(nc["port"]), "-u", nc["username"], "-p", password,
             "--get-config"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert n["qkdn_id"] in r.stdout, r.stdout
    ctl = info["controller"]
    password = Path(ctl["password_file"]).read_text().strip()
    r = subprocess.run(
        ["curl", "-sS", "-f", "-u", f"{ctl['username']}:{password}", "-H", "Accept: application/yang-data+json",
         ctl["restconf_url"] + "/data/qsdn-orchestrator:qkd_network"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {n["name"] for n in json.loads(r.stdout)["qsdn-orchestrator:qkd_network"]["qkd_node"]}
    assert names == {n["name"] for n in info["nodes"]}


def test_processes_lab(tmp_path: Path) -> None:
    lab_dir, info, _ = up_and_check(tmp_path)
    try:
        reach_every_node_with_external_tools(info)
        r = lab("status", "--dir", str(lab_dir), "--format", "json")
        assert r.returncode == 0, r.stdout + r.stderr
        status = json.loads(r.stdout)
        assert all(p["alive"] for p in status["processes"])
        assert [s["status"] for s in status["sessions"]] == ["active"]

        # cutting a span on the only path: the controller sees it down and cannot keep the session
        r = lab("cut", "relay-bob", "--dir", str(lab_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "relay-bob (relay - bob): down" in r.stdout
        net = network(info)
        assert {p["span_id"]: p["status"] for p in net["qkd_phys_link"]}["relay-bob"] == "down"
        assert sessions_by_name(info, net)["alice-bob"]["status"] != "active"

        r = lab("restore", "relay-bob", "--dir", str(lab_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "relay-bob (relay - bob): active" in r.stdout

        r = lab("cut", "no-such-span", "--dir", str(lab_dir))
        assert r.returncode == 1 and "no span 'no-such-span'" in r.stderr

        r = lab("up", str(CHAIN3), "--dir", str(lab_dir), "--detach")
        assert r.returncode == 1 and "a lab is running" in r.stderr
    finally:
        down_and_check(lab_dir, info)
    r = lab("status", "--dir", str(lab_dir))
    assert r.returncode == 1 and "not running" in r.stdout


async def test_failed_start_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that dies during start-up: ``up`` names it, shows its log and stops the others."""
    real_spawn = launcher._spawn

    def spawn(argv: list[str], log: Path, cwd: Path) -> int:
        if "relay" in log.name:
            argv = [
                sys.executable,
                "-c",
                "import sys, time; print('no hardware'); time.sleep(0.3); sys.exit(3)",
                *argv,
            ]
        return real_spawn(argv, log, cwd)

    monkeypatch.setattr(launcher, "_spawn", spawn)
    with pytest.raises(QsdnError, match=r"agent relay exited during start-up(.|\n)*no hardware"):
        await launcher.up(load_topology(CHAIN3), tmp_path / "lab")
    info = json.loads((tmp_path / "lab" / "lab.json").read_text())
    assert info["state"] == "down"
    assert info["nodes"][0]["pid"] is None


def test_netns_address_plan() -> None:
    """Span k gets the k-th /30 of 10.213/16; management /30s start at the chosen offset."""
    plan = netns.plan_netns(
        "ring",
        ["a", "b", "c"],
        [("ab", "a", "b"), ("bc", "b", "c"), ("ca", "c", "a")],
        tag="abc123",
        mgmt_offset=64,
    )
    assert plan.namespace("b") == "qsdn-ring-b"
    assert plan.span_addr("bc", "b") == "10.213.0.5" and plan.span_addr("bc", "c") == "10.213.0.6"
    assert plan.span_addr("ca", "a") == "10.213.0.10"
    m = plan.mgmt_of("c")
    assert (m.root_dev, m.root_addr, m.ns_addr) == ("qmabc1232", "10.214.1.9", "10.214.1.10")
    assert all(len(d) <= 15 for d in plan.root_devs())
    with pytest.raises(QsdnError, match="do not fit"):
        netns.plan_netns("x", ["a"], [], tag="t", mgmt_offset=16384)


NETNS_UNAVAILABLE = netns.unavailable_reason()


@pytest.mark.netns
@pytest.mark.skipif(NETNS_UNAVAILABLE is not None, reason=f"--mode netns: {NETNS_UNAVAILABLE}")
def test_netns_lab(tmp_path: Path) -> None:
    lab_dir, info, _ = up_and_check(tmp_path, "--mode", "netns")
    plan = info["netns"]
    try:
        assert info["mode"] == "netns"
        assert set(plan["namespaces"].values()) <= netns.existing_namespaces()
        reach_every_node_with_external_tools(info)
        # a live ETSI 014 exchange: SAEs in the root namespace, the key relayed over the span veths
        r = lab("keys", "alice-bob", "--dir", str(lab_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "identical keys at both SAEs" in r.stdout
        for n in info["nodes"]:
            assert n["netns"] == plan["namespaces"][n["name"]]
            assert n["netconf"]["host"].startswith("10.214.")
            assert all(i["listen"].startswith("10.213.") for i in n["interfaces"])
        # the quantum channel of each span runs over its veth pair, inside the namespaces
        relay_ns = plan["namespaces"]["relay"]
        ss = subprocess.run(["ip", "netns", "exec", relay_ns, "ss", "-tn"], capture_output=True, text=True)
        if ss.returncode == 0:  # alice-relay is span 0: 10.213.0.1 (alice) to 10.213.0.2 (relay)
            assert "10.213.0.2:" in ss.stdout and "10.213.0.1:" in ss.stdout
    finally:
        down_and_check(lab_dir, info)
    assert not set(plan["namespaces"].values()) & netns.existing_namespaces()
    assert not {m["root_dev"] for m in plan["mgmt"]} & netns.existing_links()


PAIR = """
name: pair
description: two endpoints and a direct session
nodes:
  - {name: alice, role: endpoint, saes: [sae-alice]}
  - {name: bob, role: endpoint, saes: [sae-bob]}
spans:
  - {id: alice-bob, a: alice, b: bob, length_km: 20}
sessions:
  - {name: direct, src: alice, dst: bob, src_sae: sae-alice, dst_sae: sae-bob, rate_bps: 1000}
"""


def test_lab_key_exchange_between_two_saes(tmp_path: Path) -> None:
    topo = tmp_path / "pair.yaml"
    topo.write_text(PAIR)
    lab_dir = tmp_path / "lab"
    r = lab("up", str(topo), "--dir", str(lab_dir), "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads((lab_dir / "lab.json").read_text())
    try:
        for n in info["nodes"]:
            assert n["kme_url"].startswith("https://127.0.0.1:")
            assert all(Path(s["cert"]).is_file() and Path(s["key"]).is_file() for s in n["saes"])
        r = lab("keys", "direct", "--number", "4", "--dir", str(lab_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "identical keys at both SAEs" in r.stdout
        assert r.stdout.count("-7") >= 4  # four key_IDs listed
    finally:
        down_and_check(lab_dir, info)
