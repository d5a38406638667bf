"""A small typed wrapper over the generated stubs.

`PhoneSeller` holds the channels (one per distinct address: a single one through the gateway)
and has one method per call a user makes. A failed call raises `ApiError`, which carries what
the server put into the rich status (`grpc-status-details-bin`): the `ErrorInfo` reason, the
`BadRequest` field violations, the `RetryInfo` delay.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as customer_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.payment.v1 import payment_service_pb2_grpc as payment_grpc
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as promotion_grpc
from phoneseller.store.v1 import store_service_pb2 as store_pb
from phoneseller.store.v1 import store_service_pb2_grpc as store_grpc

from client.signin import CUSTOMER, DEALER, OPERATOR, Anonymous, SignIn, bearer_metadata

#: Where the gateway (Istio ingress, or the local Envoy) listens unless told otherwise.
DEFAULT_GATEWAY = "127.0.0.1:8080"
#: The environment variable that overrides `DEFAULT_GATEWAY`.
GATEWAY_ENV = "PHONESELLER_GATEWAY"
#: The services the client talks to, in the order the help lists them.
SERVICES = ("order", "payment", "promotion", "store", "customer")
#: The trailer that carries a `google.rpc.Status` with the error details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Who ships and reads the store's orders, and who reads for support, unless told otherwise.
DEFAULT_DEALER = "dealer-1"
DEFAULT_OPERATOR = "operator-1"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Addresses:
    """Where each service's calls go: all to the gateway, or some (or all) elsewhere."""

    order: str
    payment: str
    promotion: str
    store: str
    customer: str

    @classmethod
    def through(cls, gateway: str) -> Addresses:
        """Every service behind one gateway address."""
        return cls(gateway, gateway, gateway, gateway, gateway)

    def overridden(self, overrides: Mapping[str, str | None]) -> Addresses:
        """These addresses with the services named in `overrides` sent elsewhere."""
        unknown = set(overrides) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        changes = {name: address for name, address in overrides.items() if address}
        return replace(self, **changes)

    def of(self, service: str) -> str:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        address: str = getattr(self, service)
        return address


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, from `google.rpc.BadRequest`."""

    field: str
    description: str


@dataclass(eq=False)
class ApiError(Exception):
    """A failed call: its status code and message and the rich details the server sent."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)
    #: Seconds to wait before trying again (`google.rpc.RetryInfo`); None when not sent.
    retry_delay: float | None = None
    #: Other details in words: precondition failures, the missing resource.
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code_name}: {self.message}{reason}"

    @property
    def code_name(self) -> str:
        name: str = self.code.name
        return name

    @property
    def retryable(self) -> bool:
        """The server asked the caller to come back (UNAVAILABLE with a RetryInfo delay)."""
        return self.code is grpc.StatusCode.UNAVAILABLE and self.retry_delay is not None

    @classmethod
    def from_status(
        cls, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> ApiError:
        """The error of a call that ended with `code` and `message`, and maybe a rich status."""
        error = cls(code=code, message=message)
        if status is None:
            return error
        error.message = message or status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                error.reason, error.domain = info.reason, info.domain
                error.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                error.violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                error.retry_delay = retry.retry_delay.ToMilliseconds() / 1000
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                error.notes.extend(
                    f"precondition {v.type}: {v.description}" for v in failure.violations
                )
            elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                resource = error_details_pb2.ResourceInfo()
                detail.Unpack(resource)
                error.notes.append(
                    resource.description or f"{resource.resource_type} {resource.resource_name!r}"
                )
        return error

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ApiError:
        """The error of a failed call, details parsed from its `grpc-status-details-bin`."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or ""
        return cls.from_status(code, message, status_from_trailers(error))


def status_from_trailers(error: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a failed call carried in its trailers; None if none (or garbled:
    a proxy in between may answer on its own, without details)."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def new_request_id() -> str:
    """A fresh request id for an idempotent call (AIP-155)."""
    return uuid.uuid4().hex


class PhoneSeller:
    """The system as one object: `place_order`, `get_order`, `cancel_order`, … Each call has a
    deadline of `timeout` seconds, carries the bearer token `sign_in` gives for whom it acts
    (client/signin.py), and raises `ApiError` when it fails.

    Who a call acts for: the customer of `place_order`, `history` and `balance`; for
    `get_order`, `get_payment` and `cancel_order` the `customer_id` given (an operator, who may
    read anyone's, when none is given to a read); a dealer for `ship_order` and
    `list_store_orders`.
    """

    def __init__(
        self,
        addresses: Addresses,
        timeout: float = 10.0,
        sign_in: SignIn | None = None,
        *,
        dealer: str = DEFAULT_DEALER,
        operator: str = DEFAULT_OPERATOR,
    ) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self.sign_in: SignIn = sign_in or Anonymous()
        self.dealer = dealer
        self.operator = operator
        self._channels: dict[str, grpc.Channel] = {}
        self._orders = order_grpc.OrderServiceStub(self._channel(addresses.order))
        self._payments = payment_grpc.PaymentServiceStub(self._channel(addresses.payment))
        self._promotion = promotion_grpc.PromotionServiceStub(self._channel(addresses.promotion))
        self._store = store_grpc.StoreServiceStub(self._channel(addresses.store))
        self._customers = customer_grpc.CustomerServiceStub(self._channel(addresses.customer))

    def _channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address)
        return self._channels[address]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> PhoneSeller:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _as(self, role: str, subject: str) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.sign_in.token(role, subject))

    def _reader(self, customer_id: str | None) -> tuple[tuple[str, str], ...]:
        """A read as that customer, or as the operator when no customer is given."""
        if customer_id:
            return self._as(CUSTOMER, customer_id)
        return self._as(OPERATOR, self.operator)

    def _call(
        self,
        method: Any,
        request: Message,
        response_type: type[M],
        metadata: tuple[tuple[str, str], ...],
    ) -> M:
        try:
            response = method(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise ApiError.from_rpc_error(exc) from None
        if not isinstance(response, response_type):
            raise TypeError(f"expected {response_type.__name__}, got {type(response).__name__}")
        return response

    def place_order(
        self, customer_id: str, item: str, quantity: int, unit_price: int, request_id: str
    ) -> order_pb.Order:
        request = order_pb.PlaceOrderRequest(
            customer_id=customer_id,
            item=item,
            quantity=quantity,
            unit_price=unit_price,
            request_id=request_id,
        )
        return self._call(
            self._orders.PlaceOrder, request, order_pb.Order, self._as(CUSTOMER, customer_id)
        )

    def get_order(self, order_id: str, customer_id: str | None = None) -> order_pb.Order:
        request = order_pb.GetOrderRequest(order_id=order_id)
        return self._call(self._orders.GetOrder, request, order_pb.Order, self._reader(customer_id))

    def cancel_order(self, order_id: str, request_id: str, customer_id: str) -> order_pb.Order:
        """Cancel the order as its customer (only they may)."""
        request = order_pb.CancelOrderRequest(order_id=order_id, request_id=request_id)
        return self._call(
            self._orders.CancelOrder, request, order_pb.Order, self._as(CUSTOMER, customer_id)
        )

    def get_payment(self, payment_id: str, customer_id: str | None = None) -> payment_pb.Payment:
        request = payment_pb.GetPaymentRequest(payment_id=payment_id)
        return self._call(
            self._payments.GetPayment, request, payment_pb.Payment, self._reader(customer_id)
        )

    def balance(self, customer_id: str) -> promotion_pb.PointBalance:
        request = promotion_pb.GetPointBalanceRequest(customer_id=customer_id)
        return self._call(
            self._promotion.GetPointBalance,
            request,
            promotion_pb.PointBalance,
            self._as(CUSTOMER, customer_id),
        )

    def ship_order(self, order_id: str, request_id: str = "") -> store_pb.StoreOrder:
        request = store_pb.ShipOrderRequest(order_id=order_id, request_id=request_id)
        return self._call(
            self._store.ShipOrder, request, store_pb.StoreOrder, self._as(DEALER, self.dealer)
        )

    def list_store_orders(
        self, page_size: int = 0, page_token: str = ""
    ) -> store_pb.ListStoreOrdersResponse:
        request = store_pb.ListStoreOrdersRequest(page_size=page_size, page_token=page_token)
        return self._call(
            self._store.ListStoreOrders,
            request,
            store_pb.ListStoreOrdersResponse,
            self._as(DEALER, self.dealer),
        )

    def history(self, customer_id: str) -> customer_pb.CustomerHistory:
        request = customer_pb.GetCustomerHistoryRequest(customer_id=customer_id)
        return self._call(
            self._customers.GetCustomerHistory,
            request,
            customer_pb.CustomerHistory,
            self._as(CUSTOMER, customer_id),
        )
