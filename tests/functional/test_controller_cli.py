"""`qsdn controller run` as a process, and the operator commands against its RESTCONF API."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import yaml

from tests.functional.agents import PASSWORD, USER, AgentFactory, free_port
from tests.functional.labnet import Net


async def qsdn(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qsdn.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_controller_process_and_operator_commands(start_agent: AgentFactory, tmp_path: Path) -> None:
    net = Net(tmp_path, ["A", "B", "C"], [("s-ab", "A", "B", 20.0), ("s-bc", "B", "C", 25.0)])
    await net.start(start_agent)
    topo = net.topology()
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topo))
    port = free_port()
    (tmp_path / "controller.yaml").write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "ctl"),
                "topology": "topology.yaml",
                "restconf": {"host": "127.0.0.1", "port": port, "users": [{"name": "op", "password": "pw"}]},
                "southbound": {
                    "username": USER,
                    "password": PASSWORD,
                    "timeout_s": 5,
                    "confirm_timeout_s": 20,
                },
            }
        )
    )
    rc, out, err = await qsdn("controller", "check-config", str(tmp_path / "controller.yaml"))
    assert rc == 0, err
    assert "3 node(s), 2 span(s)" in out
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qsdn.cli", "controller", "run", "--config", str(tmp_path / "controller.yaml"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    conn = ["--url", f"http://127.0.0.1:{port}", "--user", "op", "--password", "pw"]
    try:
        for _ in range(200):
            rc, out, err = await qsdn("topology", "show", *conn, "--format", "json")
            if rc == 0:
                break
            assert proc.returncode is None, "controller exited"
            await asyncio.sleep(0.1)
        assert rc == 0, err
        topo_json = json.loads(out)
        assert {n["name"] for n in topo_json["qkd_node"]} == {"A", "B", "C"}

        rc, out, err = await qsdn(
            "path", "compute", "--src", "A", "--dst", "C", "--rate", "500", *conn, "--format", "json"
        )
        assert rc == 0, err
        assert json.loads(out)["qsdn-orchestrator:output"]["path"][0]["node"] == [net.ids[n] for n in "ABC"]

        rc, out, err = await qsdn(
            "session", "create", "--src", "A", "--dst", "C", "--rate", "500", *conn, "--format", "json"
        )
        assert rc == 0, err
        sid = json.loads(out)["qsdn-orchestrator:output"]["session_id"]

        rc, out, err = await qsdn("session", "list", *conn)
        assert rc == 0, err
        assert "active" in out and "A - B - C" in out

        rc, out, err = await qsdn("session", "create", "--src", "A", "--dst", "nowhere", "--rate", "1", *conn)
        assert rc == 1 and "no node named 'nowhere'" in err

        rc, out, err = await qsdn("session", "delete", sid, *conn)
        assert rc == 0, err
        rc, out, err = await qsdn("session", "list", *conn, "--format", "json")
        assert json.loads(out) == []
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err_b = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err_b.decode()
    assert b"Traceback" not in err_b
