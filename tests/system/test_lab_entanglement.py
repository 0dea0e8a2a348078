"""A repeater-chain lab end to end: ``qsdn lab up`` with the medium, a key session over the repeater, keys
at both SAEs through ETSI GS QKD 014, ``qsdn lab down``.

Needs ``qsdn medium run`` (the entanglement emulator's medium service): without it the test is skipped,
saying so; it never fakes the medium.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from qsdn.lab.topology import load_topology
from tests.system.test_lab import alive, down_and_check, lab, network, sessions_by_name

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "examples" / "labs" / "repeater-chain.yaml"
#: How long to keep asking for key while the chain's first BBM92 blocks are produced (a poll, not a check).
KEY_WAIT_S = 120.0


def _keys(lab_dir: Path, session: str) -> subprocess.CompletedProcess[str]:
    """``qsdn lab keys`` until the session's key store has key (or the poll gives up)."""
    end = time.monotonic() + KEY_WAIT_S
    while True:
        r = lab("keys", session, "--number", "2", "--size", "256", "--dir", str(lab_dir))
        if r.returncode == 0 or time.monotonic() > end:
            return r
        time.sleep(2.0)


def test_repeater_chain_lab_delivers_key(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    r = lab("up", str(CHAIN), "--dir", str(lab_dir), "--detach", "--seed", "11", timeout_s=180)
    assert (lab_dir / "lab.json").exists(), r.stdout + r.stderr
    info: dict[str, Any] = json.loads((lab_dir / "lab.json").read_text())
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        topo = load_topology(CHAIN)
        medium = info["medium"]
        assert medium["seed"] == 11 and alive(medium["pid"])
        assert all(alive(n["pid"]) for n in info["nodes"]) and alive(info["controller"]["pid"])
        by_name = {n["name"]: n for n in info["nodes"]}
        assert by_name["rep"]["kme_url"] is None and by_name["rep"]["saes"] == []
        assert by_name["alice"]["kme_url"].startswith("https://127.0.0.1:")

        net = network(info)
        names = {n.node_id: n.name for n in topo.nodes}
        roles = {names[n["qkdn_id"]]: n.get("role") for n in net["qkd_node"]}
        assert roles["rep"] == "repeater" and roles["st-ar"] == "bsm-station"
        assert {n["name"]: n["status"] for n in net["qkd_node"]} == {n.name: "reachable" for n in topo.nodes}
        session = sessions_by_name(info, net)["alice-bob"]
        assert session["status"] == "active", session
        path = [names[n] for n in session["path"]]
        assert (path[0], path[-1]) == ("alice", "bob") and "rep" in path, "the key goes over the repeater"

        r = _keys(lab_dir, "alice-bob")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "identical keys at both SAEs" in r.stdout
    finally:
        down_and_check(lab_dir, info)
        after = json.loads((lab_dir / "lab.json").read_text())
        assert after["medium"]["pid"] is None and not alive(info["medium"]["pid"])


MIXED = ROOT / "examples" / "labs" / "mixed.yaml"


def test_mixed_lab_delivers_key_over_relays_repeaters_and_both(tmp_path: Path) -> None:
    """examples/labs/mixed.yaml: one session over the trusted relay (QKD), one over the repeater
    segment (BBM92), one mixed (QKD to the trusted node ams, then the repeater segment), keys for each."""
    lab_dir = tmp_path / "lab"
    r = lab("up", str(MIXED), "--dir", str(lab_dir), "--detach", "--seed", "11", timeout_s=180)
    assert (lab_dir / "lab.json").exists(), r.stdout + r.stderr
    info: dict[str, Any] = json.loads((lab_dir / "lab.json").read_text())
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        topo = load_topology(MIXED)
        names = {n.node_id: n.name for n in topo.nodes}
        sessions = sessions_by_name(info, network(info))
        paths = {}
        for name in ("ams-rtm", "ams-ehv", "rtm-ehv"):
            assert sessions[name]["status"] == "active", sessions[name]
            paths[name] = [names[n] for n in sessions[name]["path"]]
        assert paths["ams-rtm"] == ["ams", "ldn", "rtm"]  # trusted relay only
        assert "rep" in paths["ams-ehv"] and "ldn" not in paths["ams-ehv"]  # the repeater segment only
        assert paths["rtm-ehv"][:3] == ["rtm", "ldn", "ams"] and "rep" in paths["rtm-ehv"]  # mixed
        for name in ("ams-rtm", "ams-ehv", "rtm-ehv"):
            r = _keys(lab_dir, name)
            assert r.returncode == 0, name + ": " + r.stdout + r.stderr
            assert "identical keys at both SAEs" in r.stdout, name
    finally:
        down_and_check(lab_dir, info)
        after = json.loads((lab_dir / "lab.json").read_text())
        assert after["medium"]["pid"] is None and not alive(info["medium"]["pid"])
