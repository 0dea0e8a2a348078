"""``qsdn plan TOPOLOGY [--format table|json] [--png FILE]``: the planning report of a topology file.

Importing this module is cheap (argparse only): the report, rich and matplotlib load when the command
runs. Errors in the file raise :class:`~qsdn.errors.ConfigError`, which ``qsdn`` prints as one line
naming the node or span and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

_DESCRIPTION = """\
The GEANT-style planning report of a lab topology file: for every fibre span its loss in the O and C
bands, its planning class (green: the quantum channel can share a lit fibre, O-band loss < 20 dB;
orange: it needs a dark fibre, C-band loss < 20 dB; red: it needs a relay node or a repeater), the
predicted decoy-state BB84 key rate with the end nodes' devices, and for red spans how many relay
sites at equal spacing would make every hop orange or better; then where the file's sessions would go.
Nothing is started and nothing is written unless --png is given."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``plan`` to the ``qsdn`` sub-command parsers; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plan",
        help="planning report of a topology file: span classes, key rates, where relays go",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topology", type=Path, help="the topology file (YAML, see docs/lab.md)")
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) for people, json for scripts: the same figures per span, numbers as numbers",
    )
    p.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="also draw the network to FILE (PNG): spans coloured by class, labelled with their length; "
        "only written when this option is given",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``qsdn plan`` with parsed ``args``; 0 on success (red spans are findings, not errors)."""
    from rich.console import Console

    from qsdn.errors import QsdnError
    from qsdn.lab.plan import build_plan, plan_json, render_table, write_png
    from qsdn.lab.topology import load_topology

    topology = load_topology(args.topology)
    report = build_plan(topology)
    if args.format == "json":
        doc: dict[str, Any] = plan_json(report)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
            console = Console(width=160)
        render_table(report, console)
    if args.png is not None:
        try:
            write_png(topology, report, args.png)
        except OSError as exc:
            raise QsdnError(f"cannot write {args.png}: {exc.strerror or exc}") from None
        # Keep stdout pure JSON for scripts; people reading the table see where the picture went.
        print(f"wrote {args.png}", file=sys.stderr if args.format == "json" else sys.stdout)
    return 0
