"""Reading the end state of a running system, and asking cheaply whether it has settled.

The state is read as a client sees it, through the gateway: every order (GetOrder), its
payment (GetPayment), every customer's ledger (GetPointBalance) and view
(GetCustomerHistory), the store's dealer orders (ListStoreOrders). The databases, read-only,
give what no API shows: which orders exist at all (and their request ids), how many payments
an order has, cancel requests not ended, outboxes and dead letters. JetStream gives the
consumers' state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.store.v1 import store_service_pb2 as store_pb
from sqlalchemy import func, select

from chaos.access import NatsAccess, ReadOnlyDatabase, connect_nats, open_read_only
from chaos.gateway import Gateway
from chaos.history import RETRIED_CODES, Operation
from chaos.signin import OPERATOR, Credentials
from chaos.state import (
    ConsumerState,
    DeadLetter,
    EndState,
    Ledger,
    LedgerEntry,
    OrderState,
    PaymentState,
    View,
    ViewOrder,
)
from services.kit.events import STREAM
from services.kit.tables import dead_letters, outbox
from services.order.repository import orders
from services.payment.repository import cancellations, payments

T = TypeVar("T")
K = TypeVar("K")

#: Calls in flight while reading the state (the system is idle by then).
READ_CONCURRENCY = 16
#: How long one read may be retried (Envoy may still be counting a replica healthy).
READ_DEADLINE_SECONDS = 30.0
STORE_PAGE_SIZE = 500  # the store's largest page
#: The services with a durable consumer (payment consumes no events).
CONSUMERS = ("order", "promotion", "store", "customer")


def status_name(enum_type: Any, value: int, prefix: str) -> str:
    """`ORDER_STATUS_PAID` → `PAID`; the UNSPECIFIED value → ""."""
    name = str(enum_type.Name(value)).removeprefix(prefix)
    return "" if name == "UNSPECIFIED" else name


@dataclass(frozen=True)
class Sources:
    """Where the state is: the gateway, NATS, and each service's database URL."""

    gateway: str
    nats: NatsAccess
    databases: dict[str, str]


@dataclass
class Quiet:
    """The cheap signs of a settled system, read in a few queries."""

    outbox: dict[str, int] = field(default_factory=dict)
    pending_cancellations: int = 0
    ordered: int = 0
    consumers: dict[str, ConsumerState] = field(default_factory=dict)
    error: str = ""

    @property
    def settled(self) -> bool:
        return (
            not self.error
            and not any(self.outbox.values())
            and not self.pending_cancellations
            and not self.ordered
            and len(self.consumers) == len(CONSUMERS)
            and all(not c.pending and not c.ack_pending for c in self.consumers.values())
        )

    def describe(self) -> str:
        if self.error:
            return f"not readable yet: {self.error[:80]}"
        behind = sum(c.pending + c.ack_pending for c in self.consumers.values())
        return (
            f"outbox {sum(self.outbox.values())}, events not yet handled {behind}, "
            f"cancels open {self.pending_cancellations}, orders ORDERED {self.ordered}"
        )


