"""ETSI GS QKD 014 V1.1.1 requests and responses, validated and rendered without I/O.

Every request is checked here once, on arrival, before any key is touched: a request that fails a
check consumes nothing. Errors are :class:`KmeError` with the HTTP status ETSI 014 gives them (400
bad request, 401 unauthorised, 503 server side) and the body of its section 6.5 (``message`` and an
optional ``details`` array of objects).

Choices where ETSI 014 leaves room (each is visible to a client):

* Parameters and fields the specification does not define are refused (400), in the query string and
  in JSON bodies alike; so are duplicate query parameters and duplicate JSON object members.
* ``number`` and ``size`` are JSON integers (not strings, booleans or ``1.0``); in a query string,
  plain decimal digits. ``number`` defaults to 1 and must be within ``[1, max_key_per_request]``;
  ``size`` defaults to the status ``key_size`` and must be a multiple of 8 within
  ``[min_key_size, max_key_size]``.
* ``additional_slave_SAE_IDs``: this KME reports ``max_SAE_ID_count`` 0, so a non-empty list is a 400
  (an empty list is accepted). Multicast key delivery is not implemented.
* ``extension_mandatory``: no extension is supported, so any member in it is a 400 naming it (section
  6.2: a KME that does not support a mandatory extension must refuse the request).
  ``extension_optional`` is accepted and ignored; ``key_ID_extension`` / ``key_IDs_extension`` too.
* An empty ``enc_keys`` POST body means ``{}`` (all defaults). ``dec_keys`` needs at least one key_ID,
  at most ``max_key_per_request``, each a UUID (any case), without repetition; it is all or nothing:
  one unknown or already delivered key_ID refuses the call (400) and hands out nothing.
* key_IDs are version 7 UUIDs (RFC 9562) made per request (:func:`new_request_id`, :func:`key_ids`).
* The status ``stored_key_count`` is the link key this end holds, in keys of ``key_size`` bits, at most
  ``max_key_count``; ``max_key_count`` also bounds the keys waiting for one slave SAE at this KME.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qsdn.errors import QsdnError

__all__ = [
    "DecRequest",
    "KeyRequest",
    "KmeError",
    "Limits",
    "canonical_uuid",
    "check_key_request",
    "key_container",
    "key_container_json",
    "key_ids",
    "new_request_id",
    "parse_dec_body",
    "parse_dec_query",
    "parse_enc_body",
    "parse_enc_query",
    "query_int",
    "single_query",
    "split_key_id",
    "status_body",
]

_TAGS = {400: "invalid-value", 401: "access-denied", 503: "resource-denied"}
_DIGITS = re.compile(r"[0-9]{1,10}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(text: str) -> str | None:
    """``text`` as a canonical (lower-case, hyphenated) UUID, or None if it is not a UUID."""
    if _UUID.fullmatch(text):
        return text
    if len(text) > 64:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


class _Clock:
    """Milliseconds that never go back (RFC 9562 section 6.2: monotonic version 7 UUIDs)."""

    def __init__(self) -> None:
        self.ms = 0

    def now_ms(self) -> int:
        self.ms = max(self.ms, time.time_ns() // 1_000_000)
        return self.ms


_CLOCK = _Clock()
_VARIANT = "89ab"


def new_request_id() -> str:
    """The key_ID of the first key of a new request; the request's other key_IDs follow from it.

    An RFC 9562 version 7 UUID: 48 bits of Unix time in milliseconds, the 12-bit ``rand_a`` field used
    as the index of the key within its request (0 here), and 62 bits from the OS CSPRNG shared by the
    request's keys. So key *i* of a request is its first key_ID with index *i* (:func:`key_ids`), the
    KME stores a request's keys in one row, and time-ordered ids keep its tables append-only. The ids
    reveal when a key was made, to the millisecond, to the SAEs that see them; they are not guessable
    (62 random bits), and knowing them gives nothing: keys go only to the SAE pair they were made for.
    """
    ms = _CLOCK.now_ms()
    r = os.urandom(8).hex()
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7000-{_VARIANT[int(r[0], 16) & 3]}{r[1:4]}-{r[4:]}"


def key_ids(request_id: str, n: int) -> list[str]:
    """The key_IDs of the ``n`` keys of a request (index 0 is the request id itself)."""
    head, tail = request_id[:15], request_id[18:]
    return [f"{head}{i:03x}{tail}" for i in range(n)]


def split_key_id(key_id: str) -> tuple[str, int] | None:
    """(request id, index) of a canonical key_ID made by :func:`key_ids`, or None."""
    if len(key_id) != 36 or key_id[14] != "7":
        return None
    try:
        index = int(key_id[15:18], 16)
    except ValueError:
        return None
    return f"{key_id[:15]}000{key_id[18:]}", index


class KmeError(QsdnError):
    """An ETSI GS QKD 014 error: HTTP ``status`` and the ``{"message", "details"}`` body."""

    def __init__(self, status: int, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message, tag=_TAGS.get(status, "operation-failed"))
        self.status = status
        self.message = message
        self.details = [dict(d) for d in details]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


def bad(message: str, **detail: Any) -> KmeError:
    return KmeError(400, message, [detail] if detail else ())


@dataclass(frozen=True)
class Limits:
    """What the KME accepts; the same numbers appear in the status response."""

    default_key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 4096
    max_key_per_request: int = 128
    max_key_count: int = 100_000
    max_sae_id_count: int = 0


@dataclass(frozen=True)
class KeyRequest:
    """A validated ``enc_keys`` request."""

    number: int
    size: int
    additional_slave_sae_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecRequest:
    """A validated ``dec_keys`` request: the key_IDs, in the order asked."""

    key_ids: tuple[str, ...] = field(default=())


# --- JSON ------------------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise bad(f"malformed JSON body: member {k!r} appears twice", member=k)
            seen.add(k)
    return out


def _no_constants(name: str) -> Any:
    raise bad(f"malformed JSON body: {name} is not a JSON number")


def load_json(body: bytes, *, empty_is: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object from a request body; a 400 for anything else."""
    if not body.strip():
        if empty_is is not None:
            return dict(empty_is)
        raise bad("the request body is empty; a JSON object is expected")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("malformed JSON body: not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise bad(f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise bad("malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise bad(f"malformed JSON body: a JSON object is expected, not {_json_type(data)}")
    return data


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number with a fraction"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _unknown(data: dict[str, Any], known: Sequence[str]) -> None:
    extra = sorted(set(data) - set(known))
    if extra:
        raise bad(
            f"unknown member {extra[0]!r} in the request (ETSI GS QKD 014 defines {', '.join(known)})",
            member=extra[0],
        )


def _integer(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{name} must be an integer, not {_json_type(v)}", parameter=name)
    return v


def query_int(name: str, text: str) -> int:
    """A query parameter of plain decimal digits; a 400 naming ``name`` for anything else."""
    if not _DIGITS.fullmatch(text):
        if text.startswith("-") and _DIGITS.fullmatch(text[1:]):
            raise bad(f"{name} must be a positive integer, got {text[:20]!r}", parameter=name)
        raise bad(f"{name} must be a decimal integer, got {text[:20]!r}", parameter=name)
    return int(text)


def single_query(query: Sequence[tuple[str, str]], known: Sequence[str]) -> dict[str, str]:
    """The query parameters as a dict; a 400 for one not in ``known`` or one given twice."""
    out: dict[str, str] = {}
    for k, v in query:
        if k not in known:
            raise bad(
                f"unknown query parameter {k[:40]!r} (this method takes {', '.join(known)})", parameter=k[:40]
            )
        if k in out:
            raise bad(f"query parameter {k!r} is given more than once", parameter=k)
        out[k] = v
    return out


def _objects(name: str, v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise bad(f"{name} must be an array of objects", parameter=name)
    return v


# --- enc_keys ----------------------------------------------------------------------------------------


def check_key_request(number: int, size: int, limits: Limits) -> None:
    """A 400 unless ``number`` keys of ``size`` bits are within ``limits``."""
    if number < 1:
        raise bad(f"number must be a positive integer, got {number}", parameter="number", value=number)
    if number > limits.max_key_per_request:
        raise bad(
            f"number {number} exceeds max_key_per_request {limits.max_key_per_request}",
            parameter="number",
            value=number,
            max_key_per_request=limits.max_key_per_request,
        )
    if size % 8:
        raise bad(f"size {size} is not a multiple of 8", parameter="size", value=size)
    if size < limits.min_key_size:
        raise bad(
            f"size {size} is below min_key_size {limits.min_key_size}",
            parameter="size",
            value=size,
            min_key_size=limits.min_key_size,
        )
    if size > limits.max_key_size:
        raise bad(
            f"size {size} exceeds max_key_size {limits.max_key_size}",
            parameter="size",
            value=size,
            max_key_size=limits.max_key_size,
        )


def parse_enc_query(query: Sequence[tuple[str, str]], limits: Limits) -> KeyRequest:
    """``GET .../enc_keys?number=&size=``."""
    q = single_query(query, ("number", "size"))
    number = query_int("number", q["number"]) if "number" in q else 1
    size = query_int("size", q["size"]) if "size" in q else limits.default_key_size
    check_key_request(number, size, limits)
    return KeyRequest(number, size)


_ENC_FIELDS = ("number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional")


def parse_enc_body(body: bytes, limits: Limits) -> KeyRequest:
    """``POST .../enc_keys`` with a key request (ETSI 014 section 6.2)."""
    data = load_json(body, empty_is={})
    _unknown(data, _ENC_FIELDS)
    number = _integer("number", data["number"]) if "number" in data else 1
    size = _integer("size", data["size"]) if "size" in data else limits.default_key_size
    extra: tuple[str, ...] = ()
    if "additional_slave_SAE_IDs" in data:
        ids = data["additional_slave_SAE_IDs"]
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise bad(
                "additional_slave_SAE_IDs must be an array of strings", parameter="additional_slave_SAE_IDs"
            )
        if len(ids) > limits.max_sae_id_count:
            raise bad(
                f"additional_slave_SAE_IDs has {len(ids)} entries; this KME accepts at most"
                f" {limits.max_sae_id_count} (max_SAE_ID_count): key multicast is not supported",
                parameter="additional_slave_SAE_IDs",
                max_SAE_ID_count=limits.max_sae_id_count,
            )
        extra = tuple(ids)
    if "extension_mandatory" in data:
        for ext in _objects("extension_mandatory", data["extension_mandatory"]):
            for name in ext:
                raise bad(
                    f"mandatory extension {name[:60]!r} is not supported by this KME",
                    extension=name[:60],
                )
    if "extension_optional" in data:
        _objects("extension_optional", data["extension_optional"])
    check_key_request(number, size, limits)
    return KeyRequest(number, size, extra)


# --- dec_keys ----------------------------------------------------------------------------------------


def _key_id(v: Any) -> str:
    if not isinstance(v, str):
        raise bad(f"key_ID must be a string, not {_json_type(v)}", parameter="key_ID")
    out = canonical_uuid(v)
    if out is None:
        raise bad(f"key_ID {v[:60]!r} is not a UUID", parameter="key_ID")
    return out


def _dec(ids: list[str], limits: Limits) -> DecRequest:
    if not ids:
        raise bad("key_IDs is empty; give at least one key_ID", parameter="key_IDs")
    if len(ids) > limits.max_key_per_request:
        raise bad(
            f"{len(ids)} key_IDs exceed max_key_per_request {limits.max_key_per_request}",
            parameter="key_IDs",
            max_key_per_request=limits.max_key_per_request,
        )
    seen: set[str] = set()
    for k in ids:
        if k in seen:
            raise bad(f"key_ID {k} is asked for more than once", parameter="key_IDs", key_ID=k)
        seen.add(k)
    return DecRequest(tuple(ids))


def parse_dec_query(query: Sequence[tuple[str, str]], limits: Limits) -> DecRequest:
    """``GET .../dec_keys?key_ID=``: one key."""
    q = single_query(query, ("key_ID",))
    if "key_ID" not in q:
        raise bad("the key_ID query parameter is required", parameter="key_ID")
    return _dec([_key_id(q["key_ID"])], limits)


def parse_dec_body(body: bytes, limits: Limits) -> DecRequest:
    """``POST .../dec_keys`` with key IDs (ETSI 014 section 6.4)."""
    data = load_json(body)
    _unknown(data, ("key_IDs", "key_IDs_extension"))
    if "key_IDs" not in data:
        raise bad("key_IDs is required", parameter="key_IDs")
    items = data["key_IDs"]
    if not isinstance(items, list):
        raise bad(f"key_IDs must be an array, not {_json_type(items)}", parameter="key_IDs")
    ids: list[str] = []
    for item in items:
        if type(item) is dict and len(item) == 1:  # the usual {"key_ID": "<canonical uuid>"}: fast path
            kid = item.get("key_ID")
            if type(kid) is str and _UUID.fullmatch(kid):
                ids.append(kid)
                continue
        if not isinstance(item, dict):
            raise bad(f"each key_IDs entry must be an object, not {_json_type(item)}", parameter="key_IDs")
        _unknown(item, ("key_ID", "key_ID_extension"))
        if "key_ID" not in item:
            raise bad("a key_IDs entry has no key_ID", parameter="key_ID")
        ids.append(_key_id(item["key_ID"]))
    return _dec(ids, limits)


# --- responses ---------------------------------------------------------------------------------------


def status_body(
    *,
    source_kme_id: str,
    target_kme_id: str,
    master_sae_id: str,
    slave_sae_id: str,
    stored_bits: int,
    limits: Limits,
) -> dict[str, Any]:
    """ETSI 014 section 6.1 Status; ``stored_key_count`` in keys of the default size, <= max_key_count."""
    return {
        "source_KME_ID": source_kme_id,
        "target_KME_ID": target_kme_id,
        "master_SAE_ID": master_sae_id,
        "slave_SAE_ID": slave_sae_id,
        "key_size": limits.default_key_size,
        "stored_key_count": min(max(stored_bits, 0) // limits.default_key_size, limits.max_key_count),
        "max_key_count": limits.max_key_count,
        "max_key_per_request": limits.max_key_per_request,
        "max_key_size": limits.max_key_size,
        "min_key_size": limits.min_key_size,
        "max_SAE_ID_count": limits.max_sae_id_count,
    }


def key_container(keys: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """ETSI 014 section 6.3 Key container."""
    return {"keys": [{"key_ID": kid, "key": base64.b64encode(k).decode("ascii")} for kid, k in keys]}


def key_container_json(keys: Sequence[tuple[str, bytes]]) -> bytes:
    """:func:`key_container` serialised as JSON, directly: key_IDs are canonical UUIDs and keys base64,
    so neither needs escaping."""
    items = b",".join(b'{"key_ID":"%s","key":"%s"}' % (kid.encode(), base64.b64encode(k)) for kid, k in keys)
    return b'{"keys":[' + items + b"]}"
