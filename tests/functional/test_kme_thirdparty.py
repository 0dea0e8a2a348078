"""Third-party ETSI GS QKD 014 clients against the KME: ``etsi-qkd-014-client`` and ``qkdsec``.

Both are pinned PyPI packages of the tests' environment (pyproject.toml). They talk to two real agents
joined by a PHYS link (the lab of tests/functional/test_kme.py), over mutual TLS, with SAE certificates
from qsdn's own PKI written to files (both libraries use ``requests``, which wants paths). Their calls
are blocking: they run in ``asyncio.to_thread`` (the libraries) or as subprocesses (the command line)
so the in-process agents keep serving.

The clients have bugs of their own; the KME is never weakened to please them:

* ``etsi-qkd-014-client``'s command line exits 0 whatever the KME answered (it prints
  ``Response code : 401`` and returns normally): its output is parsed, its exit code never trusted.
* ``qkdsec``'s ``get_dec_keys(slave_sae_id, ...)`` puts its first argument where ETSI 014 section 5.4
  wants the *master*'s SAE_ID. Used correctly (with the master's ID) it works; ``qkdsec doctor``'s
  round-trip probe instead calls dec_keys with the master's own certificate and the slave's ID, which a
  correct KME refuses (only the slave SAE may fetch a key by key_ID). The doctor is therefore run with
  ``consume_keys=False`` (its ``--no-consume``), the two-SAE round trip is done here, and the refusal of
  the doctor's probe is asserted.
* ``qkdsec doctor`` expects 404 for an unknown key_ID. ETSI 014 defines only 400, 401 and 503 for
  dec_keys; an unknown key_ID is a bad request (400), which is what the KME answers. The doctor reports
  it as a warning, which is asserted as such.
* ``qkdsec``'s client, after a GET then an error answer on one keep-alive connection, keeps that
  connection open even after ``close()`` (the socket stays ESTABLISHED at both ends); its clients here
  send ``Connection: close`` so no TLS connection outlives a test.
* ``qkdsec``'s command line needs its ``cli`` extra (``typer``), which the tests' environment does not
  install; the doctor is driven through its library entry point (``qkdsec.doctor.run_all``), which is
  exactly what ``qkdsec doctor --no-consume`` calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from etsi_qkd_014_client import QKD014Client  # type: ignore[import-untyped]
from etsi_qkd_014_client.data import DataError, DataKeyContainer, DataStatus  # type: ignore[import-untyped]
from qkdsec.client import ETSI014Client, KMEHTTPError, KMENotFoundError  # type: ignore[import-untyped]
from qkdsec.doctor import ProbeStatus, format_json, format_text, run_all  # type: ignore[import-untyped]
from qkdsec.doctor.probes import probe_dec_keys_roundtrip  # type: ignore[import-untyped]

from qsdn.pki import write_pem
from qsdn.yang import SchemaContext
from tests.functional import test_kme as kme_tests
from tests.functional.test_kme import Lab, Pki, running_lab

pytestmark = pytest.mark.asyncio(loop_scope="module")

# test_kme.py's module-scoped PKI fixture (CA, node and SAE certificates), registered here too
pki = kme_tests.pki

SAES = ("sae-a", "sae-b", "sae-evil")
NIL_UUID = "00000000-0000-0000-0000-000000000000"  # the key_ID qkdsec doctor uses for its 404 probe
CLI = str(Path(sys.executable).with_name("qkd014-client"))


@dataclass
class ThirdParty:
    lab: Lab
    root: Path

    def port(self, node: str) -> int:
        return int(self.lab.cfgs[node]["kme"]["port"])

    def files(self, sae: str) -> tuple[str, str]:
        return str(self.root / f"{sae}.crt"), str(self.root / f"{sae}.key")

    @property
    def ca(self) -> str:
        return str(self.root / "ca.crt")

    def etsi(self, node: str, sae: str) -> QKD014Client:
        cert, key = self.files(sae)
        return QKD014Client(f"127.0.0.1:{self.port(node)}", cert, key, self.ca)

    def qkdsec(self, node: str, sae: str | None) -> ETSI014Client:
        return ETSI014Client(
            f"https://127.0.0.1:{self.port(node)}",
            client_cert=self.files(sae) if sae else None,
            verify=self.ca,
            timeout=10.0,
            # qkdsec (over requests) leaves a keep-alive connection open after an error answer even
            # once the client is closed; the KME then holds that TLS connection until the lab stops
            extra_headers={"Connection": "close"},
        )

    def snapshot(self) -> tuple[object, ...]:
        return (self.lab.accounting("alice"), self.lab.accounting("bob"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tp(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, schema: SchemaContext
) -> AsyncIterator[ThirdParty]:
    for sae in SAES:
        write_pem(pki.saes[sae], pki.root / f"{sae}.crt", pki.root / f"{sae}.key")
    async with running_lab(tmp_path_factory.mktemp("thirdparty"), pki, schema, min_bits=40_000) as lab:
        yield ThirdParty(lab, pki.root)


async def _waiting(tp: ThirdParty) -> tuple[int, int]:
    kmes = [tp.lab.agents[n].kme for n in ("alice", "bob")]
    assert kmes[0] is not None and kmes[1] is not None
    return await kmes[0].store.waiting_keys(), await kmes[1].store.waiting_keys()


# --- etsi-qkd-014-client, the library ---------------------------------------------------------------


async def test_etsi_client_library_round_trip(tp: ThirdParty) -> None:
    master, slave = tp.etsi("alice", "sae-a"), tp.etsi("bob", "sae-b")
    code, status = await asyncio.to_thread(master.get_status, "sae-b")
    assert code == 200 and isinstance(status, DataStatus), status
    assert (status.source_kme_id, status.target_kme_id) == ("alice", "bob")
    assert (status.master_sae_id, status.slave_sae_id) == ("sae-a", "sae-b")
    assert (status.key_size, status.min_key_size, status.max_key_size) == (256, 64, 4096)
    assert status.max_sae_id_count == 0 and 0 < status.stored_key_count <= status.max_key_count

    # POST form (any parameter given) and GET form (no parameter: the KME's defaults)
    code, posted = await asyncio.to_thread(master.get_key, "sae-b", number=3, size=512)
    assert code == 200 and isinstance(posted, DataKeyContainer), posted
    code, got = await asyncio.to_thread(master.get_key, "sae-b")
    assert code == 200 and isinstance(got, DataKeyContainer), got
    keys = posted.keys + got.keys
    sizes = [len(base64.b64decode(k.key, validate=True)) for k in keys]
    assert sizes == [64, 64, 64, 32]

    ids = [k.key_id for k in keys]
    code, fetched = await asyncio.to_thread(slave.get_key_with_key_IDs, "sae-a", ids)
    assert code == 200 and isinstance(fetched, DataKeyContainer), fetched
    assert [k.key_id for k in fetched.keys] == ids
    assert [base64.b64decode(k.key) for k in fetched.keys] == [base64.b64decode(k.key) for k in keys]

    # once only
    code, err = await asyncio.to_thread(slave.get_key_with_key_IDs, "sae-a", ids[:1])
    assert code == 400 and isinstance(err, DataError)
    assert err.message == f"key_ID {ids[0]} is unknown or already delivered"
    assert await _waiting(tp) == (0, 0)


async def test_etsi_client_library_wrong_sae_is_refused(tp: ThirdParty) -> None:
    evil_at_alice, evil_at_bob = tp.etsi("alice", "sae-evil"), tp.etsi("bob", "sae-evil")
    code, err = await asyncio.to_thread(evil_at_alice.get_status, "sae-b")
    assert code == 401 and isinstance(err, DataError), err
    assert err.message == "SAE sae-evil is not authorised to get keys for slave SAE sae-b at KME alice"
    before = tp.snapshot()
    code, err = await asyncio.to_thread(evil_at_alice.get_key, "sae-b", number=1)
    assert code == 401 and isinstance(err, DataError)
    assert tp.snapshot() == before  # a refused enc_keys consumes nothing

    code, made = await asyncio.to_thread(tp.etsi("alice", "sae-a").get_key, "sae-b", number=1)
    assert code == 200 and isinstance(made, DataKeyContainer)
    kid = made.keys[0].key_id
    # neither another SAE nor the master itself can fetch the slave's key by key_ID
    code, err = await asyncio.to_thread(evil_at_bob.get_key_with_key_IDs, "sae-a", [kid])
    assert code == 401 and isinstance(err, DataError)
    assert err.message == "SAE sae-evil is not authorised to get keys of master SAE sae-a at KME bob"
    code, err = await asyncio.to_thread(tp.etsi("bob", "sae-a").get_key_with_key_IDs, "sae-a", [kid])
    assert code == 401 and isinstance(err, DataError)
    # the refusals left the key for its slave
    code, got = await asyncio.to_thread(tp.etsi("bob", "sae-b").get_key_with_key_IDs, "sae-a", [kid])
    assert code == 200 and isinstance(got, DataKeyContainer)
    assert got.keys[0].key == made.keys[0].key


# --- etsi-qkd-014-client, the command line ----------------------------------------------------------


async def _cli(tp: ThirdParty, node: str, sae: str, *args: str) -> tuple[int, str]:
    """Run ``qkd014-client``; return the HTTP code it printed and its output (its exit code is useless)."""
    cert, key = tp.files(sae)
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *("-H", f"127.0.0.1:{tp.port(node)}", "-c", cert, "-k", key, "-r", tp.ca),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    m = re.match(r"Response code : (\d{3})\n", text)
    assert m, (proc.returncode, text, err.decode())
    return int(m.group(1)), text


def _cli_keys(text: str) -> list[tuple[str, bytes]]:
    return [
        (kid, base64.b64decode(key, validate=True))
        for kid, key in re.findall(r"^Key id : (\S+)\nKey : (\S+)$", text, flags=re.M)
    ]


async def test_etsi_client_cli_round_trip_and_errors(tp: ThirdParty) -> None:
    code, text = await _cli(tp, "alice", "sae-a", "get_status", "sae-b")
    assert code == 200, text
    assert "master_SAE_ID : sae-a\n" in text and "target_KME_ID : bob\n" in text

    code, text = await _cli(tp, "alice", "sae-a", "get_key", "sae-b")  # GET enc_keys, KME defaults
    assert code == 200, text
    [(kid, key)] = _cli_keys(text)
    assert len(key) == 32

    code, text = await _cli(tp, "bob", "sae-b", "get_key_with_id", kid, "sae-a")
    assert code == 200, text
    assert _cli_keys(text) == [(kid, key)]

    # errors: the command line returns normally after printing them; only its output tells
    code, text = await _cli(tp, "bob", "sae-b", "get_key_with_id", kid, "sae-a")
    assert code == 400 and f"Message : key_ID {kid} is unknown or already delivered\n" in text
    code, text = await _cli(tp, "alice", "sae-evil", "get_key", "sae-b")
    assert code == 401 and "Message : SAE sae-evil is not authorised" in text
    assert _cli_keys(text) == []


# --- qkdsec doctor -----------------------------------------------------------------------------------


async def test_qkdsec_doctor_no_consume_passes(tp: ThirdParty) -> None:
    before, waiting = tp.snapshot(), await _waiting(tp)
    with tp.qkdsec("alice", "sae-a") as client:
        report = await asyncio.to_thread(
            run_all, client, slave_sae_id="sae-b", consume_keys=False, latency_samples=3
        )
    results = {r.name: r for r in report.results}
    got = {name: r.status for name, r in results.items()}
    assert got == {
        "reachability": ProbeStatus.PASS,  # TLS handshake with mutual authentication, and status
        "status_fields": ProbeStatus.PASS,  # every ETSI 014 status field, right types, nothing else
        "enc_keys_get": ProbeStatus.SKIP,
        "enc_keys_post": ProbeStatus.SKIP,
        "enc_keys_caps": ProbeStatus.SKIP,
        "extensions_accepted": ProbeStatus.SKIP,
        "dec_keys_roundtrip": ProbeStatus.SKIP,  # done below, by the slave SAE at the other KME
        "error_contract_404": ProbeStatus.WARN,  # qkdsec wants 404; ETSI 014 says 400 (asserted)
        "error_contract_400": ProbeStatus.PASS,  # size 257 is refused
        "latency": ProbeStatus.PASS,
    }, format_text(report, use_rich=False)
    assert results["error_contract_404"].details == {"http_status": 400}
    assert report.passed
    assert "Verdict: CONFORMANT" in format_text(report, use_rich=False)
    assert '"passed": true' in format_json(report)
    # the probes it ran consumed no key anywhere
    assert tp.snapshot() == before and await _waiting(tp) == waiting


async def test_qkdsec_doctor_fails_a_wrong_or_missing_certificate(tp: ThirdParty) -> None:
    for sae, reason in (
        ("sae-evil", r"KMEHTTPError: KME returned HTTP 401: SAE sae-evil"),
        (None, r"SSLError|ConnectionError"),
    ):
        with tp.qkdsec("alice", sae) as client:
            report = await asyncio.to_thread(
                run_all, client, slave_sae_id="sae-b", consume_keys=False, latency_samples=1
            )
        assert not report.passed
        [only] = report.results  # the doctor stops at reachability
        assert only.name == "reachability" and only.status == ProbeStatus.FAIL
        assert re.search(reason, only.summary), only.summary


async def test_qkdsec_doctor_round_trip_probe_is_refused(tp: ThirdParty) -> None:
    """The doctor's own round trip reads dec_keys with the master's certificate: the KME must refuse it."""
    with tp.qkdsec("alice", "sae-a") as client:
        result = await asyncio.to_thread(probe_dec_keys_roundtrip, client, "sae-b")
    assert result.status == ProbeStatus.FAIL
    kid = result.details["key_id"]
    # sae-a calling /sae-b/dec_keys asks for keys whose master is sae-b: this key_ID is not one of them
    assert result.summary == (
        f"dec_keys did not return the requested key_ID: KME returned HTTP 400: "
        f"key_ID {kid} is unknown or already delivered"
    )
    # naming itself as the master does not help: sae-a is not a slave of sae-a
    with tp.qkdsec("alice", "sae-a") as client, pytest.raises(KMEHTTPError) as info:
        await asyncio.to_thread(client.get_dec_keys, "sae-a", key_ids=[kid])
    assert info.value.status_code == 401
    # the refusals consumed nothing: the slave gets the key at its KME, once
    with tp.qkdsec("bob", "sae-b") as client:
        keys = await asyncio.to_thread(client.get_dec_keys, "sae-a", key_ids=[kid])
        assert [(k.key_id, k.size_bits) for k in keys] == [(kid, 256)]
        with pytest.raises(KMEHTTPError) as info:
            await asyncio.to_thread(client.get_dec_keys, "sae-a", key_ids=[kid])
        assert info.value.status_code == 400


# --- qkdsec, the client library: the two-SAE round trip ----------------------------------------------


@pytest.mark.parametrize(
    ("master_node", "master", "slave_node", "slave"),
    [("alice", "sae-a", "bob", "sae-b"), ("bob", "sae-b", "alice", "sae-a")],
    ids=["deliver", "draw"],
)
async def test_qkdsec_two_sae_round_trip(
    tp: ThirdParty, master_node: str, master: str, slave_node: str, slave: str
) -> None:
    with tp.qkdsec(master_node, master) as m, tp.qkdsec(slave_node, slave) as s:
        status = await asyncio.to_thread(m.status, slave)
        assert (status.master_sae_id, status.slave_sae_id) == (master, slave)
        assert (status.source_kme_id, status.target_kme_id) == (master_node, slave_node)
        posted = await asyncio.to_thread(m.get_enc_keys, slave, number=2, size=256, method="POST")
        got = await asyncio.to_thread(m.get_enc_keys, slave, number=2, size=128, method="GET")
        opt = await asyncio.to_thread(
            m.get_enc_keys, slave, number=1, size=64, extension_optional=[{"x-qkdsec": True}]
        )
        keys = [*posted, *got, *opt]
        assert [k.size_bits for k in keys] == [256, 256, 128, 128, 64]
        # qkdsec calls this argument slave_sae_id; ETSI 014 puts the master's SAE_ID in the path
        back = await asyncio.to_thread(s.get_dec_keys, master, key_ids=[k.key_id for k in keys])
        assert [(k.key_id, k.key) for k in back] == [(k.key_id, k.key) for k in keys]

        # a second request for the same key_ID: 400 (ETSI 014), not the 404 qkdsec expects
        with pytest.raises(KMEHTTPError) as info:
            await asyncio.to_thread(s.get_dec_keys, master, key_ids=[keys[0].key_id])
        assert info.value.status_code == 400 and not isinstance(info.value, KMENotFoundError)
        assert info.value.message == f"key_ID {keys[0].key_id} is unknown or already delivered"
        # an unknown key_ID (the doctor's): 400 too
        with pytest.raises(KMEHTTPError) as info:
            await asyncio.to_thread(s.get_dec_keys, master, key_ids=[NIL_UUID])
        assert info.value.status_code == 400 and not isinstance(info.value, KMENotFoundError)
        assert info.value.message == f"key_ID {NIL_UUID} is unknown or already delivered"
        # caps and sizes, refused before any key is drawn
        before = tp.snapshot()
        for kw, message in (
            ({"number": status.max_key_per_request + 1}, r"exceeds max_key_per_request 128$"),
            ({"size": 257}, r"^size 257 is not a multiple of 8$"),
        ):
            with pytest.raises(KMEHTTPError) as info:
                await asyncio.to_thread(m.get_enc_keys, slave, **kw)
            assert info.value.status_code == 400 and re.search(message, info.value.message)
        assert tp.snapshot() == before
    assert await _waiting(tp) == (0, 0)


async def test_qkdsec_doctor_command_no_consume(tp: ThirdParty) -> None:
    """The real `qkdsec doctor --no-consume` command line against the KME (JSON report)."""
    before = tp.snapshot()
    cert, key = tp.files("sae-a")
    exe = str(Path(sys.executable).with_name("qkdsec"))
    proc = await asyncio.create_subprocess_exec(
        exe, "doctor", f"https://127.0.0.1:{tp.port('alice')}", "--slave-sae-id", "sae-b",
        "--cert", cert, "--key", key, "--ca-cert", tp.ca, "--no-consume", "--samples", "2", "--format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    report = json.loads(out.decode()[out.decode().index("{") :])
    statuses = {r["name"]: r["status"] for r in report["results"]}
    assert statuses["reachability"] == "pass", err.decode()
    assert statuses["status_fields"] == "pass"
    assert statuses["error_contract_400"] == "pass"
    assert statuses["error_contract_404"] == "warn"  # qkdsec expects 404; ETSI 014 defines 400
    assert report["passed"] is True
    assert tp.snapshot() == before  # nothing consumed