class Observer:
    def __init__(self, sources: Sources, credentials: Credentials) -> None:
        self.sources = sources
        self.credentials = credentials
        self.gateway = Gateway(sources.gateway, count=2)
        self.databases: dict[str, ReadOnlyDatabase] = {
            service: open_read_only(url) for service, url in sources.databases.items()
        }
        self._limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def close(self) -> None:
        await self.gateway.close()
        for database in self.databases.values():
            await database.close()

    # --- the cheap probe ---------------------------------------------------------------

    async def quiet(self) -> Quiet:
        quiet = Quiet()
        try:
            for service, database in self.databases.items():
                count = await database.rows(select(func.count().label("n")).select_from(outbox))
                quiet.outbox[service] = int(count[0]["n"])
            waiting = await self.databases["payment"].rows(
                select(func.count().label("n")).select_from(cancellations)
            )
            quiet.pending_cancellations = int(waiting[0]["n"])
            ordered = await self.databases["order"].rows(
                select(func.count().label("n")).where(orders.c.status == "ORDERED")
            )
            quiet.ordered = int(ordered[0]["n"])
            quiet.consumers = await self.consumers()
        except Exception as exc:  # a database or NATS still coming back
            quiet.error = f"{type(exc).__name__}: {exc}"
        return quiet

    async def consumers(self) -> dict[str, ConsumerState]:
        client = await connect_nats(self.sources.nats)
        try:
            js = client.jetstream()
            found = {}
            for name in CONSUMERS:
                info = await js.consumer_info(STREAM, name)
                found[name] = ConsumerState(int(info.num_pending or 0), info.num_ack_pending)
            return found
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    # --- the whole state ---------------------------------------------------------------

    async def read(self, history: Sequence[Operation]) -> EndState:
        state = EndState()
        order_rows = await self.databases["order"].rows(
            select(orders.c.order_id, orders.c.customer_id, orders.c.request_id)
        )
        request_ids = {r["order_id"]: r["request_id"] or "" for r in order_rows}
        # The orders the database holds, and those an answer named (a lost one is in no row).
        order_ids = {op.order_id for op in history if op.order_id} | set(request_ids)
        customers = sorted({op.customer for op in history} | {r["customer_id"] for r in order_rows})

        found = await self._each(sorted(order_ids), self._order)
        for order_id, order in found:
            if order is None:
                state.missing_orders.add(order_id)
            else:
                state.orders[order_id] = OrderState(
                    order_id=order_id,
                    customer_id=order.customer_id,
                    status=status_name(order_pb.OrderStatus, order.status, "ORDER_STATUS_"),
                    amount=order.amount,
                    payback_points=order.payback_points,
                    payment_id=order.payment_id,
                    request_id=request_ids.get(order_id, ""),
                )
        await self._read_payments(state)
        for customer, ledger in await self._each(customers, self._ledger):
            if ledger is not None:
                state.ledgers[customer] = ledger
        for customer, view in await self._each(customers, self._view):
            if view is not None:
                state.views[customer] = view
        state.store = await self._store()
        await self._read_kit_tables(state)
        state.consumers = await self.consumers()
        return state

    async def _read_payments(self, state: EndState) -> None:
        rows = await self.databases["payment"].rows(
            select(payments.c.payment_id, payments.c.order_id, payments.c.customer_id)
        )
        payment_ids = sorted(r["payment_id"] for r in rows)
        for payment_id, payment in await self._each(payment_ids, self._payment):
            if payment is None:
                continue  # a row GetPayment does not find: counted, but with no status
            state.payments.setdefault(payment.order_id, []).append(
                PaymentState(
                    payment_id=payment_id,
                    order_id=payment.order_id,
                    customer_id=payment.customer_id,
                    amount=payment.amount,
                    status=status_name(payment_pb.PaymentStatus, payment.status, "PAYMENT_STATUS_"),
                )
            )
        pending = await self.databases["payment"].rows(select(cancellations.c.payment_id))
        state.pending_cancellations = [r["payment_id"] for r in pending]

    async def _read_kit_tables(self, state: EndState) -> None:
        for service, database in self.databases.items():
            count = await database.rows(select(func.count().label("n")).select_from(outbox))
            state.outbox[service] = int(count[0]["n"])
            letters = await database.rows(
                select(
                    dead_letters.c.event_id,
                    dead_letters.c.event_type,
                    dead_letters.c.order_id,
                    dead_letters.c.error,
                )
            )
            state.dead_letters += [DeadLetter(service=service, **row) for row in letters]

    # --- one read each, through the gateway -------------------------------------------

    async def _each(
        self, keys: Iterable[K], read: Callable[[K], Awaitable[T | None]]
    ) -> list[tuple[K, T | None]]:
        async def one(key: K) -> tuple[K, T | None]:
            async with self._limit:
                return key, await read(key)

        return list(await asyncio.gather(*(one(k) for k in keys)))

    async def _call(self, call: Callable[..., Awaitable[T]], request: Any) -> T | None:
        """A read as the operator (it reads anyone's data), with the careful client's
        retries; None when the service says NOT_FOUND."""
        metadata = self.credentials.metadata_for(OPERATOR)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_DEADLINE_SECONDS
        while True:
            try:
                return await call(request, timeout=10, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    return None
                if error.code().name not in RETRIED_CODES or loop.time() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def _order(self, order_id: str) -> order_pb.Order | None:
        request = order_pb.GetOrderRequest(order_id=order_id)
        return await self._call(self.gateway.stubs(0).orders.GetOrder, request)

    async def _payment(self, payment_id: str) -> payment_pb.Payment | None:
        request = payment_pb.GetPaymentRequest(payment_id=payment_id)
        return await self._call(self.gateway.stubs(1).payments.GetPayment, request)

    async def _ledger(self, customer: str) -> Ledger | None:
        request = promotion_pb.GetPointBalanceRequest(customer_id=customer)
        balance = await self._call(self.gateway.stubs(0).promotion.GetPointBalance, request)
        if balance is None:
            return None
        return Ledger(
            customer_id=customer,
            balance=balance.balance,
            entries=tuple(
                LedgerEntry(
                    order_id=e.order_id,
                    kind=status_name(promotion_pb.LedgerEntryKind, e.kind, "LEDGER_ENTRY_KIND_"),
                    points=e.points,
                )
                for e in balance.entries
            ),
        )

    async def _view(self, customer: str) -> View | None:
        request = customer_pb.GetCustomerHistoryRequest(customer_id=customer)
        history = await self._call(self.gateway.stubs(1).customers.GetCustomerHistory, request)
        if history is None:
            return None
        return View(
            customer_id=customer,
            point_balance=history.point_balance,
            orders={
                o.order_id: ViewOrder(
                    order_id=o.order_id,
                    status=status_name(order_pb.OrderStatus, o.status, "ORDER_STATUS_"),
                    payment_status=status_name(
                        payment_pb.PaymentStatus, o.payment_status, "PAYMENT_STATUS_"
                    ),
                    store_status=status_name(
                        store_pb.StoreOrderStatus, o.store_status, "STORE_ORDER_STATUS_"
                    ),
                    amount=o.amount,
                    points_granted=o.points_granted,
                    points_reversed=o.points_reversed,
                )
                for o in history.orders
            },
        )

    async def _store(self) -> dict[str, str]:
        found: dict[str, str] = {}
        token = ""
        while True:
            request = store_pb.ListStoreOrdersRequest(page_size=STORE_PAGE_SIZE, page_token=token)
            page = await self._call(self.gateway.stubs(0).store.ListStoreOrders, request)
            if page is None:
                return found
            for o in page.store_orders:
                found[o.order_id] = status_name(
                    store_pb.StoreOrderStatus, o.status, "STORE_ORDER_STATUS_"
                )
            token = page.next_page_token
            if not token:
                return found
