"""``qsdn demo``: two agent processes, one emulated 50 km fibre, keys at both ends, a fibre cut.

Everything is real: two ``qsdn agent run`` processes, NETCONF over SSH to each, the emulated quantum
channel between them over TCP, SQLite key stores. The demo never prints key material: it compares
the two ends' key stores by SHA-256 over the stored blocks and prints only whether they match.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from lxml import etree
from rich.console import Console
from rich.table import Table

from qsdn.netconf.client import NetconfClient
from qsdn.physics.bb84 import DeviceParams, secret_key_rate_bps
from qsdn.physics.loss import Band, fibre_loss_db
from qsdn.ports import free_port

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
EMU_NS = "urn:qsdn:yang:qsdn-qkd-emulation"
PASSWORD = "qsdn-demo"  # noqa: S105 - a throw-away lab credential on loopback


def _node_yaml(
    workdir: Path, name: str, node_id: str, nc_port: int, listen: int, peer: int, km: float
) -> Path:
    cfg = {
        "node_id": node_id,
        "name": name,
        "data_dir": str(workdir / name),
        "netconf": {"host": "127.0.0.1", "port": nc_port, "users": [{"name": "admin", "password": PASSWORD}]},
        "interfaces": [
            {
                "qkdi_id": 1,
                "listen": {"host": "127.0.0.1", "port": listen},
                "peer": {"host": "127.0.0.1", "port": peer},
                "fibre": {"length_km": km, "band": "C", "extra_loss_db": 0.0},
            }
        ],
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _link(qkdl_id: str, local: str, remote: str, role: str, cut: bool = False) -> str:
    faults = f'<qsdn_faults xmlns="{EMU_NS}"><fibre_cut>{str(cut).lower()}</fibre_cut></qsdn_faults>'
    return f"""<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkdn_id>{local}</qkdn_id>
<qkd_links><qkd_link>
<qkdl_id>{qkdl_id}</qkdl_id><qkdl_enable>true</qkdl_enable>
<qkdl_local><qkdn_id>{local}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
<qkdl_remote><qkdn_id>{remote}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
<qkdl_type>t:PHYS</qkdl_type><phys_qkd_role>t:{role}</phys_qkd_role>{faults}
</qkd_link></qkd_links></qkd_node>"""


def _store_digests(db: Path, qkdl_id: str) -> dict[str, tuple[int, str]]:
    """Per stored block: its size in bits and a SHA-256 of it (never the key itself)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT block_id, bits, key FROM blocks WHERE qkdl_id = ?", (qkdl_id,)).fetchall()
    finally:
        con.close()
    return {str(b): (int(n), hashlib.sha256(bytes(k or b"")).hexdigest()) for b, n, k in rows}


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file)


def _xs(el: etree._Element, expr: str, namespaces: dict[str, str]) -> str:
    return str(el.xpath(expr, namespaces=namespaces))


async def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def _run(workdir: Path, console: Console, seconds: float) -> int:
    km = 50.0
    a_id, b_id = str(uuid.uuid4()), str(uuid.uuid4())
    a_nc, b_nc, a_q, b_q = (free_port() for _ in range(4))
    cfg_a = _node_yaml(workdir, "alice", a_id, a_nc, a_q, b_q, km)
    cfg_b = _node_yaml(workdir, "bob", b_id, b_nc, b_q, a_q, km)
    exe = [sys.executable, "-m", "qsdn.cli", "--log-level", "warning", "agent", "run", "--config"]
    procs = [
        _spawn([*exe, str(cfg_a)], workdir / "alice.log"),
        _spawn([*exe, str(cfg_b)], workdir / "bob.log"),
    ]
    try:
        console.print(f"[bold]1.[/] two agent processes: alice (NETCONF :{a_nc}), bob (NETCONF :{b_nc})")
        await asyncio.gather(_wait_port(a_nc), _wait_port(b_nc))
        link = str(uuid.uuid4())
        async with (
            NetconfClient("127.0.0.1", a_nc, "admin", password=PASSWORD) as ca,
            NetconfClient("127.0.0.1", b_nc, "admin", password=PASSWORD) as cb,
        ):
            await cb.create_subscription()
            console.print(f"[bold]2.[/] edit-config: PHYS link {link} on both ends ({km:.0f} km, C band)")
            await ca.edit_config(_link(link, a_id, b_id, "TRANSMITTER"))
            await cb.edit_config(_link(link, b_id, a_id, "RECEIVER"))
            console.print(f"[bold]3.[/] producing key for {seconds:.0f} s ...")
            await asyncio.sleep(seconds)
            data = await ca.get(subtree=f'<qkd_node xmlns="{NODE_NS}"><qkd_links/></qkd_node>')
            ns = {"n": NODE_NS, "e": EMU_NS}
            skr = _xs(data, "string(//n:qkd_link/n:qkdl_performance/n:skr)", namespaces=ns)
            qber = _xs(data, "string(//n:qkd_link/e:qsdn_phys/e:qber)", namespaces=ns)
            loss = _xs(data, "string(//n:qkd_link/e:qsdn_phys/e:loss_db)", namespaces=ns)
            blocks_a = _store_digests(workdir / "alice" / "keys.sqlite", link)
            blocks_b = _store_digests(workdir / "bob" / "keys.sqlite", link)
            common = sorted(set(blocks_a) & set(blocks_b))
            same = bool(common) and all(blocks_a[b] == blocks_b[b] for b in common)
            bits_a = sum(n for n, _ in blocks_a.values())
            bits_b = sum(n for n, _ in blocks_b.values())
            model = secret_key_rate_bps(fibre_loss_db(km, Band.C), DeviceParams())
            t = Table(title="PHYS link after the run")
            for col in (
                "loss dB",
                "model rate bit/s",
                "skr (015) bit/s",
                "QBER",
                "alice bits",
                "bob bits",
                "identical",
            ):
                t.add_column(col)
            t.add_row(
                loss,
                f"{model:,.0f}",
                skr,
                qber,
                f"{bits_a:,}",
                f"{bits_b:,}",
                f"yes ({len(common)} blocks)" if same else "NO",
            )
            console.print(t)
            console.print("[bold]4.[/] cutting the fibre (qsdn-qkd-emulation fault switch on alice) ...")
            await ca.edit_config(_link(link, a_id, b_id, "TRANSMITTER", cut=True))
            note = await asyncio.wait_for(cb.notifications.get(), 15)
            while etree.QName(note.body).localname != "sdqkdn_link_down":
                note = await asyncio.wait_for(cb.notifications.get(), 15)
            reason = _xs(note.body, "string(//n:reason)", namespaces={"n": NODE_NS})
            console.print(
                f"    bob received [bold]sdqkdn_link_down[/] at {note.event_time:%H:%M:%S}: {reason}"
            )
            ok = same and bits_a > 0
        console.print(
            "[bold]5.[/] stopping the agents" + (" - [green]demo OK[/]" if ok else " - [red]FAILED[/]")
        )
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main(seconds: float = 5.0, keep: str | None = None) -> int:
    console = Console()
    if keep:
        workdir = Path(keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(workdir, console, seconds))
    with tempfile.TemporaryDirectory(prefix="qsdn-demo-") as d:
        os.chmod(d, 0o700)
        return asyncio.run(_run(Path(d), console, seconds))
