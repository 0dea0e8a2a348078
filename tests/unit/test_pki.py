"""Unit tests for qsdn.pki and qsdn.pki_cli: certificates, files, the SAE ID rule, mutual TLS on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import stat
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qsdn import pki, pki_cli
from qsdn.errors import AccessDeniedError, QsdnError

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
NOW = datetime.now(UTC)


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, cls: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(cls)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("qsdn test CA")


@pytest.fixture(scope="module")
def other_ca() -> pki.Issued:
    return pki.create_ca("someone else's CA")


@pytest.fixture(scope="module")
def node(ca: pki.Issued) -> pki.Issued:
    return pki.issue(ca, "alice", server=True, client=True, dns=["localhost"], ips=["127.0.0.1", "::1"])


@pytest.fixture(scope="module")
def sae(ca: pki.Issued) -> pki.Issued:
    return pki.issue(ca, "sae-A", client=True)


def signed_with_subject(ca: pki.Issued, subject: x509.Name) -> x509.Certificate:
    """A client certificate with an arbitrary subject, which :func:`pki.issue` would not make."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = pki._parse_key(ca.key_pem)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([CLIENT]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


# ------------------------------------------------------------------------------------------ the CA


def test_ca_is_a_self_signed_leaf_only_ca(ca: pki.Issued) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert ca.common_name == "qsdn test CA"
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)
    assert cert.not_valid_before_utc <= datetime.now(UTC)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert len(ca.fingerprint_sha256) == 64


def test_ca_options() -> None:
    ca = pki.create_ca("short", days=30, key="rsa-2048")
    cert = ca.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    leaf = pki.issue(ca, "by-rsa", client=True)
    leaf.certificate.verify_directly_issued_by(cert)


# -------------------------------------------------------------------------------------------- leaves


def test_node_certificate(ca: pki.Issued, node: pki.Issued) -> None:
    cert = node.certificate
    assert node.common_name == "alice"
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [SERVER, CLIENT]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest == (
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    )
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825)
    assert cert.not_valid_before_utc <= datetime.now(UTC) - timedelta(minutes=4)


