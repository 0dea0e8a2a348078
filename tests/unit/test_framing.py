"""RFC 6242 framing: end-of-message and chunked, fed in every possible split."""

from __future__ import annotations

import pytest

from qsdn.errors import MalformedMessageError, QsdnError, TooBigError
from qsdn.netconf.framing import EOM, MAX_CHUNK_SIZE, Framing, FramingDecoder, encode

HELLO = b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities/></hello>'
RPC_1 = b'<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get/></rpc>'
# Content that contains the 1.0 delimiter: only chunked framing can carry it.
RPC_2 = b'<rpc message-id="2" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><![CDATA[]]>]]>]]></rpc>'


def feed_all(decoder: FramingDecoder, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out


# ------------------------------------------------------------------------------------------ encode


def test_encode_end_of_message() -> None:
    assert encode(b"<a/>", "1.0") == b"<a/>]]>]]>"


def test_encode_chunked_single_chunk() -> None:
    assert encode(b"<a/>", "1.1") == b"\n#4\n<a/>\n##\n"


def test_encode_chunked_splits_at_max_chunk() -> None:
    assert encode(b"abcdefg", "1.1", max_chunk=3) == b"\n#3\nabc\n#3\ndef\n#1\ng\n##\n"


@pytest.mark.parametrize(
    ("message", "mode", "kwargs", "error"),
    [
        (b"<a>]]>]]></a>", "1.0", {}, QsdnError),
        (b"", "1.1", {}, QsdnError),
        (b"<a/>", "1.1", {"max_chunk": 0}, ValueError),
        (b"<a/>", "1.1", {"max_chunk": MAX_CHUNK_SIZE + 1}, ValueError),
        (b"<a/>", "2.0", {}, ValueError),
    ],
)
def test_encode_refuses(message: bytes, mode: str, kwargs: dict[str, int], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(message, mode, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ end-of-message mode


def test_eom_messages_in_one_feed_after_hello() -> None:
    decoder = FramingDecoder(1000)
    assert decoder.feed(HELLO + EOM + RPC_1 + EOM + RPC_1 + EOM) == [HELLO]
    assert decoder.mode == "1.0"
    assert decoder.feed(b"") == [RPC_1, RPC_1]
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("split", range(len(HELLO + EOM) + 1))
def test_eom_split_at_every_boundary(split: int) -> None:
    stream = HELLO + EOM
    decoder = FramingDecoder(1000)
    assert feed_all(decoder, [stream[:split], stream[split:]]) == [HELLO]


def test_eom_one_byte_at_a_time() -> None:
    stream = HELLO + EOM + RPC_1 + EOM + b"\n" + RPC_1 + EOM
    decoder = FramingDecoder(1000)
    out = feed_all(decoder, [stream[i : i + 1] for i in range(len(stream))])
    assert out == [HELLO, RPC_1, b"\n" + RPC_1]


def test_eom_partial_delimiter_is_not_a_delimiter() -> None:
    decoder = FramingDecoder(1000)
    assert decoder.feed(b"<a>]]>]]") == []
    assert decoder.feed(b"x</a>") == []
    assert decoder.feed(EOM) == [b"<a>]]>]]x</a>"]


def test_eom_exactly_at_limit() -> None:
    decoder = FramingDecoder(10)
    assert decoder.feed(b"x" * 10 + EOM) == [b"x" * 10]


def test_eom_over_limit_with_delimiter() -> None:
    decoder = FramingDecoder(10)
    with pytest.raises(TooBigError):
        decoder.feed(b"x" * 11 + EOM)


def test_eom_over_limit_detected_before_delimiter_arrives() -> None:
    decoder = FramingDecoder(10)
    # 10 payload bytes plus 5 bytes that could still be the start of a delimiter: undecided
    assert decoder.feed(b"x" * 15) == []
    with pytest.raises(TooBigError):
        decoder.feed(b"x")


def test_eom_limit_applies_per_message() -> None:
    decoder = FramingDecoder(10)
    assert decoder.feed(b"a" * 10 + EOM) == [b"a" * 10]
    assert decoder.feed(b"b" * 10 + EOM + b"c" * 10 + EOM) == [b"b" * 10, b"c" * 10]


# ------------------------------------------------------------------------------------- chunked mode


def chunked_decoder(limit: int = 1000) -> FramingDecoder:
    decoder = FramingDecoder(limit)
    assert decoder.feed(b"<hello/>" + EOM) == [b"<hello/>"]
    decoder.switch_to_chunked()
    assert decoder.mode == "1.1"
    return decoder


def test_chunked_round_trip_with_eom_in_content() -> None:
    decoder = chunked_decoder()
    stream = encode(RPC_1, "1.1") + encode(RPC_2, "1.1", max_chunk=7)
    assert decoder.feed(stream) == [RPC_1, RPC_2]


def test_hello_followed_by_chunked_rpc_in_the_same_read() -> None:
    decoder = FramingDecoder(1000)
    # RPC_2 contains ]]>]]>: read as end-of-message framing it would be cut in two
    assert decoder.feed(HELLO + EOM + encode(RPC_2, "1.1")) == [HELLO]
    decoder.switch_to_chunked()
    assert decoder.feed(b"") == [RPC_2]


def test_switch_to_chunked_twice_is_harmless() -> None:
    decoder = chunked_decoder()
    decoder.switch_to_chunked()
    assert decoder.feed(encode(RPC_1, "1.1")) == [RPC_1]


CHUNKED_STREAM = HELLO + EOM + encode(RPC_1, "1.1", max_chunk=10) + encode(RPC_2, "1.1", max_chunk=13)


def test_chunked_one_byte_at_a_time() -> None:
    decoder = FramingDecoder(1000)
    out: list[bytes] = []
    for i in range(len(CHUNKED_STREAM)):
        out += decoder.feed(CHUNKED_STREAM[i : i + 1])
        if out == [HELLO] and decoder.mode == "1.0":
            decoder.switch_to_chunked()
    assert out == [HELLO, RPC_1, RPC_2]


@pytest.mark.parametrize("split", range(len(encode(RPC_1, "1.1", max_chunk=10)) + 1))
def test_chunked_split_at_every_boundary(split: int) -> None:
    stream = encode(RPC_1, "1.1", max_chunk=10) + encode(RPC_2, "1.1")
    decoder = chunked_decoder()
    assert feed_all(decoder, [stream[:split], stream[split:]]) == [RPC_1, RPC_2]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"\n#0\n", "zero size"),
        (b"\n#01\nx\n##\n", "leading zero"),
        (b"\n#a\n", "letter"),
        (b"\n#1a\n", "letter after digit"),
        (b"\n#-1\n", "sign"),
        (b"\n# 1\n", "space"),
        (b"\n#4294967296\n", "one above the maximum"),
        (b"\n#99999999999\n", "eleven digits"),
        (b"\n#123456789012345678901234567890", "endless digits without LF"),
        (b"#4\n<a/>\n##\n", "missing leading LF"),
        (b"\n4\n<a/>", "missing hash"),
        (b"\n#4<a/>\n##\n", "missing LF after size"),
        (b"\n#4\r\n<a/>", "CR before LF"),
        (b"\n##\n", "end marker without chunks"),
        (b"\n#4\n<a/>\n##x", "garbage in end marker"),
        (b"\n#4\n<a/>X\n##\n", "chunk longer than announced"),
        (b"\n#4\n<a/>\n##\n \n", "stray space between messages"),
        (b"<rpc/>]]>]]>", "end-of-message framing after switching"),
    ],
)
def test_chunked_bad_header(stream: bytes, reason: str) -> None:
    decoder = chunked_decoder()
    with pytest.raises(MalformedMessageError) as info:
        decoder.feed(stream)
    assert info.value.first.tag == "malformed-message", reason


