"""`qsdn agent check-config` and `qsdn agent run` as real processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qsdn.cli import main
from qsdn.netconf.client import NetconfClient
from tests.functional.agents import PASSWORD, USER, node_config, pair_configs


def _write(tmp: Path, cfg: dict[str, Any], name: str = "node.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_check_config_accepts_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = pair_configs(tmp_path)
    assert main(["agent", "check-config", str(_write(tmp_path, a))]) == 0
    assert "ok: node alice" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        pytest.param(lambda c: c.update(node_id="nope"), "node_id: 'nope' is not a UUID", id="bad-uuid"),
        pytest.param(lambda c: c.pop("data_dir"), "data_dir: is required", id="no-data-dir"),
        pytest.param(
            lambda c: c["netconf"].update(port=70000), "netconf.port: must be between", id="bad-port"
        ),
        pytest.param(
            lambda c: c["netconf"].update(users=[]), "netconf.users: at least one user", id="no-users"
        ),
        pytest.param(
            lambda c: c["netconf"]["users"][0].pop("password"), "has neither password", id="no-cred"
        ),
        pytest.param(lambda c: c.update(colour="blue"), "colour: unknown key", id="unknown-key"),
        pytest.param(
            lambda c: c["interfaces"][0]["fibre"].update(band="L"),
            "interfaces[0].fibre.band: 'L' is not a band",
            id="band",
        ),
        pytest.param(
            lambda c: c["interfaces"][0]["fibre"].update(length_km=-1),
            "interfaces[0].fibre.length_km: must be between",
            id="negative-length",
        ),
        pytest.param(
            lambda c: c["interfaces"].append(dict(c["interfaces"][0])),
            "qkdi_id values must be unique",
            id="dup-iface",
        ),
        pytest.param(lambda c: c["device"].update(eta_det=2), "device.eta_det: must be between", id="eta"),
    ],
)
def test_check_config_names_the_offending_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, fragment: str
) -> None:
    a, _ = pair_configs(tmp_path)
    mutate(a)
    assert main(["agent", "check-config", str(_write(tmp_path, a))]) == 2
    assert fragment in capsys.readouterr().err


def test_check_config_reports_unreadable_and_bad_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "check-config", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: [unclosed\n")
    assert main(["agent", "check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "not valid YAML" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_agent_process_serves_and_shuts_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    cfg = node_config(tmp_path, "proc")
    path = _write(tmp_path, cfg)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qsdn.cli", "agent", "run", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        port = cfg["netconf"]["port"]
        for _ in range(200):
            try:
                async with NetconfClient("127.0.0.1", port, USER, password=PASSWORD, timeout_s=5) as c:
                    data = await c.get_config()
                    assert cfg["node_id"] in (data.xpath("string(.)") or "")
                break
            except Exception:
                if proc.returncode is not None:
                    raise
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("agent did not come up")
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