def test_sae_certificate_is_client_only_without_san(sae: pki.Issued) -> None:
    cert = sae.certificate
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [CLIENT]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_serials_are_random_and_distinct(ca: pki.Issued) -> None:
    serials = {pki.issue(ca, "x", client=True).certificate.serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_rsa_leaf_adds_key_encipherment(ca: pki.Issued) -> None:
    leaf = pki.issue(ca, "rsa", server=True, dns=["localhost"], key="rsa-2048")
    assert ext(leaf.certificate, x509.KeyUsage).value.key_encipherment
    assert leaf.certificate.public_key().key_size == 2048  # type: ignore[union-attr]


def test_not_before_and_days_set_validity(ca: pki.Issued) -> None:
    start = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    cert = pki.issue(ca, "old", client=True, not_before=start, days=10).certificate
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + timedelta(days=10)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "server and/or client"),
        ({"server": True}, "at least one DNS name or IP"),
        ({"client": True, "dns": ["bad_name.example"]}, "DNS name"),
        ({"client": True, "dns": ["-x.example"]}, "DNS name"),
        ({"client": True, "dns": ["h\u00e9.example"]}, "punycode"),
        ({"client": True, "dns": "localhost"}, "not one string"),
        ({"client": True, "ips": ["300.1.1.1"]}, "IP address"),
        ({"client": True, "key": "dsa-1024"}, "key type"),
        ({"client": True, "days": 0}, "days"),
        ({"client": True, "not_before": datetime(2020, 1, 1)}, "timezone-aware"),
    ],
)
def test_issue_refuses(ca: pki.Issued, kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(QsdnError, match=words) as err:
        pki.issue(ca, "leaf", **kwargs)  # type: ignore[arg-type]
    assert err.value.first.tag == "invalid-value"


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb"])
def test_issue_refuses_bad_common_names(ca: pki.Issued, name: str) -> None:
    with pytest.raises(QsdnError, match="common name"):
        pki.issue(ca, name, client=True)


def test_issue_needs_a_ca_with_its_key(ca: pki.Issued, node: pki.Issued) -> None:
    with pytest.raises(QsdnError, match="private key is not loaded"):
        pki.issue(pki.Issued(ca.cert_pem), "x", client=True)
    with pytest.raises(QsdnError, match="not a CA"):
        pki.issue(node, "x", client=True)


def test_repr_never_shows_the_key(node: pki.Issued) -> None:
    for text in (repr(node), str(node), f"{node}"):
        assert "PRIVATE" not in text
        assert node.key_pem.decode() not in text
        assert "alice" in text and node.fingerprint_sha256 in text


def test_issued_refuses_a_key_that_does_not_match(node: pki.Issued, sae: pki.Issued) -> None:
    with pytest.raises(QsdnError, match="does not match"):
        pki.Issued(node.cert_pem, sae.key_pem)
    with pytest.raises(QsdnError, match=r"not a PEM X\.509 certificate"):
        pki.Issued(b"garbage")
    with pytest.raises(QsdnError, match="not a PEM private key"):
        pki.Issued(node.cert_pem, b"garbage")


# --------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_write_pem_modes_and_round_trip(tmp_path: Path, node: pki.Issued) -> None:
    crt, key = tmp_path / "a" / "b" / "alice.crt", tmp_path / "keys" / "alice.key"
    with umask(0):
        pki.write_pem(node, crt, key)
    assert mode(key) == 0o600
    assert mode(crt) == 0o644
    assert crt.read_bytes() == node.cert_pem
    loaded = pki.load_pem(crt, key)
    assert loaded == node
    assert loaded.fingerprint_sha256 == node.fingerprint_sha256
    only_cert = pki.load_pem(crt)
    assert only_cert.key_pem == b"" and only_cert.common_name == "alice"
    assert list(tmp_path.rglob(".*.tmp")) == []


def test_write_pem_tightens_an_existing_key_file(tmp_path: Path, sae: pki.Issued) -> None:
    key = tmp_path / "sae.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    pki.write_pem(sae, tmp_path / "sae.crt", key)
    assert mode(key) == 0o600
    assert key.read_bytes() == sae.key_pem


def test_write_pem_needs_a_key(tmp_path: Path, sae: pki.Issued) -> None:
    with pytest.raises(QsdnError, match="no private key"):
        pki.write_pem(pki.Issued(sae.cert_pem), tmp_path / "x.crt", tmp_path / "x.key")


def test_load_pem_errors(tmp_path: Path, node: pki.Issued, sae: pki.Issued) -> None:
    pki.write_pem(node, tmp_path / "n.crt", tmp_path / "n.key")
    pki.write_pem(sae, tmp_path / "s.crt", tmp_path / "s.key")
    with pytest.raises(QsdnError, match="cannot read"):
        pki.load_pem(tmp_path / "missing.crt")
    with pytest.raises(QsdnError, match=r"n\.crt / .*s\.key: .*does not match"):
        pki.load_pem(tmp_path / "n.crt", tmp_path / "s.key")
    with pytest.raises(QsdnError, match=r"not a PEM X\.509 certificate"):
        pki.load_pem(tmp_path / "n.key")


def test_load_pem_warns_about_a_readable_key(
    tmp_path: Path, sae: pki.Issued, caplog: pytest.LogCaptureFixture
) -> None:
    pki.write_pem(sae, tmp_path / "s.crt", tmp_path / "s.key")
    (tmp_path / "s.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="qsdn.pki"):
        pki.load_pem(tmp_path / "s.crt", tmp_path / "s.key")
    assert "readable by group or others" in caplog.text
    assert "PRIVATE" not in caplog.text


# ------------------------------------------------------------------------------------------- SAE IDs


@pytest.mark.parametrize("sae_id", ["sae-A", "SAE_1", "a", "x" * 64, "urn:example:sae.7", "0-9._:-"])
def test_sae_id_is_the_common_name(ca: pki.Issued, sae_id: str) -> None:
    assert pki.sae_id_of(pki.issue(ca, sae_id, client=True).certificate) == sae_id


@pytest.mark.parametrize("cn", ["sae A", "sae/A", "s\u00e4e", "sae@x", "sae;x", "sae\t", "*"])
def test_sae_id_refuses_bad_characters(ca: pki.Issued, cn: str) -> None:
    with pytest.raises(AccessDeniedError, match="not a valid SAE ID") as err:
        pki.sae_id_of(signed_with_subject(ca, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])))
    assert err.value.first.tag == "access-denied"
    assert isinstance(err.value, QsdnError)


def test_sae_id_needs_exactly_one_common_name(ca: pki.Issued) -> None:
    no_cn = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sae-A")])
    with pytest.raises(AccessDeniedError, match="no subject CommonName"):
        pki.sae_id_of(signed_with_subject(ca, no_cn))
    two = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "sae-A"), x509.NameAttribute(NameOID.COMMON_NAME, "sae-B")]
    )
    with pytest.raises(AccessDeniedError, match="more than one"):
        pki.sae_id_of(signed_with_subject(ca, two))


