"""``qsdn pki init|issue|show``: a lab's CA, node and SAE certificates from the command line.

``init`` creates (or keeps) the CA under ``--dir`` and, with ``--node``/``--sae``, the whole lab layout of
:func:`qsdn.pki.lab_pki`. ``issue`` signs one more certificate with that CA. ``show`` prints what a
certificate says, including the SAE ID it maps to. Handlers return an exit code; an error of the
QsdnError family prints one line on stderr and returns 1. Private keys are written with mode 0600 and
never printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from qsdn import pki
from qsdn.errors import QsdnError

Handler = Callable[[argparse.Namespace], int]

_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def _one_line_errors(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except QsdnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _sae_pair(text: str) -> tuple[str, str]:
    sae, sep, node = text.partition("=")
    if not sep or not sae or not node:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SAE_ID=NODE")
    return sae, node


@_one_line_errors
def cmd_init(args: argparse.Namespace) -> int:
    """Create the CA (and the lab's node and SAE certificates) under ``--dir``; existing files are kept."""
    root = Path(args.dir)
    existed = (root / "ca.crt").exists() and (root / "ca.key").exists()
    saes = dict(args.sae or [])
    paths = pki.lab_pki(
        root, args.ca_name, args.node or [], saes, hosts=args.host or ("127.0.0.1", "localhost")
    )
    ca = pki.load_pem(paths["ca.crt"])
    verb = "kept" if existed else "created"
    print(f"{verb} CA {ca.common_name!r} in {paths['ca.crt'].parent} (sha256 {ca.fingerprint_sha256})")
    for rel, path in paths.items():
        if rel.endswith(".crt") and rel != "ca.crt":
            print(f"  {rel[:-4]}: {path}")
    return 0


@_one_line_errors
def cmd_issue(args: argparse.Namespace) -> int:
    """Sign one certificate with the CA under ``--dir``."""
    root = Path(args.dir)
    ca = pki.load_pem(root / "ca.crt", root / "ca.key")
    if args.out:
        crt, key = Path(args.out + ".crt"), Path(args.out + ".key")
    else:
        if not pki.SAE_ID_RE.fullmatch(args.name):
            raise QsdnError(
                f"name {args.name!r} is not usable as a file name here; give --out PREFIX",
                tag="invalid-value",
            )
        folder = "nodes" if args.server else "saes"
        crt, key = root / folder / f"{args.name}.crt", root / folder / f"{args.name}.key"
    if not args.force and (crt.exists() or key.exists()):
        raise QsdnError(f"{crt} or {key} exists; pass --force to replace it", tag="data-exists")
    issued = pki.issue(
        ca,
        args.name,
        server=args.server,
        client=args.client,
        dns=args.dns or (),
        ips=args.ip or (),
        days=args.days,
        key=args.key,
    )
    pki.write_pem(issued, crt, key)
    print(f"issued {issued.common_name!r}: {crt} (key {key}, sha256 {issued.fingerprint_sha256})")
    return 0


def _key_type(cert: x509.Certificate) -> str:
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ECDSA {pub.curve.name}"
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    return type(pub).__name__


def describe(cert: x509.Certificate, *, now: datetime | None = None) -> list[tuple[str, str]]:
    """What ``qsdn pki show`` prints, as (field, value) pairs."""
    now = now or datetime.now(UTC)
    ext = cert.extensions

    def get(cls: type[Any]) -> Any:
        try:
            return ext.get_extension_for_class(cls).value
        except x509.ExtensionNotFound:
            return None

    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    status = "expired" if now >= end else "not yet valid" if now < start else "valid"
    bc = get(x509.BasicConstraints)
    ca = "yes" if bc is not None and bc.ca else "no"
    if bc is not None and bc.ca and bc.path_length is not None:
        ca += f" (pathlen {bc.path_length})"
    eku = get(x509.ExtendedKeyUsage)
    san = get(x509.SubjectAlternativeName)
    names = [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)] if san else []
    names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)] if san else []
    try:
        sae = pki.sae_id_of(cert)
    except QsdnError as exc:
        sae = f"none ({exc.first.message})"
    return [
        ("subject", cert.subject.rfc4514_string()),
        ("issuer", cert.issuer.rfc4514_string()),
        ("serial", f"{cert.serial_number:x}"),
        ("not before", start.isoformat()),
        ("not after", end.isoformat()),
        ("status", status),
        ("key", _key_type(cert)),
        ("CA", ca),
        ("extended key usage", ", ".join(_EKU_NAMES.get(u, u.dotted_string) for u in eku) if eku else "-"),
        ("subject alt names", ", ".join(names) or "-"),
        ("sha256", cert.fingerprint(hashes.SHA256()).hex()),
        ("SAE ID", sae),
    ]


@_one_line_errors
def cmd_show(args: argparse.Namespace) -> int:
    """Print a certificate's subject, names, validity, fingerprint and the SAE ID it maps to."""
    issued = pki.load_pem(Path(args.file))
    for name, value in describe(issued.certificate):
        print(f"{name + ':':20} {value}")
    return 0


def register(sub: Any) -> None:
    """Add ``pki init|issue|show`` to the ``qsdn`` sub-command parsers."""
    p = sub.add_parser("pki", help="the lab's CA, node (KME) and SAE certificates").add_subparsers(
        dest="action", required=True
    )
    init = p.add_parser("init", help="create a CA (and node and SAE certificates); keeps existing files")
    init.add_argument("--dir", required=True, help="directory of the PKI (ca.crt, ca.key, nodes/, saes/)")
    init.add_argument("--ca-name", required=True, help="the CA's common name")
    init.add_argument("--node", action="append", help="a node (KME) certificate to create (repeatable)")
    init.add_argument(
        "--sae",
        action="append",
        type=_sae_pair,
        metavar="SAE_ID=NODE",
        help="an SAE certificate (repeatable)",
    )
    init.add_argument(
        "--host",
        action="append",
        help="host name or IP address in node certificates (repeatable; default 127.0.0.1 and localhost)",
    )
    init.set_defaults(func=cmd_init)

    iss = p.add_parser("issue", help="sign one certificate with the CA in --dir")
    iss.add_argument("--dir", required=True, help="directory holding ca.crt and ca.key")
    iss.add_argument("--name", required=True, help="common name (an SAE ID for SAE certificates)")
    iss.add_argument("--server", action="store_true", help="for a TLS server (extendedKeyUsage serverAuth)")
    iss.add_argument("--client", action="store_true", help="for a TLS client (extendedKeyUsage clientAuth)")
    iss.add_argument("--dns", nargs="+", action="extend", metavar="NAME", help="DNS subject alt names")
    iss.add_argument("--ip", nargs="+", action="extend", metavar="ADDR", help="IP subject alt names")
    iss.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    iss.add_argument("--key", choices=pki.KEY_TYPES, default="ec-p256", help="key type (default ec-p256)")
    iss.add_argument(
        "--out", help="write OUT.crt and OUT.key (default DIR/nodes/NAME with --server, else DIR/saes/NAME)"
    )
    iss.add_argument("--force", action="store_true", help="replace existing files")
    iss.set_defaults(func=cmd_issue)

    show = p.add_parser("show", help="describe a certificate, including the SAE ID it maps to")
    show.add_argument("file", help="a PEM certificate")
    show.set_defaults(func=cmd_show)
