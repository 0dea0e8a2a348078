"""One error family for qsdn.

Every error knows how it is rendered by each protocol: the NETCONF ``<rpc-error>`` fields
(RFC 6241 section 4.3 and appendix A), the RESTCONF ``ietf-restconf:errors`` entry and HTTP status
(RFC 8040 section 7), and the ETSI GS QKD 014 ``{"message": ...}`` body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ErrorType(StrEnum):
    """RFC 6241 error-type."""

    TRANSPORT = "transport"
    RPC = "rpc"
    PROTOCOL = "protocol"
    APPLICATION = "application"


# RFC 8040 section 7: error-tag to HTTP status.
_HTTP_STATUS: dict[str, int] = {
    "in-use": 409,
    "invalid-value": 400,
    "too-big": 413,
    "missing-attribute": 400,
    "missing-element": 400,
    "bad-attribute": 400,
    "unknown-attribute": 400,
    "bad-element": 400,
    "unknown-element": 400,
    "unknown-namespace": 400,
    "access-denied": 403,
    "lock-denied": 409,
    "resource-denied": 409,
    "rollback-failed": 500,
    "data-exists": 409,
    "data-missing": 409,
    "operation-not-supported": 405,
    "operation-failed": 500,
    "partial-operation": 500,
    "malformed-message": 400,
}


@dataclass
class ErrorInfo:
    """One error as data: a protocol-neutral record with a locator."""

    tag: str
    message: str
    type: ErrorType = ErrorType.APPLICATION
    path: str | None = None
    app_tag: str | None = None
    severity: str = "error"
    info: dict[str, str] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.tag, 500)


class QsdnError(Exception):
    """Base of every error qsdn raises on purpose. Carries one or more :class:`ErrorInfo`."""

    tag = "operation-failed"
    type = ErrorType.APPLICATION

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        tag: str | None = None,
        type: ErrorType | None = None,
        app_tag: str | None = None,
        info: dict[str, str] | None = None,
        errors: list[ErrorInfo] | None = None,
    ) -> None:
        super().__init__(message)
        if errors:
            self.errors = errors
        else:
            self.errors = [
                ErrorInfo(
                    tag=tag or self.tag,
                    message=message,
                    type=type or self.type,
                    path=path,
                    app_tag=app_tag,
                    info=dict(info or {}),
                )
            ]

    @property
    def first(self) -> ErrorInfo:
        return self.errors[0]

    @property
    def http_status(self) -> int:
        return self.first.http_status

    def __str__(self) -> str:
        e = self.first
        where = f" at {e.path}" if e.path else ""
        return f"{e.message}{where}"


class ConfigError(QsdnError):
    """A configuration file (agent, controller, topology) is invalid."""

    tag = "invalid-value"


class ValidationError(QsdnError):
    """Data does not satisfy the YANG schema (libyang validation)."""

    tag = "invalid-value"


class MalformedMessageError(QsdnError):
    """A protocol message could not be parsed (bad framing, bad XML, DTDs)."""

    tag = "malformed-message"
    type = ErrorType.RPC


class TooBigError(QsdnError):
    """A message or request exceeds a configured limit."""

    tag = "too-big"
    type = ErrorType.TRANSPORT


class LockDeniedError(QsdnError):
    tag = "lock-denied"
    type = ErrorType.PROTOCOL


class InUseError(QsdnError):
    tag = "in-use"
    type = ErrorType.PROTOCOL


class DataExistsError(QsdnError):
    tag = "data-exists"


class DataMissingError(QsdnError):
    tag = "data-missing"


class OperationNotSupportedError(QsdnError):
    tag = "operation-not-supported"
    type = ErrorType.PROTOCOL


class AccessDeniedError(QsdnError):
    tag = "access-denied"
    type = ErrorType.PROTOCOL


class DriverError(QsdnError):
    """A hardware driver (emulated or real) failed an operation."""

    tag = "operation-failed"


class KeyStoreError(QsdnError):
    """The key store cannot serve a request (not enough key, unknown key ID)."""

    tag = "resource-denied"
