"""docker-compose.yml is generated from the chain3 topology and valid for docker-compose."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config
from controller.config import load_topology as load_controller_topology
from qsdn.lab.compose import generate_compose
from qsdn.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "examples" / "labs" / "chain3.yaml"
CONFIG_DIR = "deploy/chain3"


def test_committed_compose_files_are_what_the_topology_generates() -> None:
    files = generate_compose(load_topology(TOPOLOGY), CONFIG_DIR)
    for name, text in files.items():
        path = ROOT / name if name == "docker-compose.yml" else ROOT / CONFIG_DIR / name
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `qsdn lab compose {TOPOLOGY.relative_to(ROOT)} --config-dir {CONFIG_DIR}`"
        )


def test_generated_configurations_are_valid(tmp_path: Path) -> None:
    topo = load_topology(TOPOLOGY)
    files = generate_compose(topo, CONFIG_DIR)
    for n in topo.nodes:
        cfg = parse_config(yaml.safe_load(files[f"{n.name}.yaml"]), source=f"{n.name}.yaml")
        assert cfg.node_id == n.node_id
        assert {i.peer_host for i in cfg.interfaces} <= {f"node-{m.name}" for m in topo.nodes}
    (tmp_path / "topology.yaml").write_text(files["topology.yaml"])
    nodes, spans = load_controller_topology(tmp_path / "topology.yaml")
    assert {x.node_id for x in nodes} == {n.node_id for n in topo.nodes}
    assert len(spans) == len(topo.spans)


def test_docker_compose_accepts_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (scripts/bootstrap.sh installs it)")
        pytest.skip("docker-compose (Debian package docker-compose) is not installed")
    r = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
