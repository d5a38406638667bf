"""Rich gRPC errors (AIP-193): every error carries `google.rpc.ErrorInfo`.

Domain and application code raise `ServiceError`; the server's error interceptor turns it into
a `google.rpc.Status` in the `grpc-status-details-bin` trailer, readable by grpcurl and by
`grpc_status.rpc_status.from_call`. Anything else that escapes a handler becomes INTERNAL with
no traceback sent to the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

#: The `ErrorInfo.domain` of every error: the product, per AIP-193.
ERROR_DOMAIN = "phoneseller"


@dataclass
class ServiceError(Exception):
    """An error meant for the caller: a status code, a message and machine-readable details."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    details: list[Message] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message} ({self.reason})"

    def to_status(self, service: str) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason,
            domain=ERROR_DOMAIN,
            metadata={"service": service, **self.metadata},
        )
        packed = []
        for detail in [info, *self.details]:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


def invalid_argument(
    violations: Iterable[tuple[str, str]], reason: str = "INVALID_ARGUMENT"
) -> ServiceError:
    """A request with bad fields: one `BadRequest.FieldViolation` per (field, description)."""
    items = list(violations)
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
            for name, text in items
        ]
    )
    summary = "; ".join(f"{name}: {text}" for name, text in items)
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {summary}",
        reason,
        {"fields": ",".join(name for name, _ in items)},
        [bad_request],
    )


def not_found(resource_type: str, resource_id: str) -> ServiceError:
    info = error_details_pb2.ResourceInfo(
        resource_type=resource_type,
        resource_name=resource_id,
        description=f"no {resource_type} {resource_id!r}",
    )
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"{resource_type} {resource_id!r} not found",
        f"{resource_type.upper()}_NOT_FOUND",
        {resource_type + "_id": resource_id},
        [info],
    )


def failed_precondition(
    reason: str, message: str, subject: str, metadata: Mapping[str, str] | None = None
) -> ServiceError:
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=reason, subject=subject, description=message
            )
        ]
    )
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, message, reason, dict(metadata or {}), [failure]
    )


def already_exists(
    reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, message, reason, dict(metadata or {}))


def unauthenticated(reason: str, message: str) -> ServiceError:
    """The call carries no (valid) identity: sign in and send the token."""
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message, reason)


def permission_denied(
    reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> ServiceError:
    """The caller is known and may not do this (nothing was changed)."""
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message, reason, dict(metadata or {}))


def unavailable(
    reason: str,
    message: str,
    retry_after_seconds: float = 1.0,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """The caller should come back: UNAVAILABLE with `RetryInfo.retry_delay`."""
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(int(retry_after_seconds * 1000))
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        message,
        reason,
        dict(metadata or {}),
        [error_details_pb2.RetryInfo(retry_delay=delay)],
    )


def internal(service: str) -> status_pb2.Status:
    """What the client sees of an unexpected failure: no traceback, just that it happened."""
    return ServiceError(
        grpc.StatusCode.INTERNAL, "internal error; it has been logged", "INTERNAL_ERROR"
    ).to_status(service)


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    """The trailer that carries the rich status to grpc clients."""
    return (("grpc-status-details-bin", status.SerializeToString()),)


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN


def from_rpc_error(error: grpc.RpcError) -> status_pb2.Status | None:
    """The rich status of a failed outgoing call, if the peer sent one."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def retry_delay_seconds(status: status_pb2.Status | None) -> float | None:
    """The `RetryInfo.retry_delay` of a rich status, in seconds, if it has one."""
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToMilliseconds() / 1000
            return seconds
    return None


__all__ = [
    "ERROR_DOMAIN",
    "ServiceError",
    "already_exists",
    "failed_precondition",
    "from_rpc_error",
    "internal",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "retry_delay_seconds",
    "status_code",
    "trailing_metadata",
    "unauthenticated",
    "unavailable",
]
