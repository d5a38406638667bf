"""StoreService over gRPC: ListStoreOrders and ShipOrder."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from datetime import datetime

import grpc
from phoneseller.store.v1 import store_service_pb2 as pb
from phoneseller.store.v1 import store_service_pb2_grpc as pb_grpc

from services.kit import errors
from services.kit.clock import as_utc, timestamp
from services.kit.db import Database
from services.kit.validation import Violations
from services.store.domain import (
    DetailsPendingError,
    NotReceivedError,
    OrderCancelledError,
    ShipRefusedError,
    StoreOrder,
    StoreOrderStatus,
)
from services.store.repository import StoreRepository

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Tries of a ShipOrder that lost a race with another writer of the same order.
WRITE_ATTEMPTS = 3

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


def ship_refused(exc: ShipRefusedError) -> errors.ServiceError:
    order_id = exc.order_id
    if isinstance(exc, NotReceivedError):
        return errors.not_found("store_order", order_id)
    if isinstance(exc, OrderCancelledError):
        return errors.failed_precondition(
            "STORE_ORDER_CANCELLED",
            f"store order {order_id!r} was cancelled and cannot be shipped",
            f"storeOrders/{order_id}",
            {"order_id": order_id},
        )
    if isinstance(exc, DetailsPendingError):
        return errors.unavailable(
            "STORE_ORDER_DETAILS_PENDING",
            f"the store has not yet received what to ship for order {order_id!r}; "
            "try again shortly",
            retry_after_seconds=1.0,
            metadata={"order_id": order_id},
        )
    raise AssertionError(f"unmapped refusal {exc!r}")


class _RacedError(Exception):
    """Another writer changed the order between our read and our write."""


class StoreServicer(pb_grpc.StoreServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    async def ListStoreOrders(
        self, request: pb.ListStoreOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStoreOrdersResponse:
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
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self.database.unit_of_work(read_only=True) as uow:
            orders = await StoreRepository(uow.connection).page(
                status=_STATUS_FILTER.get(request.status),
                after=(after.receive_time, after.order_id) if after else None,
                limit=size + 1,
            )
        page, more = orders[:size], len(orders) > size
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
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        for _ in range(WRITE_ATTEMPTS):
            try:
                return to_proto(await self._ship(request.order_id))
            except _RacedError:
                # A cancel or another ShipOrder won; look again.
                log.debug("ShipOrder raced; retrying")
        raise errors.unavailable(
            "CONCURRENT_UPDATE",
            f"store order {request.order_id!r} is changing right now; try again",
            retry_after_seconds=0.1,
            metadata={"order_id": request.order_id},
        )

    async def _ship(self, order_id: str) -> StoreOrder:
        async with self.database.unit_of_work() as uow:
            orders = StoreRepository(uow.connection)
            current = await orders.get(order_id, for_update=True)
            if current is None:
                raise errors.not_found("store_order", order_id)
            try:
                result = current.shipped()
            except ShipRefusedError as exc:
                raise ship_refused(exc) from None
            if result is current:
                return current  # shipped already: nothing more to do
            if not await orders.save(result, expected=StoreOrderStatus.RECEIVED):
                raise _RacedError
            uow.emit(*result.events)
            await uow.commit()
        log.info("store order shipped", extra={"item": result.item, "quantity": result.quantity})
        return result
