"""qsdn's own PKI: one CA, node (KME) certificates, SAE certificates, and the TLS contexts that use them.

Everything is generated with the ``cryptography`` package; nothing shells out to ``openssl``.

Certificates
------------
* **CA** (:func:`create_ca`): self-signed, ``basicConstraints`` CA:TRUE with pathlen 0 (it signs leaves
  only), ``keyUsage`` keyCertSign and cRLSign, a subject key identifier. Both critical extensions are
  marked critical.
* **Leaf** (:func:`issue`): ``basicConstraints`` CA:FALSE, ``keyUsage`` digitalSignature (plus
  keyEncipherment for RSA keys), ``extendedKeyUsage`` serverAuth and/or clientAuth, a
  ``subjectAltName`` with the DNS names and IP addresses given, authority and subject key identifiers and
  a random 159-bit serial. A server certificate must name at least one host: clients check the host name
  against the subjectAltName only, never against the CommonName (RFC 6125).
* Keys are ECDSA P-256 (``"ec-p256"``, the default) or RSA 2048 (``"rsa-2048"``); signatures use SHA-256.
  Unless ``not_before`` is given, validity starts five minutes in the past to absorb clock skew between
  nodes, and lasts ``days`` days from there.

Identities
----------
**SAE ID mapping** (ETSI GS QKD 014 requires the KME to authenticate the SAE; qsdn does it with TLS client
certificates): the SAE ID of a client certificate is the value of its subject's CommonName, taken
verbatim. It must be a valid SAE ID: 1 to 64 characters from ``A-Z a-z 0-9 . _ : -``. A certificate
without a CommonName, with more than one, or whose CommonName is not a valid SAE ID maps to no SAE and
:func:`sae_id_of` raises an access-denied :class:`~qsdn.errors.AccessDeniedError`. Nothing in a request
body or header ever takes part in the mapping. The certificate must of course first have been verified by
the TLS layer against the network's CA (:func:`server_context` does that, including its validity dates
and its clientAuth extended key usage).

A KME's identity is its node certificate: CommonName = node name, subjectAltName = the hosts it serves
on, extended key usage serverAuth and clientAuth (it is the client of its peers on the relay channel).
:func:`lab_pki` refuses an SAE ID equal to a node name, so the two kinds of identity never collide under
one CA.

TLS
---
:func:`server_context` and :func:`client_context` accept TLS 1.2 and 1.3 only; for TLS 1.2 only
ECDHE/DHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); no renegotiation; X.509 strict
verification; only the given CA is trusted (never the system store). The server requires a client
certificate unless told otherwise. ``ssl`` can only load a certificate chain from files: when given an
:class:`Issued` in memory, the key is written with mode 0600 into a fresh private (0700) directory,
on ``/dev/shm`` (memory, not disk) when it exists, loaded, and the directory is removed before the
function returns.

No key material is ever logged; :class:`Issued` keeps its key out of ``repr``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qsdn.errors import AccessDeniedError, QsdnError

log = logging.getLogger(__name__)

__all__ = [
    "KEY_TYPES",
    "SAE_ID_RE",
    "Issued",
    "client_context",
    "create_ca",
    "issue",
    "lab_pki",
    "load_pem",
    "sae_id_of",
    "server_context",
    "write_pem",
]

KEY_TYPES = ("ec-p256", "rsa-2048")
SAE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""A valid SAE ID (and, in :func:`lab_pki`, node name): 1..64 characters of ``[A-Za-z0-9._:-]``."""

# TLS 1.2 suites: forward secret key exchange, AEAD only. TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS"
BACKDATE = timedelta(minutes=5)

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _invalid(message: str, path: str | None = None) -> QsdnError:
    return QsdnError(message, tag="invalid-value", path=path)


