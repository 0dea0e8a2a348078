"""RFC 6242 message framing for NETCONF over SSH, sans-I/O.

Two framings exist (RFC 6242 section 4):

* ``"1.0"`` end-of-message framing: each message is followed by ``]]>]]>``. Used for ``<hello>``
  and for the whole session when either peer announced only ``:base:1.0``.
* ``"1.1"`` chunked framing: each message is one or more ``\\n#<chunk-size>\\n<data>`` chunks
  followed by ``\\n##\\n``. Used after the hello exchange when both peers announced ``:base:1.1``.

:class:`FramingDecoder` turns received bytes into complete messages and :func:`encode` frames an
outgoing message. Neither does I/O; the session owns the socket.

How a session uses the decoder::

    decoder = FramingDecoder(max_message_bytes=...)
    hello = decoder.feed(data)          # at most one message until the framing is decided
    ...                                 # parse the peer's hello, negotiate the base version
    if base == "1.1":
        decoder.switch_to_chunked()
    messages = decoder.feed(b"")        # drain what the peer sent right behind its hello
"""

from __future__ import annotations

from typing import Literal

from qsdn.errors import MalformedMessageError, QsdnError, TooBigError

Framing = Literal["1.0", "1.1"]

EOM = b"]]>]]>"
# RFC 6242 section 4.2: chunk-size = 1*DIGIT1 0*DIGIT, at most 4294967295.
MAX_CHUNK_SIZE = 4294967295
DEFAULT_MAX_CHUNK = 65536

_LF = 0x0A
_HASH = 0x23
_DIGIT_0 = 0x30
_DIGIT_1 = 0x31
_DIGIT_9 = 0x39


