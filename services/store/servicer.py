"""StoreService over gRPC: validate, call a use case, convert to proto."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import grpc
from phoneseller.store.v1 import store_service_pb2 as pb
from phoneseller.store.v1 import store_service_pb2_grpc as pb_grpc

from services.kit import identity
from services.kit.clock import as_utc, timestamp
from services.kit.validation import Violations
from services.store import usecases
from services.store.domain import StoreOrder, StoreOrderStatus
from services.store.repository import StoreUnitOfWork

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_STATUS = {
    StoreOrderStatus.RECEIVED: pb.STORE_ORDER_STATUS_RECEIVED,
    StoreOrderStatus.SHIPPED: pb.STORE_ORDER_STATUS_SHIPPED,
    StoreOrderStatus.CANCELLED: pb.STORE_ORDER_STATUS_CANCELLED,
}
_STATUS_FILTER = {value: status for status, value in _STATUS.items()}


def to_proto(order: StoreOrder) -> pb.StoreOrder:
    return pb.StoreOrder(
        order_id=order.order_id,
        customer_id=order.customer_id,
        item=order.item,
        quantity=order.quantity,
        status=_STATUS[order.status],
        create_time=timestamp(order.receive_time),
        ship_time=timestamp(order.ship_time),
    )


@dataclass(frozen=True)
class PageToken:
    """Where the next page starts, bound to the status filter of the call that made it."""

    receive_time: datetime
    order_id: str
    status: int

    def encode(self) -> str:
        data = {"t": self.receive_time.isoformat(), "o": self.order_id, "s": self.status}
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageToken:
        """Raises ValueError for anything this service did not make."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            time, order_id, status = data["t"], data["o"], data["s"]
            if not (isinstance(time, str) and isinstance(order_id, str)):
                raise TypeError("wrong field types")
            if not isinstance(status, int) or isinstance(status, bool):
                raise TypeError("wrong field types")
            return cls(as_utc(datetime.fromisoformat(time)), order_id, status)
        except (ValueError, KeyError, TypeError) as exc:  # binascii.Error is a ValueError
            raise ValueError("malformed page token") from exc


class StoreServicer(pb_grpc.StoreServiceServicer):
    def __init__(self, unit_of_work: Callable[[], StoreUnitOfWork]) -> None:
        self.unit_of_work = unit_of_work

    async def ListStoreOrders(
        self, request: pb.ListStoreOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStoreOrdersResponse:
        # The store's orders are no one customer's data: the gateway lets the dealer's (and
        # the operator's) role in, the service only asks that someone signed in.
        identity.current()
        check = Violations()
        if request.page_size < 0:
            check.add("page_size", "must not be negative")
        if request.status != pb.STORE_ORDER_STATUS_UNSPECIFIED and (
            request.status not in _STATUS_FILTER
        ):
            check.add("status", f"unknown status {request.status}")
        after: PageToken | None = None
        if request.page_token:
            try:
                after = PageToken.decode(request.page_token)
            except ValueError:
                check.add("page_token", "is not a page token this service returned")
            else:
                if after.status != request.status:
                    check.add("page_token", "was returned for a call with another status filter")
        check.check()
        page, more = await usecases.list_store_orders(
            self.unit_of_work(),
            status=_STATUS_FILTER.get(request.status),
            after=(after.receive_time, after.order_id) if after else None,
            page_size=min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        )
        next_token = ""
        if more:
            last = page[-1]
            assert last.receive_time is not None
            next_token = PageToken(last.receive_time, last.order_id, request.status).encode()
        return pb.ListStoreOrdersResponse(
            store_orders=[to_proto(order) for order in page], next_page_token=next_token
        )

    async def ShipOrder(
        self, request: pb.ShipOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.StoreOrder:
        identity.current()
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        return to_proto(await usecases.ship_order(self.unit_of_work(), request.order_id))
