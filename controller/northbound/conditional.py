"""Entity tags, Last-Modified and conditional requests for the datastore (RFC 8040 3.4.1, RFC 7232).

RFC 8040 section 3.4.1.2: the datastore's entity-tag changes with configuration data only, never with
state. The tag here is a digest of the canonical configuration XML, so it changes on every change,
whether it came through RESTCONF or from the controller itself; Last-Modified is the time this server
first saw the tag (one-second resolution, as HTTP dates are). The same tag and date serve every data
resource (section 3.5.2 lets a server use the datastore's).

Evaluation follows RFC 7232 section 6: If-Match, else If-Unmodified-Since (412 when they fail); then
If-None-Match (304 on GET and HEAD, 412 otherwise), else If-Modified-Since (GET and HEAD only). Since
the tag does not follow state data, a read whose answer holds state is never answered 304: the server
cannot tell that the state is unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

from aiohttp import hdrs, web

from controller.northbound.render import RestconfError


class DatastoreClock:
    """The configuration datastore's entity-tag and the time it was first seen."""

    def __init__(self) -> None:
        self.etag = ""
        self.modified = datetime.now(UTC).replace(microsecond=0)

    def observe(self, config: str) -> None:
        """Note the current configuration (its canonical XML)."""
        tag = hashlib.sha256(config.encode("utf-8")).hexdigest()[:32]
        if tag != self.etag:
            if self.etag:
                self.modified = datetime.now(UTC).replace(microsecond=0)
            self.etag = tag

    def headers(self) -> dict[str, str]:
        return {hdrs.ETAG: f'"{self.etag}"', hdrs.LAST_MODIFIED: format_datetime(self.modified, usegmt=True)}


def _failed(why: str) -> RestconfError:
    return RestconfError(f"precondition failed: {why}", status=412, tag="operation-failed")


def check(request: web.Request, clock: DatastoreClock, *, exists: Callable[[], bool]) -> None:
    """If-Match and If-Unmodified-Since, and for writes If-None-Match: 412 when one fails.

    ``exists`` tells whether the target resource exists (for ``*``)."""
    if_match = request.if_match
    if if_match is not None:
        if not any(
            (t.value == "*" and exists()) or (not t.is_weak and t.value == clock.etag) for t in if_match
        ):
            raise _failed("If-Match does not match the datastore's entity-tag")
    elif (since := request.if_unmodified_since) is not None and clock.modified > since:
        raise _failed("the datastore was modified after If-Unmodified-Since")
    if request.method not in ("GET", "HEAD") and _none_match(request, clock, exists):
        raise _failed("If-None-Match matches")


def _none_match(request: web.Request, clock: DatastoreClock, exists: Callable[[], bool]) -> bool:
    if_none = request.if_none_match
    return if_none is not None and any(
        (t.value == "*" and exists()) or t.value == clock.etag for t in if_none
    )


def not_modified(request: web.Request, clock: DatastoreClock) -> bool:
    """Whether a GET or HEAD of configuration data is answered 304 (If-None-Match, If-Modified-Since)."""
    if request.if_none_match is not None:
        return _none_match(request, clock, lambda: True)
    since = request.if_modified_since
    return since is not None and clock.modified <= since


def not_modified_response(clock: DatastoreClock) -> web.Response:
    return web.Response(status=304, headers=clock.headers())