class FramingDecoder:
    """Reassemble NETCONF messages from a byte stream.

    ``mode`` starts as ``"1.0"``. The first complete message is the peer's ``<hello>``: the decoder
    returns it alone and keeps any bytes behind it unprocessed, because they may already be chunked.
    Once the caller has negotiated the base version it calls :meth:`switch_to_chunked` (or not), then
    ``feed(b"")`` to collect messages that arrived together with the hello.

    ``max_message_bytes`` bounds the payload of one message (framing excluded). The bound is enforced
    while bytes are being buffered: a chunk header announcing a chunk that would cross it, or an
    end-of-message stream that grows past it without a delimiter, raises :class:`TooBigError`
    immediately, so no oversized message is ever held in memory.

    Errors are final: after :class:`MalformedMessageError` (invalid chunk header) or
    :class:`TooBigError` the stream position is lost and the decoder raises the same error on every
    further :meth:`feed`. RFC 6242 section 4.2 requires the session to be closed.
    """

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._max = max_message_bytes
        self._mode: Framing = "1.0"
        self._buf = bytearray()
        self._hello_seen = False
        self._failed: QsdnError | None = None
        # end-of-message framing: bytes of _buf already searched for EOM
        self._searched = 0
        # chunked framing: the message being assembled and the data still owed by the current chunk
        self._message = bytearray()
        self._chunk_left = 0
        self._chunks = 0

    @property
    def mode(self) -> Framing:
        return self._mode

    @property
    def max_message_bytes(self) -> int:
        return self._max

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as part of a complete message."""
        return len(self._buf) + len(self._message)

    def switch_to_chunked(self) -> None:
        """Use chunked framing from now on (both peers announced ``:base:1.1``).

        Bytes already buffered behind the hello are interpreted as chunked; call ``feed(b"")`` to
        collect any messages they complete.
        """
        if self._mode == "1.1":
            return
        self._mode = "1.1"
        self._searched = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages they complete, in order (possibly none)."""
        if self._failed is not None:
            raise self._failed
        self._buf += data
        try:
            if self._mode == "1.0":
                return self._feed_eom()
            return self._feed_chunked()
        except QsdnError as exc:
            self._failed = exc
            self._buf.clear()
            self._message.clear()
            raise

    def _too_big(self) -> TooBigError:
        return TooBigError(f"NETCONF message exceeds the limit of {self._max} bytes")

    def _feed_eom(self) -> list[bytes]:
        buf = self._buf
        messages: list[bytes] = []
        start = 0
        while True:
            # Resume where the last search stopped, backing up in case a delimiter straddles feeds.
            search_from = max(start, self._searched - (len(EOM) - 1))
            found = buf.find(EOM, search_from)
            if found < 0:
                self._searched = len(buf)
                # The last len(EOM) - 1 bytes may be the start of a delimiter; the rest is payload.
                if len(buf) - start - (len(EOM) - 1) > self._max:
                    raise self._too_big()
                break
            if found - start > self._max:
                raise self._too_big()
            messages.append(bytes(buf[start:found]))
            start = found + len(EOM)
            self._searched = start
            if not self._hello_seen:
                # Hold what follows the hello: the caller may switch to chunked framing first.
                self._hello_seen = True
                break
        if start:
            del buf[:start]
            self._searched -= start
        return messages

    def _feed_chunked(self) -> list[bytes]:
        buf = self._buf
        messages: list[bytes] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while pos < end:
                if self._chunk_left:
                    take = min(self._chunk_left, end - pos)
                    self._message += view[pos : pos + take]
                    self._chunk_left -= take
                    pos += take
                    continue
                header = self._parse_header(buf, pos, end)
                if header is None:
                    break
                size, pos = header
                if size == 0:  # end-of-chunks marker
                    messages.append(bytes(self._message))
                    self._message.clear()
                    self._chunks = 0
                    continue
                if len(self._message) + size > self._max:
                    raise self._too_big()
                self._chunk_left = size
                self._chunks += 1
        del buf[:pos]
        return messages

    def _parse_header(self, buf: bytearray, pos: int, end: int) -> tuple[int, int] | None:
        """Parse ``\\n#<size>\\n`` or ``\\n##\\n`` at ``pos``.

        Returns ``(size, position after the header)`` with size 0 for the end-of-chunks marker, or
        ``None`` when more bytes are needed. Invalid bytes are reported as soon as they are seen.
        """
        if buf[pos] != _LF:
            raise self._bad_header("expected LF starting a chunk header")
        if pos + 1 >= end:
            return None
        if buf[pos + 1] != _HASH:
            raise self._bad_header("expected '#' after LF in a chunk header")
        if pos + 2 >= end:
            return None
        first = buf[pos + 2]
        if first == _HASH:
            if pos + 3 >= end:
                return None
            if buf[pos + 3] != _LF:
                raise self._bad_header("expected LF after '##'")
            if not self._chunks:
                raise self._bad_header("end-of-chunks marker without any chunk")
            return 0, pos + 4
        if not _DIGIT_1 <= first <= _DIGIT_9:
            raise self._bad_header("chunk size must start with a digit 1-9")
        size = first - _DIGIT_0
        i = pos + 3
        while i < end:
            byte = buf[i]
            if byte == _LF:
                return size, i + 1
            if not _DIGIT_0 <= byte <= _DIGIT_9:
                raise self._bad_header("chunk size must be decimal digits followed by LF")
            size = size * 10 + byte - _DIGIT_0
            if size > MAX_CHUNK_SIZE:
                raise self._bad_header(f"chunk size exceeds {MAX_CHUNK_SIZE}")
            i += 1
        return None

    @staticmethod
    def _bad_header(reason: str) -> MalformedMessageError:
        return MalformedMessageError(f"invalid chunked framing (RFC 6242 section 4.2): {reason}")


def encode(message: bytes, mode: Framing, *, max_chunk: int = DEFAULT_MAX_CHUNK) -> bytes:
    """Frame one message for sending.

    ``"1.0"`` appends ``]]>]]>``; the message must not contain that sequence (lxml never writes it:
    ``>`` after ``]]`` in text is escaped). ``"1.1"`` splits the message into chunks of at most
    ``max_chunk`` bytes and appends the end-of-chunks marker; an empty message cannot be framed.
    """
    if mode == "1.0":
        if EOM in message:
            raise QsdnError("message contains ']]>]]>' and cannot use end-of-message framing")
        return message + EOM
    if mode == "1.1":
        if not 1 <= max_chunk <= MAX_CHUNK_SIZE:
            raise ValueError(f"max_chunk must be between 1 and {MAX_CHUNK_SIZE}")
        if not message:
            raise QsdnError("an empty message cannot be sent with chunked framing")
        view = memoryview(message)
        parts: list[bytes | memoryview] = []
        for offset in range(0, len(message), max_chunk):
            chunk = view[offset : offset + max_chunk]
            parts.append(b"\n#%d\n" % len(chunk))
            parts.append(chunk)
        parts.append(b"\n##\n")
        return b"".join(parts)
    raise ValueError(f"unknown framing mode {mode!r}")
