"""The ``qsdn`` command: ``qsdn agent run|check-config``, ``qsdn medium run``, controller, lab, plan...

``main(argv=None) -> int`` so tests call it in-process. Errors of the QsdnError family print one
line naming the object and the rule, and exit 2 (configuration) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from qsdn.errors import ConfigError, QsdnError

log = logging.getLogger("qsdn")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # asyncssh is chatty at INFO (one line per packet type); operators want ours.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def _run_daemon(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a daemon's main coroutine, on uvloop (libuv's event loop) when it is installed.

    The agent and the controller are network daemons: uvloop roughly halves the event loop's cost per
    connection event, which is most of a small ETSI 014 request. Without it, or with the environment
    variable ``QSDN_EVENT_LOOP=asyncio``, they run on asyncio's own loop.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        uvloop = None  # type: ignore[assignment]
    if uvloop is None or os.environ.get("QSDN_EVENT_LOOP", "uvloop") == "asyncio":
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _agent_run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.server import run_agent

    config = load_config(Path(args.config))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(config, stop)

    _run_daemon(main)
    log.info("agent %s stopped", config.name)
    return 0


def _agent_check(args: argparse.Namespace) -> int:
    from agent.config import load_config

    config = load_config(Path(args.config))
    print(
        f"{args.config}: ok: node {config.name} ({config.node_id}), NETCONF on "
        f"{config.netconf.host}:{config.netconf.port}, {len(config.interfaces)} interface(s), "
        f"{len(config.netconf.users)} user(s)"
    )
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from agent.config import hash_password

    pw = args.password if args.password is not None else getpass.getpass("password: ")
    print(hash_password(pw))
    return 0


def _controller_run(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.main import run_controller

    cfg = load_controller_config(Path(args.config))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_controller(cfg, stop)

    _run_daemon(main)
    return 0


def _controller_check(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config, load_topology

    cfg = load_controller_config(Path(args.config))
    extra = ""
    if cfg.topology is not None:
        nodes, spans = load_topology(cfg.topology)
        extra = f", topology {cfg.topology.name}: {len(nodes)} node(s), {len(spans)} span(s)"
    print(f"{args.config}: ok: RESTCONF on {cfg.restconf_host}:{cfg.restconf_port}{extra}")
    return 0


def _medium_run(args: argparse.Namespace) -> int:
    from agent.drivers.medium_service import run_medium

    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {args.listen!r} is not HOST:PORT")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_medium(host or "127.0.0.1", int(port_text), args.seed, stop)

    _run_daemon(main)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from qsdn.demo import main as demo_main

    return demo_main(seconds=args.seconds, keep=args.dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsdn", description="SDN control plane for quantum networks")
    p.add_argument("--log-level", default="info", help="debug, info, warning, error (default: info)")
    sub = p.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="the per-node NETCONF agent").add_subparsers(
        dest="action", required=True
    )
    run = agent.add_parser("run", help="run an agent")
    run.add_argument("--config", required=True, help="node.yaml")
    run.set_defaults(func=_agent_run)
    check = agent.add_parser("check-config", help="validate a node.yaml and exit")
    check.add_argument("config", help="node.yaml")
    check.set_defaults(func=_agent_check)
    hp = agent.add_parser("hash-password", help="print a password_hash for node.yaml")
    hp.add_argument("--password", help="the password (prompted when absent)")
    hp.set_defaults(func=_hash_password)
    ctl = sub.add_parser("controller", help="the SDN controller").add_subparsers(dest="action", required=True)
    crun = ctl.add_parser("run", help="run the controller")
    crun.add_argument("--config", required=True, help="controller.yaml")
    crun.set_defaults(func=_controller_run)
    ccheck = ctl.add_parser("check-config", help="validate a controller.yaml (and its topology) and exit")
    ccheck.add_argument("config", help="controller.yaml")
    ccheck.set_defaults(func=_controller_check)

    med = sub.add_parser("medium", help="the quantum medium of an emulated lab").add_subparsers(
        dest="action", required=True
    )
    mrun = med.add_parser("run", help="run the medium service the agents' entanglement drivers connect to")
    mrun.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    mrun.add_argument("--seed", type=int, default=1, help="random seed of the medium (default 1)")
    mrun.set_defaults(func=_medium_run)

    from qsdn.lab.lab_cli import register as register_lab
    from qsdn.lab.plan_cli import register as register_plan
    from qsdn.operator import register
    from qsdn.pki_cli import register as register_pki

    register(sub)
    register_pki(sub)
    register_lab(sub)
    register_plan(sub)

    demo = sub.add_parser("demo", help="two agents, one fibre: keys at both ends, then a fibre cut")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to produce key (default 5)")
    demo.add_argument("--dir", help="keep the agents' files in this directory")
    demo.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
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