# ------------------------------------------------------------------------------------- TLS contexts


def test_context_settings(ca: pki.Issued, node: pki.Issued) -> None:
    server = pki.server_context(node, ca.cert_pem)
    client = pki.client_context(ca.cert_pem, node)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for c in tls12:
            assert c["aead"], c["name"]
            assert c["kea"] in ("kx-ecdhe", "kx-dhe"), c["name"]
    assert client.check_hostname and not client.hostname_checks_common_name
    assert pki.server_context(node, ca.cert_pem, require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL


def test_in_memory_keys_go_to_a_private_directory_and_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ca: pki.Issued, node: pki.Issued
) -> None:
    seen: list[tuple[int, int]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None, password: None = None) -> None:
        assert keyfile is not None
        seen.append((mode(Path(keyfile).parent), mode(Path(keyfile))))
        original(self, certfile, keyfile)

    monkeypatch.setattr(pki, "_private_dir", lambda: str(tmp_path))
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    pki.server_context(node, ca.cert_pem)
    pki.client_context(ca.cert_pem, node)
    assert seen == [(0o700, 0o600), (0o700, 0o600)]
    assert list(tmp_path.iterdir()) == []


def test_contexts_from_files(tmp_path: Path, ca: pki.Issued, node: pki.Issued) -> None:
    pki.write_pem(node, tmp_path / "n.crt", tmp_path / "n.key")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    pki.server_context((tmp_path / "n.crt", tmp_path / "n.key"), tmp_path / "ca.crt")
    pki.client_context(tmp_path / "ca.crt", (tmp_path / "n.crt", tmp_path / "n.key"))
    with pytest.raises(QsdnError, match="cannot read"):
        pki.server_context((tmp_path / "nope.crt", tmp_path / "n.key"), tmp_path / "ca.crt")
    with pytest.raises(QsdnError, match="cannot read CA file"):
        pki.client_context(tmp_path / "nope.crt")
    with pytest.raises(QsdnError, match="CA certificate"):
        pki.client_context(b"not a certificate")
    with pytest.raises(QsdnError, match="private key is not loaded"):
        pki.client_context(ca.cert_pem, pki.Issued(node.cert_pem))


# ----------------------------------------------------------------------------- mutual TLS on loopback


class Served:
    def __init__(self, port: int) -> None:
        self.port = port
        self.peers: list[str] = []


