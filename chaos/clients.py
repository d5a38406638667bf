"""Careful clients: customers placing orders and cancelling some, through the gateway.

Each client signs in as its customer (signin.py) and loops: place an order, sometimes cancel
one of its paid orders (the one just placed, or an earlier one, so that some clawbacks meet
a grant that is already there and some race ahead of it), and now and then read its point
balance. The cancel and the read run beside the orders, one at a time: a customer whose cancel
waits for the points system to come back goes on ordering (the points system being down never
stops an order), and the timeline shows it.

It is careful the way AIP-194 asks: UNAVAILABLE and DEADLINE_EXCEEDED are retried with the
same request_id, after the RetryInfo delay when the service gave one (else a short jittered
back-off), until the operation's deadline; only then does it give up, and the operation's
outcome is unknown. Every operation goes into the history as it ends.

The client never cancels an order PlaceOrder did not answer PAID, so it never meets
ORDER_PAYMENT_PENDING (an ORDERED order, to be finished by placing it again first).

All clients are tasks of one event loop over a few channels (grpc.aio): the machine's cores
belong to the system under test.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb

from chaos.gateway import Gateway, failed_attempt
from chaos.history import RETRIED_CODES, HistoryWriter, Kind, Operation, Outcome
from chaos.signin import Credentials

T = TypeVar("T")
Clock = Callable[[], float]

ITEM = "Galaxy S25"
QUANTITIES = (1, 2, 3)
#: At most 3 × 1,600,000 = 4,800,000 won: below payment's decline limit (5,000,000).
UNIT_PRICES = range(300_000, 1_600_001, 10_000)
#: 3 × 2,000,000 = 6,000,000 won: above the limit, so the payment is declined (a result).
DECLINED_UNIT_PRICE, DECLINED_QUANTITY = 2_000_000, 3
#: Back-off between retries when the service gave no RetryInfo: full jitter, doubling.
FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 1.0
#: After an operation that did not end ok, a client pauses this long before its next: a
#: system that refuses at once is not to be hammered in a tight loop of refusals.
PAUSE_AFTER_FAILURE_SECONDS = 0.1


@dataclass(frozen=True)
class ClientSettings:
    clients: int = 24
    #: Share of paid orders a client cancels.
    cancel_share: float = 0.3
    #: Share of orders priced above the payment's decline limit.
    decline_share: float = 0.05
    #: A client reads its point balance after every `read_every` orders.
    read_every: int = 5
    #: A client signs in as a new customer after this many orders (keeps histories short).
    orders_per_customer: int = 100
    #: How long a careful client keeps retrying one operation before giving up (unknown).
    operation_deadline: float = 30.0
    #: The deadline of one attempt (the gateway's route timeout to order is 10 s).
    attempt_timeout: float = 10.0
    #: Pause between a client's operations (0: a closed loop at full speed).
    think_time: float = 0.0


@dataclass
class Tally:
    """Running counts for the progress line."""

    ended: Counter[tuple[Kind, Outcome]] = field(default_factory=Counter)
    failed_attempts: int = 0


class Client:
    """One careful client (see the module's docstring)."""

    def __init__(
        self,
        index: int,
        load: Load,
    ) -> None:
        self.index = index
        self.load = load
        self.settings = load.settings
        self.rng = random.Random(f"{load.seed}-{index}")
        self.stubs = load.gateway.stubs(index)
        self.placed = 0
        #: Orders of the current customer answered PAID and not (asked to be) cancelled:
        #: (order id, the PlaceOrder request id).
        self.kept: list[tuple[str, str]] = []
        #: The cancel or read running beside the orders.
        self.aside: asyncio.Task[bool] | None = None

    @property
    def customer(self) -> str:
        session = self.placed // self.settings.orders_per_customer
        return f"{self.load.run_key}-c{self.index}-{session}"

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                if not await self.step():
                    await asyncio.sleep(PAUSE_AFTER_FAILURE_SECONDS)
                if self.settings.think_time:
                    await asyncio.sleep(self.settings.think_time)
        finally:
            if self.aside is not None:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    self.aside.cancel()  # interrupted: the operation beside ends unknown
                # Stopped: the operation beside ends as it would (within its deadline).
                await asyncio.gather(self.aside, return_exceptions=True)

    @property
    def busy_aside(self) -> bool:
        return self.aside is not None and not self.aside.done()

    async def step(self) -> bool:
        """One order, maybe a cancel or a read beside it; whether the order was answered."""
        if self.placed % self.settings.orders_per_customer == 0:
            self.kept = []  # a new customer signs in
        customer = self.customer
        request_id = f"{self.load.run_key}-{self.index}-{self.placed}"
        self.placed += 1
        order = await self.place(customer, request_id)
        if order is not None and order.status == order_pb.ORDER_STATUS_PAID:
            self.kept.append((order.order_id, request_id))
            if self.rng.random() < self.settings.cancel_share and not self.busy_aside:
                # Half the time the order just placed (its grant may not be there yet), else
                # an earlier one of this customer's.
                pick = -1 if self.rng.random() < 0.5 else self.rng.randrange(len(self.kept))
                order_id, placed_with = self.kept.pop(pick)
                self.aside = asyncio.create_task(
                    self.cancel(customer, order_id, f"{placed_with}-cancel")
                )
        if self.placed % self.settings.read_every == 0 and not self.busy_aside:
            self.aside = asyncio.create_task(self.read_balance(customer))
        return order is not None

    def terms(self) -> tuple[int, int]:
        if self.rng.random() < self.settings.decline_share:
            return DECLINED_QUANTITY, DECLINED_UNIT_PRICE
        return self.rng.choice(QUANTITIES), self.rng.choice(UNIT_PRICES)

    async def place(self, customer: str, request_id: str) -> order_pb.Order | None:
        quantity, unit_price = self.terms()
        request = order_pb.PlaceOrderRequest(
            customer_id=customer,
            item=ITEM,
            quantity=quantity,
            unit_price=unit_price,
            request_id=request_id,
        )
        op = self.load.operation(self.index, customer, Kind.PLACE, request_id)
        op.amount = quantity * unit_price
        metadata = self.load.credentials.metadata_for(customer)
        return await self.load.perform(
            op,
            lambda timeout: self.stubs.orders.PlaceOrder(
                request, timeout=timeout, metadata=metadata
            ),
            order_answer,
        )

    async def cancel(self, customer: str, order_id: str, request_id: str) -> bool:
        request = order_pb.CancelOrderRequest(order_id=order_id, request_id=request_id)
        op = self.load.operation(self.index, customer, Kind.CANCEL, request_id)
        op.order_id = order_id
        metadata = self.load.credentials.metadata_for(customer)
        cancelled = await self.load.perform(
            op,
            lambda timeout: self.stubs.orders.CancelOrder(
                request, timeout=timeout, metadata=metadata
            ),
            order_answer,
        )
        return cancelled is not None

    async def read_balance(self, customer: str) -> bool:
        request = promotion_pb.GetPointBalanceRequest(customer_id=customer)
        op = self.load.operation(self.index, customer, Kind.BALANCE, f"read-{self.placed}")
        metadata = self.load.credentials.metadata_for(customer)
        read = await self.load.perform(
            op,
            lambda timeout: self.stubs.promotion.GetPointBalance(
                request, timeout=timeout, metadata=metadata
            ),
            lambda balance: {"balance": balance.balance},
        )
        return read is not None


def order_answer(order: order_pb.Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "status": order_pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_"),
        "amount": order.amount,
        "payback_points": order.payback_points,
        "payment_id": order.payment_id,
    }


class Load:
    """`settings.clients` careful clients on this event loop, recording into `history`."""

    def __init__(
        self,
        gateway: Gateway,
        credentials: Credentials,
        history: HistoryWriter,
        settings: ClientSettings,
        clock: Clock,
        *,
        seed: int,
        run_key: str,
    ) -> None:
        self.gateway = gateway
        self.credentials = credentials
        self.history = history
        self.settings = settings
        self.clock = clock
        self.seed = seed
        self.run_key = run_key
        self.tally = Tally()
        self._rng = random.Random(seed)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(Client(i, self).run(self._stopping), name=f"client-{i}")
            for i in range(self.settings.clients)
        ]

    async def stop(self) -> None:
        """No new operations; each client ends the one it is in (within its deadline)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def abandon(self) -> None:
        """Interrupt the operations in flight (Ctrl-C): they are recorded as unknown."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def operation(self, client: int, customer: str, kind: Kind, request_id: str) -> Operation:
        return Operation(client, customer, kind, request_id, invoked=round(self.clock(), 4))

    async def perform(
        self,
        op: Operation,
        call: Callable[[float], Awaitable[T]],
        answer: Callable[[T], dict[str, Any]],
    ) -> T | None:
        """Call until answered, refused, or past the deadline; record the operation."""
        try:
            result = await self._careful(op, call)
            if result is not None:
                op.outcome, op.answer = Outcome.OK, answer(result)
                op.order_id = op.order_id or str(op.answer.get("order_id", ""))
            return result
        except asyncio.CancelledError:
            op.outcome, op.code, op.reason = Outcome.UNKNOWN, "CANCELLED", "run interrupted"
            raise
        finally:
            op.completed = round(self.clock(), 4)
            self.history.record(op)
            self.tally.ended[op.kind, op.outcome] += 1
            self.tally.failed_attempts += len(op.attempts)

    async def _careful(self, op: Operation, call: Callable[[float], Awaitable[T]]) -> T | None:
        deadline = op.invoked + self.settings.operation_deadline
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            timeout = max(min(self.settings.attempt_timeout, deadline - self.clock()), 0.05)
            try:
                return await call(timeout)
            except grpc.aio.AioRpcError as error:
                attempt = failed_attempt(error, self.clock())
            op.attempts.append(attempt)
            op.code, op.reason = attempt.code, attempt.reason
            if attempt.code not in RETRIED_CODES:
                op.outcome = Outcome.UNKNOWN if attempt.ambiguous else Outcome.FAILED
                return None
            if attempt.retry_delay is not None:
                pause = attempt.retry_delay
            else:
                pause = self._rng.uniform(0, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            if self.clock() + pause >= deadline:
                op.outcome = Outcome.UNKNOWN
                return None
            await asyncio.sleep(pause)
