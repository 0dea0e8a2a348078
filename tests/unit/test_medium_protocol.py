"""The medium service's wire protocol: framing, the message codec, link physics, and the service itself."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from typing import Any

import pytest

from agent.drivers.bbm92 import BasisAnnounce, BlockStart, Confirm, ParityAnswer, ParityQuery, Verify
from agent.drivers.emulated_entanglement import Discarded, PurifyBit, PurifyRequest, SwapOutcome
from agent.drivers.medium_service import (
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameError,
    MediumServer,
    decode_message,
    encode_frame,
    encode_message,
    link_physics,
)
from agent.drivers.quantum_medium import Basis
from qsdn.errors import ConfigError
from qsdn.physics.entanglement import attempt_time_s, multiplexed_probability
from qsdn.physics.loss import transmittance

# -- framing --------------------------------------------------------------------------------------------


def test_frames_round_trip_whatever_the_chunking() -> None:
    objs = [{"op": "hello", "id": 1, "node": "a"}, {"event": "round", "session": "s", "round": 3}]
    data = b"".join(encode_frame(o) for o in objs)
    assert data[:4] == struct.pack(">I", len(json.dumps(objs[0], separators=(",", ":"))))
    for step in (1, 3, 7, len(data)):
        dec = FrameDecoder()
        got: list[dict[str, Any]] = []
        for i in range(0, len(data), step):
            got += dec.feed(data[i : i + step])
        assert got == objs


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (struct.pack(">I", 0), "not within"),
        (struct.pack(">I", MAX_FRAME_BYTES + 1), "not within"),
        (struct.pack(">I", 3) + b"\xff\xfe\xfd", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"[]", "not a JSON object"),
    ],
)
def test_bad_frames_are_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        FrameDecoder().feed(data)


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    with pytest.raises(FrameError):
        FrameDecoder(max_bytes=16).feed(struct.pack(">I", 17))
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame({"x": "y" * MAX_FRAME_BYTES})


# -- message codec --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        SwapOutcome("r", (0, 4), (1, 7), True, 3),
        Discarded("r", (1, 2)),
        PurifyRequest((0, 1), (0, 2), 0, 1),
        PurifyBit((0, 1), 0),
        BasisAnnounce((0, 9), Basis.X),
        BlockStart(2, ((0, 1), (0, 5)), b"\x00\x01seed-bytes-16..", (1, 0, 1)),
        ParityQuery(2, ((1, 2, 3), (4,))),
        ParityAnswer(2, (0, 1)),
        Verify(2, b"\x99" * 8),
        Confirm(2, False),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_engine_message_survives_the_wire(message: object) -> None:
    wire = json.loads(json.dumps(encode_message(message)))
    assert decode_message(wire) == message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"t": "Bogus", "f": {}}, "unknown message type"),
        ({"t": "PurifyBit", "f": {"keep": [0, 1]}}, "fields"),
        ({"t": "BasisAnnounce", "f": {"pair_id": [0, 1], "basis": "Y"}}, "basis"),
        ({"t": "Verify", "f": {"block_no": 1, "tag": {"$x": 1}}}, "unexpected object"),
        ([1, 2], "is {'t'"),
    ],
)
def test_malformed_messages_are_refused(data: Any, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        decode_message(data)


def test_only_protocol_messages_are_encoded() -> None:
    with pytest.raises(FrameError, match="not a message"):
        encode_message({"key": b"secret"})


# -- link physics ---------------------------------------------------------------------------------------


def test_link_physics_is_barrett_kok_over_the_links_loss() -> None:
    req = {
        "op": "hop",
        "link_id": "l1",
        "length_km": 50.0,
        "loss_db": 20.0,
        "modes": 10,
        "heralding": "barrett-kok",
        "initial_fidelity": 0.98,
    }
    p, attempt_s, fidelity = link_physics(req).probability()
    assert p == pytest.approx(multiplexed_probability(0.5 * transmittance(20.0), 10))
    assert attempt_s == pytest.approx(attempt_time_s(50.0)) and fidelity == 0.98
    # Without loss_db: 0.2 dB/km.
    p2, _, _ = link_physics({**req, "loss_db": None}).probability()
    assert p2 == pytest.approx(multiplexed_probability(0.5 * transmittance(10.0), 10))
    with pytest.raises(ConfigError, match="alpha"):
        link_physics({**req, "heralding": "single-click"}).probability()
    with pytest.raises(ConfigError, match="modes"):
        link_physics({**req, "modes": 0})


# -- the service ----------------------------------------------------------------------------------------


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.dec = FrameDecoder()
        self.frames: list[dict[str, Any]] = []
        self.ids = 0

    async def next(self, pred: Any) -> dict[str, Any]:
        while True:
            for i, f in enumerate(self.frames):
                if pred(f):
                    return self.frames.pop(i)
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "medium closed the connection"
            self.frames += self.dec.feed(data)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        rid = self.ids
        self.writer.write(encode_frame({"op": op, "id": rid, **fields}))
        return await self.next(lambda f: f.get("id") == rid)


HOP = {
    "session": "s1",
    "hop": 0,
    "path": ["a", "b"],
    "link_id": "l1",
    "length_km": 2.0,
    "loss_db": 1.0,
    "modes": 4,
    "heralding": "barrett-kok",
    "initial_fidelity": 1.0,
}


async def _connect(server: MediumServer, node: str) -> _Client:
    c = _Client(*await asyncio.open_connection("127.0.0.1", server.port))
    reply = await c.call("hello", node=node, memory={"coherence_time_s": None, "swap_success": 1.0})
    assert reply["ok"] and reply["result"]["version"] == 1
    return c


async def test_service_heralds_measures_and_relays_messages() -> None:
    server = MediumServer(seed=3)
    await server.start()
    try:
        first = _Client(*await asyncio.open_connection("127.0.0.1", server.port))
        refused = await first.call("measure", slot=0, basis="Z")
        assert not refused["ok"] and "hello" in refused["error"]
        first.writer.close()
        a, b = await _connect(server, "a"), await _connect(server, "b")
        reg = await a.call("hop", **HOP)
        assert reg["ok"] and 0 < reg["result"]["p"] <= 1 and reg["result"]["fidelity"] == 1.0
        bad = await b.call("hop", **{**HOP, "loss_db": 3.0})
        assert not bad["ok"] and "differs from its other end" in bad["error"]
        assert (await b.call("hop", **HOP))["ok"]
        assert not (await a.call("frobnicate"))["ok"]
        agree = 0
        for _ in range(40):
            assert (await a.call("request", session="s1", hop=0, slot=0))["ok"]
            assert (await b.call("request", session="s1", hop=0, slot=5))["ok"]
            ha = await a.next(lambda f: f.get("event") == "herald")
            hb = await b.next(lambda f: f.get("event") == "herald")
            assert ha["label"] == hb["label"] and ha["label"][0] == 0
            assert (ha["slot"], ha["partner"], ha["partner_slot"]) == (0, "b", 5)
            await b.call("pauli", slot=5, pauli=hb["frame"])
            fid = await a.call("fidelity", slot=0)
            assert fid["result"]["fidelity"] == pytest.approx(1.0)
            x = (await a.call("measure", slot=0, basis="Z"))["result"]["outcome"]
            y = (await b.call("measure", slot=5, basis="Z"))["result"]["outcome"]
            agree += x == y
        assert agree == 40  # perfect pairs, corrected frames: always correlated
        # Messages: delivered in order to the addressed node only, body untouched.
        for i in range(5):
            assert (await a.call("send", session="s1", dst="b", body={"t": "PurifyBit", "n": i}))["ok"]
        got = [await b.next(lambda f: f.get("event") == "message") for _ in range(5)]
        assert [g["body"]["n"] for g in got] == list(range(5)) and all(g["src"] == "a" for g in got)
        assert not [f for f in a.frames if f.get("event") == "message"]
        # Leaving ends the session at the medium once both nodes left.
        assert (await a.call("request", session="s1", hop=0, slot=1))["ok"]
        assert (await a.call("leave", session="s1", slots=[0, 1]))["ok"]
        assert "s1" in server._sessions
        assert (await b.call("leave", session="s1", slots=[5]))["ok"]
        assert not server._sessions and server.medium.live_qubits() == 0
        for c in (a, b):
            c.writer.close()
    finally:
        await server.stop()


async def test_service_runs_the_round_synchroniser() -> None:
    server = MediumServer(seed=1)
    await server.start()
    try:
        a, r, b = [await _connect(server, n) for n in ("a", "r", "b")]
        path = ["a", "r", "b"]
        for c, hop in ((a, 0), (r, 0), (r, 1), (b, 1)):
            assert (await c.call("hop", **{**HOP, "path": path, "hop": hop, "link_id": f"l{hop}"}))["ok"]
        assert (await r.call("round", session="s1", round=0, ok=True))["ok"]
        for c in (a, r, b):
            ev = await c.next(lambda f: f.get("event") == "round")
            assert ev["round"] == 1
        # A node sends only within its sessions; the delay is the fibre between the two nodes.
        assert not (await a.call("send", session="s1", dst="z", body={}))["ok"]
        assert server._sessions["s1"].delay_s("a", "b") == pytest.approx(2 * 2.0e3 / 2.0e8)
        assert math.isfinite(server._sessions["s1"].delay_s("a", "r"))
        for c in (a, r, b):
            c.writer.close()
    finally:
        await server.stop()