@contextlib.asynccontextmanager
async def serve(ctx: ssl.SSLContext) -> AsyncIterator[Served]:
    """A server that answers a line with the SAE ID of the client's certificate (empty without one)."""
    served: Served

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            sae_id = "" if der is None else pki.sae_id_of(x509.load_der_x509_certificate(der))
            served.peers.append(sae_id)
            async with asyncio.timeout(5):
                await reader.readline()
                writer.write(sae_id.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=5)
    served = Served(server.sockets[0].getsockname()[1])
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> bytes:
    """Connect, send a line, return the answer (b"" when the server hung up)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
        try:
            writer.write(b"hello\n")
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def refused(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> bool:
    """True when the server refused the client: a TLS alert, a reset, or a hang-up without an answer."""
    try:
        return await exchange(port, ctx, host) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def pin(ctx: ssl.SSLContext, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx.maximum_version = version
    return ctx


async def test_mtls_handshake_gives_the_sae_id(ca: pki.Issued, node: pki.Issued, sae: pki.Issued) -> None:
    async with serve(pki.server_context(node, ca.cert_pem)) as srv:
        assert await exchange(srv.port, pki.client_context(ca.cert_pem, sae)) == b"sae-A\n"
        assert await exchange(srv.port, pki.client_context(ca.cert_pem, node), "127.0.0.1") == b"alice\n"
        tls12 = pin(pki.client_context(ca.cert_pem, sae), ssl.TLSVersion.TLSv1_2)
        assert await exchange(srv.port, tls12) == b"sae-A\n"
    assert srv.peers == ["sae-A", "alice", "sae-A"]


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_mtls_refuses_bad_clients(
    ca: pki.Issued, other_ca: pki.Issued, node: pki.Issued, version: ssl.TLSVersion
) -> None:
    clients = {
        "no certificate": None,
        "another CA": pki.issue(other_ca, "sae-A", client=True),
        "expired": pki.issue(ca, "sae-A", client=True, not_before=NOW - timedelta(days=10), days=1),
        "not yet valid": pki.issue(ca, "sae-A", client=True, not_before=NOW + timedelta(days=1)),
        "server-only": pki.issue(ca, "sae-A", server=True, dns=["localhost"]),
    }
    async with serve(pki.server_context(node, ca.cert_pem)) as srv:
        for what, cert in clients.items():
            ctx = pin(pki.client_context(ca.cert_pem, cert), version)
            assert await refused(srv.port, ctx), what
    assert srv.peers == []


async def test_client_refuses_a_wrong_server(
    ca: pki.Issued, other_ca: pki.Issued, node: pki.Issued, sae: pki.Issued
) -> None:
    async with serve(pki.server_context(node, ca.cert_pem)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await exchange(srv.port, pki.client_context(ca.cert_pem, sae), "wrong.example")
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(srv.port, pki.client_context(other_ca.cert_pem, sae))
    impostor = pki.issue(other_ca, "alice", server=True, dns=["localhost"])
    client_only = pki.issue(ca, "alice", client=True)
    for cert in (impostor, client_only):
        async with serve(pki.server_context(cert, ca.cert_pem)) as srv:
            with pytest.raises(ssl.SSLCertVerificationError):
                await exchange(srv.port, pki.client_context(ca.cert_pem, sae))
    # a CommonName never names a host (RFC 6125), even without a DNS subjectAltName to prefer
    ip_only = pki.issue(ca, "alice", server=True, ips=["127.0.0.1"])
    async with serve(pki.server_context(ip_only, ca.cert_pem)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await exchange(srv.port, pki.client_context(ca.cert_pem, sae), "alice")
        assert await exchange(srv.port, pki.client_context(ca.cert_pem, sae), "127.0.0.1") == b"sae-A\n"


def relaxed_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client without certificate that offers only ``version`` and checks nothing itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


async def test_server_refuses_old_tls_and_non_aead_ciphers(ca: pki.Issued, node: pki.Issued) -> None:
    async with serve(pki.server_context(node, ca.cert_pem, require_client_cert=False)) as srv:
        assert await exchange(srv.port, relaxed_client(ssl.TLSVersion.TLSv1_2)) == b"\n"  # no SAE ID
        assert await refused(srv.port, relaxed_client(ssl.TLSVersion.TLSv1_1))
        assert await refused(srv.port, relaxed_client(ssl.TLSVersion.TLSv1))
        cbc = relaxed_client(ssl.TLSVersion.TLSv1_2)
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
        assert await refused(srv.port, cbc)


async def test_optional_client_certificate(ca: pki.Issued, node: pki.Issued, sae: pki.Issued) -> None:
    ctx = pki.server_context(node, ca.cert_pem, require_client_cert=False)
    async with serve(ctx) as srv:
        assert await exchange(srv.port, pki.client_context(ca.cert_pem, sae)) == b"sae-A\n"
    assert srv.peers == ["sae-A"]


# ---------------------------------------------------------------------------------------------- lab


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_lab_pki_layout(tmp_path: Path) -> None:
    saes = {"sae-A": "alice", "sae-C": "carol"}
    paths = pki.lab_pki(tmp_path / "pki", "lab CA", ["alice", "bob", "carol"], saes)
    root = (tmp_path / "pki").resolve()
    expected = ["ca.crt", "ca.key"]
    expected += [f"nodes/{n}.{x}" for n in ("alice", "bob", "carol") for x in ("crt", "key")]
    expected += [f"saes/{s}.{x}" for s in saes for x in ("crt", "key")]
    assert list(paths) == expected
    assert all(paths[rel] == root / rel for rel in expected)
    assert sorted(snapshot(root)) == sorted(expected)
    for rel in expected:
        assert mode(paths[rel]) == (0o600 if rel.endswith(".key") else 0o644), rel
    ca = pki.load_pem(paths["ca.crt"], paths["ca.key"])
    assert ca.common_name == "lab CA"
    bob = pki.load_pem(paths["nodes/bob.crt"], paths["nodes/bob.key"]).certificate
    bob.verify_directly_issued_by(ca.certificate)
    assert set(ext(bob, x509.ExtendedKeyUsage).value) == {SERVER, CLIENT}
    san = ext(bob, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    sae_c = pki.load_pem(paths["saes/sae-C.crt"]).certificate
    assert pki.sae_id_of(sae_c) == "sae-C"
    assert list(ext(sae_c, x509.ExtendedKeyUsage).value) == [CLIENT]


def test_lab_pki_is_idempotent(tmp_path: Path) -> None:
    args = (tmp_path, "lab CA", ["alice", "bob"], {"sae-A": "alice"})
    pki.lab_pki(*args)
    first = snapshot(tmp_path)
    pki.lab_pki(*args)
    assert snapshot(tmp_path) == first

    (tmp_path / "saes" / "sae-A.key").unlink()  # a half-written pair is reissued, nothing else
    pki.lab_pki(*args)
    again = snapshot(tmp_path)
    assert again["saes/sae-A.crt"] != first["saes/sae-A.crt"]
    assert {k: v for k, v in again.items() if "sae-A" not in k} == {
        k: v for k, v in first.items() if "sae-A" not in k
    }

    pki.lab_pki(*args, hosts=["node.example", "10.0.0.1"])  # new hosts: new node certificates only
    moved = snapshot(tmp_path)
    assert moved["nodes/alice.crt"] != again["nodes/alice.crt"]
    assert moved["saes/sae-A.crt"] == again["saes/sae-A.crt"]
    assert moved["ca.crt"] == first["ca.crt"]

    (tmp_path / "ca.crt").unlink()  # a new CA: every leaf is reissued under it
    pki.lab_pki(*args)
    fresh = snapshot(tmp_path)
    assert all(fresh[k] != moved[k] for k in fresh if k.endswith(".crt"))
    ca = pki.load_pem(tmp_path / "ca.crt").certificate
    for rel in ("nodes/alice.crt", "nodes/bob.crt", "saes/sae-A.crt"):
        pki.load_pem(tmp_path / rel).certificate.verify_directly_issued_by(ca)


def test_lab_pki_reissues_an_expired_leaf(tmp_path: Path) -> None:
    pki.lab_pki(tmp_path, "lab CA", ["alice"], {})
    ca = pki.load_pem(tmp_path / "ca.crt", tmp_path / "ca.key")
    stale = pki.issue(
        ca,
        "alice",
        server=True,
        client=True,
        dns=["localhost"],
        ips=["127.0.0.1"],
        not_before=NOW - timedelta(days=3),
        days=1,
    )
    pki.write_pem(stale, tmp_path / "nodes" / "alice.crt", tmp_path / "nodes" / "alice.key")
    pki.lab_pki(tmp_path, "lab CA", ["alice"], {})
    assert pki.load_pem(tmp_path / "nodes" / "alice.crt").certificate.not_valid_after_utc > NOW


@pytest.mark.parametrize(
    ("nodes", "saes", "words"),
    [
        (["alice"], {"sae-A": "bob"}, "not one of the lab's nodes"),
        (["alice"], {"alice": "alice"}, "equals a node name"),
        (["alice"], {"sae A": "alice"}, "SAE ID"),
        (["alice", "alice"], {}, "unique"),
        (["al/ice"], {}, "node name"),
        ("alice", {}, "not one string"),
    ],
)
def test_lab_pki_refuses(tmp_path: Path, nodes: list[str], saes: dict[str, str], words: str) -> None:
    with pytest.raises(QsdnError, match=words):
        pki.lab_pki(tmp_path, "lab CA", nodes, saes)
    assert list(tmp_path.iterdir()) == []


async def test_lab_files_make_a_working_mtls_pair(tmp_path: Path) -> None:
    p = pki.lab_pki(tmp_path, "lab CA", ["alice"], {"sae-A": "alice"})
    server = pki.server_context((p["nodes/alice.crt"], p["nodes/alice.key"]), p["ca.crt"])
    client = pki.client_context(p["ca.crt"], (p["saes/sae-A.crt"], p["saes/sae-A.key"]))
    async with serve(server) as srv:
        assert await exchange(srv.port, client, "127.0.0.1") == b"sae-A\n"


# ---------------------------------------------------------------------------------------------- CLI


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qsdn")
    pki_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_cli_init_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert run(["pki", "init", "--dir", d, "--ca-name", "lab CA"]) == 0
    assert "created CA 'lab CA'" in capsys.readouterr().out
    assert mode(tmp_path / "pki" / "ca.key") == 0o600
    ca_pem = (tmp_path / "pki" / "ca.crt").read_bytes()
    argv = ["pki", "init", "--dir", d, "--ca-name", "lab CA", "--node", "alice", "--sae", "sae-A=alice"]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "kept CA" in out and "nodes/alice" in out and "saes/sae-A" in out
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == ca_pem
    assert (tmp_path / "pki" / "saes" / "sae-A.key").exists()


def test_cli_init_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert run(["pki", "init", "--dir", d, "--ca-name", "x", "--node", "a", "--sae", "s=b"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'b'" in err
    with pytest.raises(SystemExit):
        run(["pki", "init", "--dir", d, "--ca-name", "x", "--sae", "no-node"])


def test_cli_issue_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert run(["pki", "init", "--dir", d, "--ca-name", "lab CA"]) == 0
    argv = [
        "pki",
        "issue",
        "--dir",
        d,
        "--name",
        "bob",
        "--server",
        "--client",
        "--dns",
        "a.example",
        "b.example",
    ]
    assert run([*argv, "--dns", "localhost", "--ip", "127.0.0.1", "--days", "30"]) == 0
    assert "issued 'bob'" in capsys.readouterr().out
    bob = pki.load_pem(tmp_path / "nodes" / "bob.crt", tmp_path / "nodes" / "bob.key").certificate
    san = ext(bob, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "b.example", "localhost"]
    assert bob.not_valid_after_utc - bob.not_valid_before_utc == timedelta(days=30)
    assert mode(tmp_path / "nodes" / "bob.key") == 0o600

    assert run(["pki", "issue", "--dir", d, "--name", "sae-B", "--client"]) == 0
    assert (tmp_path / "saes" / "sae-B.crt").exists()
    capsys.readouterr()

    assert run(["pki", "show", str(tmp_path / "saes" / "sae-B.crt")]) == 0
    out = capsys.readouterr().out
    assert "SAE ID:" in out and out.rstrip().endswith("sae-B")
    assert "clientAuth" in out and "status:" in out and "valid" in out
    cert = pki.load_pem(tmp_path / "saes" / "sae-B.crt")
    assert cert.fingerprint_sha256 in out

    assert run(["pki", "show", str(tmp_path / "nodes" / "bob.crt")]) == 0
    out = capsys.readouterr().out
    assert "DNS:a.example" in out and "IP:127.0.0.1" in out and "serverAuth, clientAuth" in out
    assert run(["pki", "show", str(tmp_path / "ca.crt")]) == 0
    out = capsys.readouterr().out
    assert "CA:                  yes (pathlen 0)" in out
    assert "SAE ID:              none (" in out  # "lab CA" has a space


def test_cli_issue_and_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert run(["pki", "issue", "--dir", d, "--name", "x", "--client"]) == 1  # no CA yet
    assert "cannot read" in capsys.readouterr().err
    assert run(["pki", "init", "--dir", d, "--ca-name", "lab CA"]) == 0
    capsys.readouterr()
    cases = [
        (["--name", "x"], "server and/or client"),
        (["--name", "x", "--server"], "at least one DNS name"),
        (["--name", "x", "--client", "--ip", "1.2.3"], "IP address"),
        (["--name", "a/b", "--client"], "--out"),
    ]
    for extra, words in cases:
        assert run(["pki", "issue", "--dir", d, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert run(["pki", "issue", "--dir", d, "--name", "sae-x", "--client"]) == 0
    assert run(["pki", "issue", "--dir", d, "--name", "sae-x", "--client"]) == 1
    assert "--force" in capsys.readouterr().err
    assert run(["pki", "issue", "--dir", d, "--name", "sae-x", "--client", "--force"]) == 0
    out = str(tmp_path / "custom" / "any name")
    assert run(["pki", "issue", "--dir", d, "--name", "any name", "--client", "--out", out]) == 0
    assert pki.load_pem(Path(out + ".crt"), Path(out + ".key")).common_name == "any name"
    capsys.readouterr()

    assert run(["pki", "show", str(tmp_path / "ca.key")]) == 1
    captured = capsys.readouterr()
    assert "not a PEM X.509 certificate" in captured.err
    assert "PRIVATE" not in captured.out + captured.err
    assert run(["pki", "show", str(tmp_path / "missing.crt")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_show_reports_expiry(ca: pki.Issued) -> None:
    old = pki.issue(ca, "sae-old", client=True, not_before=NOW - timedelta(days=10), days=1)
    fields = dict(pki_cli.describe(old.certificate))
    assert fields["status"] == "expired"
    assert fields["SAE ID"] == "sae-old"
    assert fields["key"] == "ECDSA secp256r1"
