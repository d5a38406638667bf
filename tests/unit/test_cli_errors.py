"""The client reads rich errors (grpc-status-details-bin) exactly as the services write them."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from client.api import STATUS_DETAILS_KEY, ApiError, FieldViolation, status_from_trailers
from services.kit import errors


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """What a failed grpc call raises: a code, a message and trailers."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self._code, self._message, self._trailers = code, message, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailers


def failed_call(error: errors.ServiceError, service: str = "order") -> FakeRpcError:
    status = error.to_status(service)
    return FakeRpcError(
        error.code,
        error.message,
        (("x-other", "value"), *errors.trailing_metadata(status)),
    )


def test_field_violations_and_reason_of_a_bad_request() -> None:
    error = ApiError.from_rpc_error(
        failed_call(
            errors.invalid_argument(
                [("customer_id", "is required"), ("quantity", "must be between 1 and 100")]
            )
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.code_name == "INVALID_ARGUMENT"
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain == "phoneseller"
    assert error.metadata == {"service": "order", "fields": "customer_id,quantity"}
    assert error.violations == [
        FieldViolation("customer_id", "is required"),
        FieldViolation("quantity", "must be between 1 and 100"),
    ]
    assert error.retry_delay is None
    assert not error.retryable


def test_retry_delay_of_an_unavailable_dependency() -> None:
    error = ApiError.from_rpc_error(
        failed_call(
            errors.unavailable("PROMOTION_UNAVAILABLE", "try again shortly", 1.5), "payment"
        )
    )
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.reason == "PROMOTION_UNAVAILABLE"
    assert error.retry_delay == 1.5
    assert error.retryable
    assert str(error) == "UNAVAILABLE: try again shortly (PROMOTION_UNAVAILABLE)"


def test_not_found_and_precondition_details_become_notes() -> None:
    missing = ApiError.from_rpc_error(failed_call(errors.not_found("order", "o-1")))
    assert missing.reason == "ORDER_NOT_FOUND"
    assert missing.notes == ["no order 'o-1'"]
    shipped = ApiError.from_rpc_error(
        failed_call(
            errors.failed_precondition("ORDER_ALREADY_SHIPPED", "it has shipped", "orders/o-1")
        )
    )
    assert shipped.code is grpc.StatusCode.FAILED_PRECONDITION
    assert shipped.notes == ["precondition ORDER_ALREADY_SHIPPED: it has shipped"]


def test_an_error_without_details_keeps_code_and_message() -> None:
    """A proxy (or a refused connection) answers without a rich status."""
    error = ApiError.from_rpc_error(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    )
    assert (error.code, error.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses",
    )
    assert (error.reason, error.violations, error.retry_delay) == ("", [], None)
    assert not error.retryable


def test_a_garbled_details_trailer_is_ignored() -> None:
    call = FakeRpcError(
        grpc.StatusCode.INTERNAL, "boom", ((STATUS_DETAILS_KEY, b"\xff\xff\xff not proto"),)
    )
    assert status_from_trailers(call) is None
    assert ApiError.from_rpc_error(call).message == "boom"


def test_the_status_message_fills_in_an_empty_call_message() -> None:
    status = status_pb2.Status(code=14, message="from the status")
    assert ApiError.from_status(grpc.StatusCode.UNAVAILABLE, "", status).message == (
        "from the status"
    )


def test_unknown_detail_types_are_skipped() -> None:
    unknown = any_pb2.Any()
    unknown.Pack(error_details_pb2.DebugInfo(detail="stack"))
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo())
    retry_info = error_details_pb2.RetryInfo()
    retry_info.retry_delay.FromMilliseconds(250)
    retry.Pack(retry_info)
    status = status_pb2.Status(code=14, message="m", details=[unknown, retry])
    error = ApiError.from_status(grpc.StatusCode.UNAVAILABLE, "m", status)
    assert error.retry_delay == pytest.approx(0.25)
    assert error.notes == []


def test_an_api_error_is_an_exception_with_its_summary() -> None:
    error = ApiError(grpc.StatusCode.NOT_FOUND, "order 'x' not found", "ORDER_NOT_FOUND")
    with pytest.raises(ApiError, match="NOT_FOUND: order 'x' not found"):
        raise error