@pytest.mark.parametrize("stream", [b"\n#0", b"\n#01", b"\nx", b"x", b"\n##\n"])
def test_chunked_bad_header_reported_without_waiting(stream: bytes) -> None:
    decoder = chunked_decoder()
    with pytest.raises(MalformedMessageError):
        decoder.feed(stream)


def test_chunked_byte_by_byte_bad_header_detected_at_bad_byte() -> None:
    decoder = chunked_decoder()
    decoder.feed(b"\n")
    decoder.feed(b"#")
    decoder.feed(b"1")
    with pytest.raises(MalformedMessageError):
        decoder.feed(b"z")


def test_chunked_maximum_chunk_size_is_valid_but_too_big() -> None:
    decoder = chunked_decoder(limit=1000)
    with pytest.raises(TooBigError):
        decoder.feed(b"\n#4294967295\n")


def test_chunked_exactly_at_limit() -> None:
    decoder = chunked_decoder(limit=10)
    assert decoder.feed(encode(b"x" * 10, "1.1", max_chunk=3)) == [b"x" * 10]


def test_chunked_single_chunk_over_limit_refused_at_header() -> None:
    decoder = chunked_decoder(limit=10)
    with pytest.raises(TooBigError):
        decoder.feed(b"\n#11\n")  # no data needed: the header alone crosses the limit


def test_chunked_many_chunks_over_limit_refused_before_data() -> None:
    decoder = chunked_decoder(limit=10)
    assert decoder.feed(b"\n#6\nxxxxxx") == []
    with pytest.raises(TooBigError):
        decoder.feed(b"\n#5\n")
    assert decoder.buffered_bytes == 0


def test_decoder_is_unusable_after_error() -> None:
    decoder = chunked_decoder()
    with pytest.raises(MalformedMessageError):
        decoder.feed(b"\n#0\n")
    with pytest.raises(MalformedMessageError):
        decoder.feed(encode(RPC_1, "1.1"))


def test_decoder_is_unusable_after_too_big() -> None:
    decoder = FramingDecoder(4)
    with pytest.raises(TooBigError):
        decoder.feed(b"<abcdefghij/>" + EOM)
    with pytest.raises(TooBigError):
        decoder.feed(b"<a/>" + EOM)


def test_decoder_needs_positive_limit() -> None:
    with pytest.raises(ValueError):
        FramingDecoder(0)


def test_large_message_in_small_pieces() -> None:
    message = b"<data>" + b"y" * 300_000 + b"</data>"
    modes: tuple[Framing, ...] = ("1.0", "1.1")
    for mode in modes:
        decoder = FramingDecoder(len(message))
        if mode == "1.1":
            decoder = chunked_decoder(len(message))
        stream = encode(message, mode)
        out = feed_all(decoder, [stream[i : i + 512] for i in range(0, len(stream), 512)])
        assert out == [message]
