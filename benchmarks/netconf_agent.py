"""Benchmark: NETCONF round trips and session set-up against a real qsdn agent process.

The agent runs as a separate process (``qsdn agent run --config node.yaml``, generated in a temporary
directory, free ports), so client and server share neither an event loop nor the GIL; the client is
qsdn's asyncssh NETCONF client (:class:`qsdn.netconf.client.NetconfClient`). Measured, each with
warm-up iterations excluded and ``time.perf_counter_ns`` around every request:

- session set-up: SSH connect, key exchange, password authentication and the hello exchange;
- ``<edit-config>`` on running over one session, alternating two values of ``qkdn_version`` so that
  every edit really changes running (validation, the node's hardware reconciliation, persistence of
  ``running.xml`` and an RFC 6470 ``netconf-config-change`` notification);
- creating and deleting a PHYS ``qkd_link`` (the emulated driver creates and removes the link);
- the same ``qkdn_version`` edit from 20 concurrent sessions, each its own SSH connection;
- ``<get-config>`` of running;
- ``<edit-config>`` on candidate followed by ``<commit>``.

A second session subscribed to the NETCONF stream (as a controller would be) counts the
``netconf-config-change`` notifications: the run fails if an edit did not change running.

For every figure the agent's CPU time per operation (from ``/proc/<pid>/stat``) and the client's
(``time.process_time``) are printed beside the latency, so a reader sees which side spends it.

    .venv/bin/python benchmarks/netconf_agent.py [--iterations N] [--sessions 20] [--json [FILE]]

This is a script, not a test: nothing in the test suite checks wall-clock time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from lxml import etree
from rich.console import Console
from rich.table import Table

from qsdn.netconf.client import NetconfClient

NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
CONFIG_CHANGE = "{urn:ietf:params:xml:ns:yang:ietf-netconf-notifications}netconf-config-change"
USER = "bench"
PASSWORD = "qsdn-bench"  # a throw-away credential on loopback
TARGET_MEDIAN_MS = 2.0
MIN_CPU_S = 0.2
LINK_ID = "b3e7c0de-0000-4000-8000-00000000be11"  # qkdl_id is a UUID

Op = Callable[[int], Awaitable[Any]]


# --- machine ---------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _libyang_c_version() -> str:
    """The C library's version (libyang 2.1 has no run-time version call; ask pkg-config)."""
    exe = shutil.which("pkg-config")
    if exe is not None:
        out = subprocess.run([exe, "--modversion", "libyang"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _filesystem(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/mounts): fsync costs differ by type."""
    best, fstype = "", "unknown"
    real = str(path.resolve())
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if (
            len(parts) >= 3
            and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"))
            and len(parts[1]) > len(best)
        ):
            best, fstype = parts[1], parts[2]
    return fstype


def load_average() -> str:
    """The 1/5/15-minute load averages: figures taken on a busy machine are not comparable."""
    parts = _read("/proc/loadavg").split()
    return " ".join(parts[:3]) if len(parts) >= 3 else "unknown"


def _cpu_times() -> tuple[int, int]:
    fields = _read("/proc/stat").split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


def cpu_busy_percent(interval_s: float = 1.0) -> float | None:
    """How busy all CPUs were over ``interval_s``, before the agent starts (others' work skews figures)."""
    if not _read("/proc/stat"):
        return None
    t0, i0 = _cpu_times()
    time.sleep(interval_s)
    t1, i1 = _cpu_times()
    return round(100.0 * (1 - (i1 - i0) / max(t1 - t0, 1)), 1)


def source_revision() -> str:
    """The qsdn commit measured, with ``-dirty`` when agent/ or qsdn/ have uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        [git, "status", "--porcelain", "--", "agent", "qsdn"], cwd=root, capture_output=True, text=True
    )
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info(data_dir: Path) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libyang": _libyang_c_version(),
        "libyang_python": _pkg("libyang"),
        "asyncssh": _pkg("asyncssh"),
        "lxml": _pkg("lxml"),
        "data_dir_fs": _filesystem(data_dir),
        "load_before": load_average(),
        "cpu_busy_before_pct": cpu_busy_percent(),
    }


# --- statistics ------------------------------------------------------------------------------------
def percentile(sorted_ns: Sequence[int], p: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


@dataclass
class Result:
    name: str
    sessions: int
    latencies_ns: list[int]
    wall_ns: int
    agent_cpu_s: float | None
    client_cpu_s: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ns)
        n = len(lat)
        row = {
            "name": self.name,
            "sessions": self.sessions,
            "count": n,
            "median_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "min_ms": lat[0] / 1e6 if lat else math.nan,
            "max_ms": lat[-1] / 1e6 if lat else math.nan,
            "mean_ms": sum(lat) / n / 1e6 if n else math.nan,
            "throughput_per_s": n / (self.wall_ns / 1e9) if self.wall_ns else math.nan,
            # /proc counts CPU time in 10 ms ticks: below 0.2 s in a phase the per-op figure is noise.
            "agent_cpu_ms_per_op": None
            if self.agent_cpu_s is None or self.agent_cpu_s < MIN_CPU_S
            else self.agent_cpu_s * 1e3 / n,
            "client_cpu_ms_per_op": self.client_cpu_s * 1e3 / n if n else math.nan,
            "note": self.note,
            **self.extra,
        }
        # JSON has no NaN: a figure that was not measured is null.
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


class CpuClock:
    """CPU time (user + system) of the agent process and of this one, for a measured phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def agent_s(self) -> float | None:
        text = _read(f"/proc/{self.pid}/stat")
        if not text:
            return None
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime (fields 14, 15)

    @staticmethod
    def client_s() -> float:
        return time.process_time()


# --- the agent process -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_node_yaml(workdir: Path, data_dir: Path, node_id: str, port: int, max_sessions: int) -> Path:
    cfg = {
        "node_id": node_id,
        "name": "bench",
        "data_dir": str(data_dir),
        "netconf": {
            "host": "127.0.0.1",
            "port": port,
            "max_sessions": max_sessions,
            "users": [{"name": USER, "password": PASSWORD}],
        },
        "interfaces": [
            {
                "qkdi_id": 1,
                "listen": {"host": "127.0.0.1", "port": _free_port()},
                "peer": {"host": "127.0.0.1", "port": _free_port()},
                "fibre": {"length_km": 50.0, "band": "C", "extra_loss_db": 0.0},
            }
        ],
    }
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def agent_argv(config: Path, log_level: str, profile: Path | None) -> list[str]:
    exe = Path(sys.executable).with_name("qsdn")
    tail = ["--log-level", log_level, "agent", "run", "--config", str(config)]
    if profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "qsdn.cli", *tail]
    if exe.exists():
        return [str(exe), *tail]
    return [sys.executable, "-m", "qsdn.cli", *tail]


def wait_port(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"the agent did not listen on port {port} within {timeout_s} s") from None
            time.sleep(0.05)


def stop_agent(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM (the agent drains its sessions and exits), SIGKILL if it does not within the timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


# --- payloads --------------------------------------------------------------------------------------
def version_edit(value: str) -> str:
    return f'<qkd_node xmlns="{NODE_NS}"><qkdn_version>{value}</qkdn_version></qkd_node>'


def link_create(node_id: str, remote_id: str) -> str:
    """A PHYS link with the ETSI leaves; RECEIVER, so the emulated driver waits for a peer, sends nothing."""
    return f"""<qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}">
  <qkdn_id>{node_id}</qkdn_id>
  <qkd_links>
    <qkd_link>
      <qkdl_id>{LINK_ID}</qkdl_id>
      <qkdl_enable>true</qkdl_enable>
      <qkdl_local><qkdn_id>{node_id}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_local>
      <qkdl_remote><qkdn_id>{remote_id}</qkdn_id><qkdi_id>1</qkdi_id></qkdl_remote>
      <qkdl_type>t:PHYS</qkdl_type>
      <phys_qkd_role>t:RECEIVER</phys_qkd_role>
      <phys_wavelength>20</phys_wavelength>
    </qkd_link>
  </qkd_links>
</qkd_node>"""


def link_delete() -> str:
    return (
        f'<qkd_node xmlns="{NODE_NS}" xmlns:nc="{NC_NS}"><qkd_links>'
        f'<qkd_link nc:operation="delete"><qkdl_id>{LINK_ID}</qkdl_id></qkd_link>'
        "</qkd_links></qkd_node>"
    )


# --- the benchmark ---------------------------------------------------------------------------------
@dataclass
class Bench:
    port: int
    node_id: str
    cpu: CpuClock
    iterations: int
    warmup: int
    setup_iterations: int
    sessions: int
    subscriber: bool
    console: Console
    results: list[Result] = field(default_factory=list)
    expected_changes: int = 0
    others_cpu_pct: float | None = None
    _changes: int = 0
    _change_event: asyncio.Event = field(default_factory=asyncio.Event)

    def client(self) -> NetconfClient:
        return NetconfClient(
            "127.0.0.1", self.port, USER, password=PASSWORD, known_hosts=None, timeout_s=60.0
        )

    def progress(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    async def _listen(self, sub: NetconfClient) -> None:
        while True:
            n = await sub.notifications.get()
            if n.body.tag == CONFIG_CHANGE:
                self._changes += 1
                self._change_event.set()

    async def _changes_reach(self, expected: int, timeout_s: float = 30.0) -> None:
        if not self.subscriber:
            return
        end = time.monotonic() + timeout_s
        while self._changes < expected:
            self._change_event.clear()
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"expected {expected} netconf-config-change notifications, got {self._changes}: "
                    "an edit did not change running"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change_event.wait(), left)

    async def _sequential(self, name: str, op: Op, *, changes_per_op: int = 0, note: str = "") -> Result:
        """Warm-up, then ``iterations`` timed calls of ``op(i)`` one after the other."""
        self.progress(f"{name}: {self.warmup} warm-up + {self.iterations} measured")
        for i in range(self.warmup):
            await op(i)
        self.expected_changes += self.warmup * changes_per_op
        lat: list[int] = []
        a0, c0, w0 = self.cpu.agent_s(), self.cpu.client_s(), time.perf_counter_ns()
        for i in range(self.warmup, self.warmup + self.iterations):
            t0 = time.perf_counter_ns()
            await op(i)
            lat.append(time.perf_counter_ns() - t0)
        wall = time.perf_counter_ns() - w0
        a1, c1 = self.cpu.agent_s(), self.cpu.client_s()
        self.expected_changes += self.iterations * changes_per_op
        await self._changes_reach(self.expected_changes)
        agent_cpu = None if a0 is None or a1 is None else a1 - a0
        result = Result(name, 1, lat, wall, agent_cpu, c1 - c0, note)
        self.results.append(result)
        return result

    async def session_setup(self) -> None:
        n, w = self.setup_iterations, min(5, self.setup_iterations)
        self.progress(f"session set-up: {w} warm-up + {n} measured")
        lat: list[int] = []
        close: list[int] = []
        a_cpu = 0.0
        c_cpu = 0.0
        wall = 0
        for i in range(w + n):
            c = self.client()
            a0, c0 = self.cpu.agent_s(), self.cpu.client_s()
            t0 = time.perf_counter_ns()
            await c.connect()
            t1 = time.perf_counter_ns()
            a1, c1 = self.cpu.agent_s(), self.cpu.client_s()
            await c.close()
            t2 = time.perf_counter_ns()
            if i >= w:
                lat.append(t1 - t0)
                close.append(t2 - t1)
                wall += t1 - t0
                c_cpu += c1 - c0
                if a0 is not None and a1 is not None:
                    a_cpu += a1 - a0
        self.results.append(
            Result(
                "session set-up (connect+auth+hello)",
                1,
                lat,
                wall,
                a_cpu,
                c_cpu,
                "new SSH connection each time; password auth",
                {"close_median_ms": percentile(sorted(close), 50)},
            )
        )

    async def one_session(self, c: NetconfClient) -> None:
        values = ("bench-a", "bench-b")

        async def edit_version(i: int) -> None:
            await c.edit_config(version_edit(values[i % 2]))

        await self._sequential(
            "edit-config running (qkdn_version)", edit_version, changes_per_op=1, note="alternating 2 values"
        )

        remote = str(uuid.uuid4())
        create: list[int] = []
        delete: list[int] = []

        async def link_cycle(i: int) -> None:
            t0 = time.perf_counter_ns()
            await c.edit_config(link_create(self.node_id, remote))
            t1 = time.perf_counter_ns()
            await c.edit_config(link_delete())
            t2 = time.perf_counter_ns()
            if i >= self.warmup:
                create.append(t1 - t0)
                delete.append(t2 - t1)

        cycle = await self._sequential("PHYS link create + delete", link_cycle, changes_per_op=2)
        self.results.remove(cycle)
        half_a = None if cycle.agent_cpu_s is None else cycle.agent_cpu_s / 2
        for name, lat in (("edit-config running: create PHYS link", create), ("  ... delete it", delete)):
            self.results.append(
                Result(name, 1, lat, sum(lat), half_a, cycle.client_cpu_s / 2, "CPU: half of the pair")
            )

        async def get_config(i: int) -> None:
            await c.get_config()

        r = await self._sequential("get-config running", get_config)
        data = await c.get_config()
        r.extra["reply_data_bytes"] = sum(len(etree.tostring(child)) for child in data)

        cand: list[int] = []
        commit: list[int] = []

        cand_values = ("bench-c", "bench-d")  # not the value running was left with above

        async def edit_commit(i: int) -> None:
            t0 = time.perf_counter_ns()
            await c.edit_config(version_edit(cand_values[i % 2]), target="candidate")
            t1 = time.perf_counter_ns()
            await c.commit()
            t2 = time.perf_counter_ns()
            if i >= self.warmup:
                cand.append(t1 - t0)
                commit.append(t2 - t1)

        both = await self._sequential("edit-config candidate + commit", edit_commit, changes_per_op=1)
        both.note = "one round trip each"
        for name, lat in (("  ... edit-config candidate", cand), ("  ... commit", commit)):
            self.results.append(Result(name, 1, lat, sum(lat), None, math.nan))

    async def concurrent(self) -> None:
        k = self.sessions
        per = max(1, math.ceil(self.iterations / k))
        warm = max(1, math.ceil(self.warmup / k))
        self.progress(f"edit-config from {k} concurrent sessions: {warm} warm-up + {per} measured each")
        clients = [self.client() for _ in range(k)]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            barrier = asyncio.Barrier(k + 1)
            lat: list[list[int]] = [[] for _ in range(k)]
            done_ns = [0] * k

            async def worker(j: int, c: NetconfClient) -> None:
                values = (f"bench-s{j}-a", f"bench-s{j}-b")
                for i in range(warm):
                    await c.edit_config(version_edit(values[i % 2]))
                await barrier.wait()
                for i in range(warm, warm + per):
                    t0 = time.perf_counter_ns()
                    await c.edit_config(version_edit(values[i % 2]))
                    lat[j].append(time.perf_counter_ns() - t0)
                done_ns[j] = time.perf_counter_ns()

            tasks = [asyncio.create_task(worker(j, c)) for j, c in enumerate(clients)]
            await barrier.wait()
            a0, c0, w0 = self.cpu.agent_s(), self.cpu.client_s(), time.perf_counter_ns()
            await asyncio.gather(*tasks)
            a1, c1 = self.cpu.agent_s(), self.cpu.client_s()
            wall = max(done_ns) - w0
            # Every session alternates its own two values and waits for each reply, so two edits in a
            # row (the agent applies them one at a time) never carry the same value: each changes running.
            self.expected_changes += k * (warm + per)
            await self._changes_reach(self.expected_changes)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        flat = [x for per_session in lat for x in per_session]
        agent_cpu = None if a0 is None or a1 is None else a1 - a0
        self.results.append(
            Result(
                "edit-config running (qkdn_version)",
                k,
                flat,
                wall,
                agent_cpu,
                c1 - c0,
                "one SSH connection per session",
            )
        )

    async def run(self) -> None:
        total0, idle0 = _cpu_times() if _read("/proc/stat") else (0, 0)
        a0, c0, w0 = self.cpu.agent_s(), self.cpu.client_s(), time.perf_counter()
        try:
            await self._run()
        finally:
            if total0:
                total1, idle1 = _cpu_times()
                a1, c1, wall = self.cpu.agent_s(), self.cpu.client_s(), time.perf_counter() - w0
                busy_s = ((total1 - total0) - (idle1 - idle0)) / self.cpu.tick
                ours = (c1 - c0) + (a1 - a0 if a0 is not None and a1 is not None else 0.0)
                self.others_cpu_pct = round(100.0 * max(busy_s - ours, 0.0) / wall, 1)

    async def _run(self) -> None:
        await self.session_setup()
        sub: NetconfClient | None = None
        listener: asyncio.Task[None] | None = None
        if self.subscriber:
            sub = self.client()
            await sub.connect()
            await sub.create_subscription()
            listener = asyncio.create_task(self._listen(sub))
        try:
            async with self.client() as c:
                await self.one_session(c)
            if self.sessions > 0:
                await self.concurrent()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            if sub is not None:
                await sub.close()


# --- output ----------------------------------------------------------------------------------------
def _ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def render_header(console: Console, machine: dict[str, Any], params: dict[str, Any]) -> None:
    """The machine and the run's parameters, printed before anything is measured."""
    m = machine
    console.print(
        f"[bold]machine[/bold]: {m['cpu_model']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM, {m['os']} "
        f"(kernel {m['kernel']}); Python {m['python']}; libyang {m['libyang']} "
        f"(libyang-python {m['libyang_python']}); asyncssh {m['asyncssh']}; lxml {m['lxml']}; "
        f"agent data dir on {m['data_dir_fs']}; before the run: CPUs {m['cpu_busy_before_pct']}% busy, "
        f"load average {m['load_before']}"
    )
    console.print(
        f"[bold]run[/bold]: qsdn {params['revision']}; {params['iterations']} measured iterations after "
        f"{params['warmup']} warm-up; "
        f"{params['setup_iterations']} session set-ups; {params['sessions']} concurrent sessions; "
        f"notification subscriber: {'yes' if params['subscriber'] else 'no'}"
    )


def render_table(console: Console, machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    console.print(
        f"[bold]during the run[/bold]: other processes used "
        f"{machine.get('others_cpu_during_pct')}% of one CPU"
    )
    table = Table(title="qsdn agent over NETCONF/SSH (asyncssh client), latency in ms")
    for col, justify in (
        ("measurement", "left"),
        ("sessions", "right"),
        ("n", "right"),
        ("median", "right"),
        ("p95", "right"),
        ("p99", "right"),
        ("ops/s", "right"),
        ("agent CPU ms/op", "right"),
        ("client CPU ms/op", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["name"],
            str(r["sessions"]),
            str(r["count"]),
            _ms(r["median_ms"]),
            _ms(r["p95_ms"]),
            _ms(r["p99_ms"]),
            "-" if r["throughput_per_s"] is None else f"{r['throughput_per_s']:.0f}",
            _ms(r["agent_cpu_ms_per_op"]),
            _ms(r["client_cpu_ms_per_op"]),
        )
    console.print(table)
    for r in rows:
        if r["name"].startswith("edit-config running (qkdn_version)") and r["sessions"] == 1:
            ok = r["median_ms"] < TARGET_MEDIAN_MS
            verdict = "[green]met[/green]" if ok else "[red]missed[/red]"
            console.print(
                f"target: median edit-config round trip < {TARGET_MEDIAN_MS} ms: {verdict} "
                f"(median {r['median_ms']:.3f} ms)"
            )


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--iterations", type=int, default=1000, help="measured iterations per figure (default 1000)"
    )
    p.add_argument("--warmup", type=int, default=50, help="warm-up iterations, not measured (default 50)")
    p.add_argument(
        "--setup-iterations", type=int, help="session set-ups to measure (default: --iterations, at most 200)"
    )
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20; 0 skips)")
    p.add_argument("--no-subscriber", action="store_true", help="no notification-subscribed session")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write results as JSON to FILE (- or none: stdout)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where to put the agent's data directory (e.g. a tmpfs; default: the temp dir)",
    )
    p.add_argument("--agent-log-level", default="warning", help="the agent's --log-level (default warning)")
    p.add_argument(
        "--profile-agent",
        type=Path,
        metavar="FILE",
        help="run the agent under cProfile, write its stats to FILE (latencies then not representative)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (node.yaml, agent.log)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.sessions < 0:
        p.error("--iterations must be >= 1, --warmup and --sessions >= 0")
    if args.setup_iterations is None:
        args.setup_iterations = min(args.iterations, 200)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    to_stdout_json = args.json == "-"
    console = Console(stderr=to_stdout_json)
    if not console.is_terminal:
        console = Console(stderr=to_stdout_json, width=140)
    progress = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    workdir = Path(tempfile.mkdtemp(prefix="qsdn-bench-netconf-"))
    # A fresh data directory every run: a persisted running.xml would carry another node's identity.
    data_dir = (args.data_dir / workdir.name) if args.data_dir is not None else (workdir / "data")
    data_dir.mkdir(parents=True)
    machine = machine_info(data_dir)
    node_id = str(uuid.uuid4())
    port = _free_port()
    config = write_node_yaml(workdir, data_dir, node_id, port, max_sessions=max(64, args.sessions + 8))
    log_path = workdir / "agent.log"
    params = {
        "iterations": args.iterations,
        "warmup": args.warmup,
        "setup_iterations": args.setup_iterations,
        "sessions": args.sessions,
        "subscriber": not args.no_subscriber,
        "agent_log_level": args.agent_log_level,
        "profiled": args.profile_agent is not None,
        "revision": source_revision(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    render_header(console, machine, params)
    progress.print(f"[dim]agent: {config} (log {log_path})[/dim]")
    proc: subprocess.Popen[bytes] | None = None
    rc = 0

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below, which stops the agent

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                agent_argv(config, args.agent_log_level, args.profile_agent),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        progress.print(f"[dim]agent pid {proc.pid}, NETCONF on 127.0.0.1:{port}[/dim]")
        wait_port(proc, port)
        bench = Bench(
            port=port,
            node_id=node_id,
            cpu=CpuClock(proc.pid),
            iterations=args.iterations,
            warmup=args.warmup,
            setup_iterations=args.setup_iterations,
            sessions=args.sessions,
            subscriber=not args.no_subscriber,
            console=progress,
        )
        asyncio.run(bench.run())
    except (KeyboardInterrupt, SystemExit):
        progress.print("[yellow]interrupted; stopping the agent[/yellow]")
        raise
    except Exception as exc:
        rc = 1
        progress.print(f"[red]benchmark failed: {exc!r}[/red]")
        if proc is not None and proc.poll() is not None:
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
            progress.print(f"[red]the agent process ended during the run ({how}); was it killed?[/red]")
        tail = _read(str(log_path))[-4000:]
        if tail:
            progress.print(f"[dim]agent log ({log_path}), last lines:[/dim]\n{tail}")
        args.keep = True
        return rc
    finally:
        if proc is not None:
            status = stop_agent(proc)
            if status != 0:
                progress.print(f"[yellow]the agent exited with status {status}[/yellow]")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            if args.data_dir is not None:
                shutil.rmtree(data_dir, ignore_errors=True)
    machine["others_cpu_during_pct"] = bench.others_cpu_pct
    busy = machine["cpu_busy_before_pct"]
    others = bench.others_cpu_pct
    if others is not None and others > 10.0:
        progress.print(
            f"[yellow]other processes used {others}% of one CPU during the run: figures are skewed[/yellow]"
        )
    if busy is not None and busy > 10.0:
        progress.print(
            f"[yellow]the CPUs were {busy}% busy before the run: figures are not comparable[/yellow]"
        )
    rows = [r.summary() for r in bench.results]
    render_table(console, machine, rows)
    if args.json is not None:
        doc = json.dumps({"machine": machine, "parameters": params, "results": rows}, indent=2, default=str)
        if to_stdout_json:
            print(doc)
        else:
            Path(args.json).write_text(doc + "\n", encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main())
