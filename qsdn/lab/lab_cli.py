"""``qsdn lab up|status|down|cut|eve|restore``: a whole quantum network from one topology file.

``register(subparsers)`` adds the ``lab`` command to ``qsdn``; ``python -m qsdn.lab.lab_cli`` runs the
same commands on their own. Rendering (rich progress bars and tables) lives here; the work is in
:mod:`qsdn.lab.launcher`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsdn.errors import ConfigError, QsdnError

if TYPE_CHECKING:  # the commands import these when they run: `qsdn` starts fast
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from qsdn.lab import launcher
    from qsdn.lab.topology import LabTopology

STEPS = {
    "configuration": "configuration and namespaces",
    "medium": "starting the quantum medium",
    "agents": "starting agents",
    "controller": "starting the controller",
    "onboarding": "onboarding nodes (NETCONF)",
    "sessions": "creating sessions",
}


class _RichProgress:
    """:class:`qsdn.lab.launcher.UpProgress` drawn as rich progress bars, one per step."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def start(self, step: str, total: int) -> None:
        self.tasks[step] = self.progress.add_task(STEPS.get(step, step), total=max(total, 0))

    def advance(self, step: str, n: int = 1) -> None:
        self.progress.advance(self.tasks[step], n)


def _lab_dir(args: argparse.Namespace) -> Path:
    """``--dir``, else ``$QSDN_LAB_DIR``, else the only ``./lab-*`` directory holding a lab.json."""
    from qsdn.lab import launcher

    if args.dir:
        return Path(args.dir).resolve()
    if env := os.environ.get("QSDN_LAB_DIR"):
        return Path(env).resolve()
    found = sorted(p.parent for p in Path.cwd().glob(f"lab-*/{launcher.LAB_JSON}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise QsdnError("no lab directory here: pass --dir (or set QSDN_LAB_DIR)")
    raise QsdnError(f"several labs here ({', '.join(p.name for p in found)}): pass --dir")


def _tables(view: launcher.LabView) -> list[Table]:
    from rich.table import Table

    nodes = Table(title="nodes")
    for c in ("name", "role", "NETCONF", "status"):
        nodes.add_column(c)
    for n in view.nodes:
        colour = "green" if n.status == "reachable" else "red"
        nodes.add_row(n.name, n.role, n.netconf, f"[{colour}]{n.status}[/]")
    links = Table(title="links")
    for c in ("span", "nodes", "km", "class", "rate bit/s", "status"):
        links.add_column(c)
    for lk in view.links:
        colour = {"green": "green", "orange": "yellow", "red": "red"}.get(lk.span_class, "white")
        rate = f"{lk.rate_bps:,}" if lk.rate_bps is not None else "?"
        cls = f"[{colour}]{lk.span_class}[/]"
        links.add_row(lk.span_id, lk.ends, f"{lk.length_km:g}", cls, rate, lk.status)
    return [nodes, links, _session_table(view)]


def _session_table(view: launcher.LabView) -> Table:
    from rich.table import Table

    sessions = Table(title="sessions")
    for c in ("name", "path", "rate bit/s", "status", "error"):
        sessions.add_column(c)
    for s in view.sessions:
        colour = "green" if s.status == "active" else "red"
        sessions.add_row(s.name, s.path, f"{s.rate_bps:,}", f"[{colour}]{s.status}[/]", s.error)
    return sessions


# --- up -------------------------------------------------------------------------------------------
async def _up_async(args: argparse.Namespace, topo: LabTopology, lab_dir: Path, console: Console) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from qsdn.lab import launcher

    own_pid = None if args.detach else os.getpid()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    console.print(f"lab [bold]{topo.name}[/] ({args.mode}) in {lab_dir}")
    with Progress(*columns, console=console) as progress:
        task = asyncio.create_task(
            launcher.up(
                topo,
                lab_dir,
                mode=args.mode,
                launcher_pid=own_pid,
                progress=_RichProgress(progress),
                seed=args.seed,
            )
        )

        def interrupted() -> None:
            stop.set()
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted)
        try:
            result = await task
        except asyncio.CancelledError:
            result = None
    if result is None:
        console.print("[yellow]interrupted: the lab was taken down[/]")
        return 130
    for t in _tables(result.view):
        console.print(t)
    failed = result.failed_sessions
    if failed:
        console.print(f"[red]session(s) not active: {', '.join(failed)}[/]")
    if args.detach:
        console.print(
            f"lab {topo.name} is up (lab.json: {launcher.lab_json_path(lab_dir)}); "
            f"`qsdn lab status --dir {lab_dir}`, `qsdn lab down --dir {lab_dir}`"
        )
        return 1 if failed else 0
    console.print("the lab runs until Ctrl-C (or SIGTERM)")
    # from here on a signal only stops the wait: the lab is taken down below, once
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def exited(row: launcher.ProcessRow) -> None:
        console.print(f"[red]{row.kind} {row.name} (pid {row.pid}) exited[/]")

    await launcher.watch(lab_dir, stop, exited)
    console.print("taking the lab down ...")
    report = await asyncio.to_thread(launcher.down, lab_dir, own_pid=own_pid)
    _print_down(console, lab_dir, report)
    return 0 if not report.problems else 1


def _up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qsdn.lab.netns import sanitize
    from qsdn.lab.topology import load_topology

    topo = load_topology(Path(args.topology))
    lab_dir = Path(args.dir or f"lab-{sanitize(topo.name)}").resolve()
    return asyncio.run(_up_async(args, topo, lab_dir, Console()))


# --- status, down ---------------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from qsdn.lab import launcher

    lab_dir = _lab_dir(args)
    lab = launcher.read_lab(lab_dir)
    procs = launcher.lab_processes(lab)
    if any(p.alive for p in procs if p.kind == "controller"):
        view, error = asyncio.run(launcher.controller_view(lab))
    else:
        view, error = launcher.lab_view(lab, None), "the controller is not running"
    ok = all(p.alive for p in procs) and error is None
    if args.format == "json":
        out = {
            "lab": lab["lab"],
            "mode": lab["mode"],
            "state": lab.get("state"),
            "processes": [asdict(p) for p in procs],
            "controller_error": error,
            **asdict(view),
        }
        print(json.dumps(out, indent=2))
        return 0 if ok else 1
    console = Console()
    console.print(f"lab [bold]{lab['lab']}[/] ({lab['mode']}) in {lab_dir}: {lab.get('state')}")
    t = Table(title="processes")
    for c in ("name", "kind", "pid", "alive"):
        t.add_column(c)
    for p in procs:
        t.add_row(p.name, p.kind, str(p.pid or "-"), "[green]yes[/]" if p.alive else "[red]no[/]")
    console.print(t)
    if error is not None:
        console.print(f"[red]controller: {error}[/]")
        return 1
    for table in _tables(view):
        console.print(table)
    return 0 if ok else 1


def _print_down(console: Console, lab_dir: Path, report: launcher.DownReport) -> None:
    killed = f", {len(report.killed)} killed after the timeout" if report.killed else ""
    console.print(f"lab in {lab_dir} is down: {report.stopped} process(es) stopped{killed}")
    for p in report.problems:
        console.print(f"[red]{p}[/]")


def _down(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qsdn.lab import launcher

    lab_dir = _lab_dir(args)
    report = launcher.down(lab_dir)
    _print_down(Console(), lab_dir, report)
    return 0 if not report.problems else 1


# --- faults ---------------------------------------------------------------------------------------
async def _fault_async(args: argparse.Namespace, cut: bool, eve: float, what: str) -> int:
    from rich.console import Console

    from qsdn.lab import launcher

    lab_dir = _lab_dir(args)
    node = await launcher.set_fault(lab_dir, args.link, fibre_cut=cut, eavesdropper=eve)
    console = Console()
    console.print(f"{what} on span {args.link} (set on {node}, its transmitting end)")
    # a cut takes the span down; an eavesdropper does once the QBER passes the threshold (a weak one
    # never does: wait a few seconds only); restore brings it back
    want_down = cut or eve > 0
    view = await launcher.settle(lab_dir, args.link, want_down=want_down, timeout_s=6.0 if eve else 15.0)
    link = next(lk for lk in view.links if lk.span_id == args.link)
    console.print(f"span {link.span_id} ({link.ends}): {link.status}")
    console.print(_session_table(view))
    return 0


def _cut(args: argparse.Namespace) -> int:
    return asyncio.run(_fault_async(args, True, 0.0, "fibre cut"))


def _eve(args: argparse.Namespace) -> int:
    if not 0.0 < args.level <= 1.0:
        raise QsdnError(f"--level {args.level}: must be in (0, 1]")
    return asyncio.run(_fault_async(args, False, args.level, f"eavesdropper (level {args.level:g})"))


def _restore(args: argparse.Namespace) -> int:
    return asyncio.run(_fault_async(args, False, 0.0, "faults cleared"))


# --- argparse -------------------------------------------------------------------------------------
def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="the lab directory (default: the only ./lab-* here, or $QSDN_LAB_DIR)")


def _keys(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from qsdn.lab.launcher import exchange_keys, read_lab

    lab = read_lab(_lab_dir(args))
    ex = asyncio.run(exchange_keys(lab, args.session, number=args.number, size=args.size))
    table = Table(title=f"ETSI 014 key exchange: {ex.master} -> {ex.slave} (session {ex.session})")
    for col in ("key_ID", "SHA-256 at the master", "SHA-256 at the slave"):
        table.add_column(col)
    for kid, a, b in zip(ex.key_ids, ex.fingerprints_master, ex.fingerprints_slave, strict=False):
        table.add_row(kid, a, b)
    Console().print(table)
    print("identical keys at both SAEs" if ex.identical else "KEYS DIFFER")
    return 0 if ex.identical else 1


def _compose(args: argparse.Namespace) -> int:
    from qsdn.lab.compose import write_compose
    from qsdn.lab.topology import load_topology

    topo = load_topology(Path(args.topology))
    written = write_compose(topo, Path(args.out), args.config_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


def add_commands(lab: Any) -> None:
    """Add ``up``, ``status``, ``down``, ``cut``, ``eve`` and ``restore`` to a subparsers object."""
    up = lab.add_parser("up", help="start a lab from a topology file")
    up.add_argument("topology", help="topology file (see docs/lab.md)")
    up.add_argument(
        "--mode",
        choices=("processes", "netns"),
        default="processes",
        help="processes on loopback (default), or one network namespace per node (needs root)",
    )
    up.add_argument("--dir", help="lab directory (default: ./lab-<name>)")
    up.add_argument("--detach", action="store_true", help="return once the lab is up, leaving it running")
    up.add_argument(
        "--seed",
        type=int,
        help="seed of the entanglement medium (labs with repeaters or BSM stations; default: random)",
    )
    up.set_defaults(func=_up)
    keys = lab.add_parser("keys", help="a live ETSI 014 key exchange between a session's two SAEs")
    keys.add_argument("session", help="session name from the topology file")
    keys.add_argument("--number", type=int, default=3)
    keys.add_argument("--size", type=int, default=256)
    keys.add_argument("--dir", help="lab directory")
    keys.set_defaults(func=_keys)
    compose = lab.add_parser("compose", help="write a docker-compose deployment of a topology")
    compose.add_argument("topology", help="topology file")
    compose.add_argument("--out", default=".", help="where docker-compose.yml goes (default: .)")
    compose.add_argument(
        "--config-dir",
        default="deploy/lab",
        help="configuration folder, relative to --out (default: deploy/lab)",
    )
    compose.set_defaults(func=_compose)
    st = lab.add_parser("status", help="processes and the controller's view of a lab")
    _add_dir(st)
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=_status)
    dn = lab.add_parser("down", help="stop a lab and remove its namespaces")
    _add_dir(dn)
    dn.set_defaults(func=_down)
    for name, helptext, func in (
        ("cut", "cut the fibre of a span", _cut),
        ("eve", "put an eavesdropper on a span", _eve),
        ("restore", "clear a span's fibre cut and eavesdropper", _restore),
    ):
        p = lab.add_parser(name, help=helptext)
        p.add_argument("link", help="span id")
        if name == "eve":
            p.add_argument("--level", type=float, default=0.5, help="fraction of pulses intercepted (0, 1]")
        _add_dir(p)
        p.set_defaults(func=func)


def register(sub: Any) -> None:
    """Add ``qsdn lab ...`` to the ``qsdn`` command's subparsers."""
    lab = sub.add_parser("lab", help="a whole lab from a topology file").add_subparsers(
        dest="action", required=True
    )
    add_commands(lab)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsdn lab", description="a whole quantum network lab")
    add_commands(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except ConfigError as exc:
        print(f"error: {exc.first.message}", file=sys.stderr)
        return 2
    except QsdnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