@dataclass(frozen=True, repr=False)
class Issued:
    """A certificate and its private key, both PEM; ``key_pem`` is ``b""`` when only the certificate is known.

    ``repr`` shows the subject and fingerprint, never the key. Construction checks that the certificate
    parses and, when a key is given, that it is the certificate's key.
    """

    cert_pem: bytes
    key_pem: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        cert = self.certificate
        if self.key_pem:
            key = _parse_key(self.key_pem)
            if _spki(key.public_key()) != _spki(cert.public_key()):
                raise _invalid(f"certificate {self.common_name!r}: the private key does not match it")

    def __repr__(self) -> str:
        key = ", with key" if self.key_pem else ""
        return f"Issued(common_name={self.common_name!r}, sha256={self.fingerprint_sha256}{key})"

    @cached_property
    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError:
            raise _invalid("not a PEM X.509 certificate") from None

    @property
    def common_name(self) -> str:
        """The subject's (first) CommonName, ``""`` if it has none."""
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""

    @property
    def fingerprint_sha256(self) -> str:
        """SHA-256 of the DER certificate, lower-case hex without separators."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()


# --------------------------------------------------------------------------------------------- keys


def _new_key(key: str) -> _PrivateKey:
    if key == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise _invalid(f"key type {key!r} is not supported (use one of {', '.join(KEY_TYPES)})")


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _parse_key(pem: bytes) -> _PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise _invalid("encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid("not a PEM private key (or an unsupported one)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise _invalid(f"{type(key).__name__} keys are not supported (ECDSA or RSA only)")
    return key


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ------------------------------------------------------------------------------------------- checks


def _check_name(common_name: str, what: str = "common name") -> None:
    if not 1 <= len(common_name) <= 64:
        raise _invalid(f"{what} {common_name!r}: must be 1 to 64 characters (RFC 5280 ub-common-name)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in common_name):
        raise _invalid(f"{what} {common_name!r}: control characters are not allowed")


def _check_days(days: int) -> None:
    if days < 1:
        raise _invalid(f"days {days!r}: must be a whole number of days, at least 1")


def _check_dns(name: str) -> None:
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise _invalid(f"DNS name {name!r}: not a valid host name (ASCII labels; use punycode for IDNs)")


def _check_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _invalid(f"IP address {text!r}: not a valid IPv4 or IPv6 address") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------- issuing


def create_ca(common_name: str, *, days: int = 3650, key: str = "ec-p256") -> Issued:
    """A new self-signed CA that signs leaf certificates only (pathlen 0)."""
    _check_name(common_name, "CA name")
    _check_days(days)
    priv = _new_key(key)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(priv.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(priv, hashes.SHA256())
    )
    log.debug("created CA %r, serial %x", common_name, cert.serial_number)
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(priv))


def issue(
    ca: Issued,
    common_name: str,
    *,
    server: bool = False,
    client: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 825,
    key: str = "ec-p256",
    not_before: datetime | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca`` for ``server`` and/or ``client`` authentication.

    ``not_before`` (timezone-aware) sets the start of validity; tests use it for expired and
    not-yet-valid certificates.
    """
    _check_name(common_name)
    _check_days(days)
    if not (server or client):
        raise _invalid(f"certificate {common_name!r}: choose server and/or client use")
    if isinstance(dns, str) or isinstance(ips, str):
        raise _invalid(f"certificate {common_name!r}: dns and ips are sequences of names, not one string")
    for d in dns:
        _check_dns(d)
    addresses = [_check_ip(i) for i in ips]
    if server and not (dns or ips):
        raise _invalid(
            f"certificate {common_name!r}: a server certificate needs at least one DNS name or IP address"
        )
    if not ca.key_pem:
        raise _invalid(f"CA {ca.common_name!r}: its private key is not loaded")
    ca_cert = ca.certificate
    if not _is_ca(ca_cert):
        raise _invalid(f"{ca.common_name!r} is not a CA certificate (basicConstraints CA:FALSE or absent)")
    ca_key = _parse_key(ca.key_pem)
    if not_before is None:
        start = _now() - BACKDATE
    elif not_before.tzinfo is None:
        raise _invalid(f"certificate {common_name!r}: not_before must be timezone-aware")
    else:
        start = not_before

    priv = _new_key(key)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(priv, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(priv.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if dns or addresses:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(a) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    log.debug("issued %r by %r, serial %x", common_name, ca.common_name, cert.serial_number)
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(priv))


# ------------------------------------------------------------------------------------------- files


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file created with ``mode``, then rename it."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; never widened beyond mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_pem(issued: Issued, cert_path: Path, key_path: Path) -> None:
    """Write the certificate (mode 0644) and the key (mode 0600, created so by ``os.open``).

    Parent directories are created. Each file is replaced atomically; the key is written first.
    """
    if not issued.key_pem:
        raise _invalid(f"certificate {issued.common_name!r}: no private key to write", str(key_path))
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(key_path, issued.key_pem, 0o600)
        _write_atomic(cert_path, issued.cert_pem, 0o644)
    except OSError as exc:
        raise QsdnError(f"cannot write {exc.filename or cert_path}: {exc.strerror or exc}") from None
    log.debug("wrote certificate %r to %s (key %s)", issued.common_name, cert_path, key_path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise QsdnError(f"cannot read {path}: {exc.strerror or exc}", tag="invalid-value") from None


def load_pem(cert_path: Path, key_path: Path | None = None) -> Issued:
    """Load a certificate and optionally its key; the key must match the certificate."""
    cert_pem = _read(cert_path)
    key_pem = b""
    if key_path is not None:
        key_pem = _read(key_path)
        with contextlib.suppress(OSError):
            if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
                log.warning("private key %s is readable by group or others (chmod 600)", key_path)
    try:
        return Issued(cert_pem, key_pem)
    except QsdnError as exc:
        where = f"{cert_path}" if key_path is None else f"{cert_path} / {key_path}"
        raise _invalid(f"{where}: {exc.first.message}") from None


# --------------------------------------------------------------------------------------- identities


def sae_id_of(cert: x509.Certificate) -> str:
    """The ETSI GS QKD 014 SAE ID a (verified) client certificate stands for: its subject CommonName.

    Raises :class:`~qsdn.errors.AccessDeniedError` (tag access-denied) when the subject has no
    CommonName, more than one, or one that is not a valid SAE ID (1..64 chars of ``[A-Za-z0-9._:-]``).
    ETSI GS QKD 014 answers that with 401. On a server made with :func:`server_context` the certificate is
    ``x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))``, with ``ssl_object`` from
    ``transport.get_extra_info("ssl_object")`` (aiohttp: ``request.transport``).
    """
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise AccessDeniedError("client certificate has no subject CommonName, so no SAE ID")
    if len(attrs) > 1:
        raise AccessDeniedError("client certificate has more than one subject CommonName")
    value = attrs[0].value
    if not isinstance(value, str) or not SAE_ID_RE.fullmatch(value):
        shown = value if isinstance(value, str) else "<binary>"
        raise AccessDeniedError(
            f"client certificate CommonName {shown[:80]!r} is not a valid SAE ID "
            "(1 to 64 characters of A-Z a-z 0-9 . _ : -)"
        )
    return value


# --------------------------------------------------------------------------------------------- TLS


def _private_dir() -> str | None:
    """Where temporary key files go: ``/dev/shm`` (memory) when usable, else the default temp dir."""
    shm = "/dev/shm"  # noqa: S108 - only a parent; the files go in a fresh 0700 mkdtemp directory
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def _chain_files(cert: Issued | tuple[Path, Path]) -> Iterator[tuple[str, str]]:
    if isinstance(cert, tuple):
        cert_path, key_path = cert
        yield str(cert_path), str(key_path)
        return
    if not cert.key_pem:
        raise _invalid(f"certificate {cert.common_name!r}: its private key is not loaded")
    with tempfile.TemporaryDirectory(prefix="qsdn-tls-", dir=_private_dir()) as d:
        paths = []
        for name, data in (("cert.pem", cert.cert_pem), ("key.pem", cert.key_pem)):
            p = os.path.join(d, name)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(p)
        yield paths[0], paths[1]


def _load_chain(ctx: ssl.SSLContext, cert: Issued | tuple[Path, Path]) -> None:
    what = f"{cert[0]} / {cert[1]}" if isinstance(cert, tuple) else f"certificate {cert.common_name!r}"
    try:
        with _chain_files(cert) as (cert_file, key_file):
            ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise _invalid(f"{what}: cannot load the certificate and key ({exc.reason or exc})") from None
    except OSError as exc:
        raise _invalid(f"{what}: cannot read {exc.filename or ''}: {exc.strerror or exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca_pem: bytes | Path) -> None:
    try:
        if isinstance(ca_pem, bytes):
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        else:
            ctx.load_verify_locations(cafile=str(ca_pem))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise _invalid(f"cannot load the CA certificate(s): {getattr(exc, 'reason', None) or exc}") from None
    except OSError as exc:
        raise _invalid(f"cannot read CA file {exc.filename}: {exc.strerror or exc}") from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT


def server_context(
    cert: Issued | tuple[Path, Path], ca_pem: bytes | Path, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A TLS server context: ``cert`` is the server's identity, ``ca_pem`` verifies client certificates.

    With ``require_client_cert`` (the default) a client without a valid certificate fails the handshake;
    without it, a client certificate is still asked for and verified when offered.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert)
    _load_ca(ctx, ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_pem: bytes | Path, cert: Issued | tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A TLS client context that verifies the server against ``ca_pem`` and its host name (SAN only).

    ``cert`` is the client's own certificate for mutual TLS.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    _harden(ctx)
    ctx.hostname_checks_common_name = False
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca_pem)
    if cert is not None:
        _load_chain(ctx, cert)
    return ctx


# --------------------------------------------------------------------------------------------- lab


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def _fits(
    leaf: Issued,
    ca: Issued,
    common_name: str,
    eku: set[x509.ObjectIdentifier],
    dns: Sequence[str],
    ips: Sequence[str],
    now: datetime,
) -> bool:
    """Whether an existing leaf still serves: signed by ``ca``, same name, uses and hosts, still valid."""
    cert = leaf.certificate
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return (
        leaf.common_name == common_name
        and _eku(cert) == eku
        and _san(cert) == (set(dns), {str(ipaddress.ip_address(i)) for i in ips})
        and cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    )


def lab_pki(
    root: Path,
    ca_name: str,
    nodes: Sequence[str],
    saes: Mapping[str, str],
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
) -> dict[str, Path]:
    """A lab's PKI under ``root``: one CA, a server+client certificate per node, a client one per SAE.

    Layout: ``ca.crt``, ``ca.key``, ``nodes/<node>.crt|.key`` (CN = node name, SAN = ``hosts``),
    ``saes/<sae>.crt|.key`` (CN = SAE ID). ``saes`` maps each SAE ID to the node whose KME serves it;
    node names and SAE IDs follow the SAE ID rule, and no SAE ID may equal a node name.

    Idempotent: an existing CA is reused, and an existing leaf is kept while it is still signed by that
    CA, matches its key, names and uses, and has not expired; anything else is (re)issued. Returns the
    absolute path of every file, keyed by its path relative to ``root`` (``"ca.crt"``,
    ``"nodes/alice.key"``, ``"saes/sae-a.crt"``...).
    """
    if isinstance(nodes, str):
        raise _invalid("nodes must be a sequence of node names, not one string")
    for n in nodes:
        if not SAE_ID_RE.fullmatch(n):
            raise _invalid(f"node name {n!r}: must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    if len(set(nodes)) != len(nodes):
        raise _invalid("node names must be unique")
    for sae, node in saes.items():
        if not SAE_ID_RE.fullmatch(sae):
            raise _invalid(f"SAE ID {sae!r}: must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
        if node not in nodes:
            raise _invalid(f"SAE {sae!r}: its node {node!r} is not one of the lab's nodes")
        if sae in nodes:
            raise _invalid(f"SAE ID {sae!r} equals a node name; the two identities must differ")
    dns = [h for h in hosts if not _is_ip(h)]
    ips = [h for h in hosts if _is_ip(h)]
    if nodes and not hosts:
        raise _invalid("hosts: node certificates need at least one host name or address")

    root = root.resolve()
    paths: dict[str, Path] = {}
    ca_crt, ca_key = root / "ca.crt", root / "ca.key"
    if ca_crt.exists() and ca_key.exists():
        ca = load_pem(ca_crt, ca_key)
        if not _is_ca(ca.certificate):
            raise _invalid(f"{ca_crt}: not a CA certificate")
        if ca.common_name != ca_name:
            log.warning(
                "lab PKI: keeping the existing CA %r in %s (asked for %r)", ca.common_name, root, ca_name
            )
    else:
        ca = create_ca(ca_name)
        write_pem(ca, ca_crt, ca_key)
        log.info("lab PKI: new CA %r in %s", ca_name, root)
    paths["ca.crt"], paths["ca.key"] = ca_crt, ca_key

    now = _now()
    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    wanted = [("nodes", n, True, both, dns, ips) for n in nodes]
    wanted += [("saes", s, False, {ExtendedKeyUsageOID.CLIENT_AUTH}, [], []) for s in saes]
    for folder, name, server, eku, d, i in wanted:
        crt, key = root / folder / f"{name}.crt", root / folder / f"{name}.key"
        keep = False
        if crt.exists() and key.exists():
            try:
                keep = _fits(load_pem(crt, key), ca, name, eku, d, i, now)
            except QsdnError:
                keep = False
        if not keep:
            write_pem(issue(ca, name, server=server, client=True, dns=d, ips=i), crt, key)
        paths[f"{folder}/{name}.crt"], paths[f"{folder}/{name}.key"] = crt, key
    return paths


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
