"""The benchmark's client: closed-loop sagas through the gateway, a gentle watch on a sample of
them, and the sweep that counts which sagas settled.

Closed loop: each of N workers places an order, cancels it at once (with probability
`cancel_share`) when it came back PAID, and starts the next. N calls are in flight at any
moment, so the rate is what the system gives at that concurrency, not a rate we impose. A
failed call is not retried: it is counted, and the worker pauses ERROR_PAUSE_SECONDS before
its next order, so that a system that fails fast is not hammered in a tight loop of failures.
A failed cancel leaves a kept order.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.customer.v1 import customer_service_pb2_grpc as customer_grpc
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc

from benchmarks.latency import ErrorTally, Latency, error_reason
from client.signin import SignIn, bearer_metadata

Metadata = tuple[tuple[str, str], ...]

ITEM = "Galaxy S25"
QUANTITIES = (1, 2, 3)
#: At most 3 × 1,600,000 = 4,800,000 won: below payment's decline limit (5,000,000), so every
#: order is paid.
UNIT_PRICES = range(300_000, 1_600_001, 10_000)
#: The gateway's route timeout to order is 10 s; we give the call the same.
CALL_TIMEOUT_SECONDS = 10.0
ERROR_PAUSE_SECONDS = 0.1
#: Connections to the gateway for the workers: Envoy serves one connection on one worker
#: thread, so a single connection would measure one Envoy thread, not the gateway.
CHANNELS = 4
#: The watch polls a sampled saga after 20 % of its age so far (20 ms to 500 ms): a saga of
#: 1 s costs ~18 polls of a one-order history, and the estimate (the midpoint between the
#: last poll that did not see the end state and the first that did) is within ±10 %.
POLL_SHARE = 0.2
POLL_MIN_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5
#: No more sampled sagas watched at once than this, so a backlog cannot snowball the polls.
MAX_WATCHED = 200
#: The drain waits for the sampled sagas and for this many of the last ones placed: events
#: flow roughly in commit order, so once the last ones settle, nearly all earlier ones have.
TAIL_SAGAS = 8
SWEEP_CONCURRENCY = 16
SWEEP_ATTEMPTS = 3
#: How many unsettled sagas a sweep describes.
STUCK_SHOWN = 10

#: The events a settled saga has in the view's timeline.
KEPT_EVENTS = frozenset({"Ordered", "PayCompleted", "PromoCompleted"})
CANCELLED_EVENTS = KEPT_EVENTS | {"PromoCancelled", "PayCancelled", "OrderCancelled"}


class Outcome(enum.Enum):
    """The end state a saga should reach, from what the client was told."""

    KEPT = "kept"
    CANCELLED = "cancelled"
    #: The cancel ended UNAVAILABLE or without the service saying why (a timeout, an error
    #: Envoy made): it may end kept or cancelled, but whole.
    EITHER = "either"


def events(view: Any) -> set[str]:
    """The event types in an OrderHistory's timeline."""
    return {entry.event_type for entry in view.timeline}


def kept_settled(view: Any) -> bool:
    """PAID (or shipped) with its points granted and none reversed."""
    return (
        view.status in (order_pb.ORDER_STATUS_PAID, order_pb.ORDER_STATUS_SHIPPED)
        and events(view) >= KEPT_EVENTS
        and view.points_granted > 0
        and view.points_reversed == 0
    )


def cancelled_settled(view: Any) -> bool:
    """CANCELLED, refunded, and every granted point clawed back."""
    return (
        view.status == order_pb.ORDER_STATUS_CANCELLED
        and events(view) >= CANCELLED_EVENTS
        and view.points_granted > 0
        and view.points_reversed == view.points_granted
    )


class Verdict(enum.Enum):
    """Where a saga is, as the view shows it."""

    KEPT = "kept"
    CANCELLED = "cancelled"
    #: Ended where nobody asked it to go: CancelOrder refused (it changed nothing), yet the
    #: points were clawed back (or the order cancelled). Nothing more will happen to it.
    DIVERGED = "diverged"
    #: Not at its end yet (or never to get there).
    OPEN = "open"


def verdict(view: Any, expected: Outcome) -> Verdict:
    """Judge an OrderHistory against the end the client's answers promised."""
    kept, cancelled = kept_settled(view), cancelled_settled(view)
    clawed_back = view.points_reversed > 0 or "PromoCancelled" in events(view)
    if expected is Outcome.KEPT and (clawed_back or view.status == order_pb.ORDER_STATUS_CANCELLED):
        return Verdict.DIVERGED
    if kept and expected is not Outcome.CANCELLED:
        return Verdict.KEPT
    if cancelled and expected is not Outcome.KEPT:
        return Verdict.CANCELLED
    return Verdict.OPEN


@dataclass
class Saga:
    """An order PlaceOrder answered PAID."""

    order_id: str
    customer_id: str
    #: time.perf_counter() when PlaceOrder was sent: a saga's age counts from there.
    placed_at: float
    expected: Outcome = Outcome.KEPT


@dataclass
class Phase:
    """One stretch of traffic (a warm-up, a measured window, a minute of soak): what it saw."""

    label: str
    #: Unique in the run: prefixes the request ids and customer ids of this phase, so that a
    #: customer's history holds this phase's orders only and the sweep reads no others.
    key: str
    customers: int
    place: Latency = field(default_factory=Latency)
    cancel: Latency = field(default_factory=Latency)
    #: Sampled sagas, by the phase in which the view was seen to settle them.
    saga: Latency = field(default_factory=Latency)
    errors: ErrorTally = field(default_factory=ErrorTally)
    #: What PlaceOrder answered, by order status.
    statuses: Counter[str] = field(default_factory=Counter)
    sagas: list[Saga] = field(default_factory=list)
    cancelled: int = 0
    customers_used: set[str] = field(default_factory=set)
    samples: int = 0
    samples_unsettled: int = 0
    samples_diverged: int = 0
    #: GetCustomerHistory calls of the watch (the sample's and the drain's), to show its cost.
    polls: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def placed(self) -> int:
        return sum(self.statuses.values())

    @property
    def seconds(self) -> float:
        """From start to end (to now while it runs); never 0, since rates divide by it."""
        return max((self.ended_at or time.perf_counter()) - self.started_at, 1e-9)

    def customer(self, rng: random.Random) -> str:
        return f"{self.key}-c{rng.randrange(self.customers)}"


@dataclass(frozen=True)
class Sweep:
    """The view's state, after the drain, of every saga a phase placed."""

    #: Kept plus cancelled: the sagas that reached the end they were sent to.
    completed: int
    kept: int
    cancelled: int
    diverged: int
    #: In the view, but not (yet) at an end.
    unsettled: int
    #: Not in the view at all.
    missing: int
    #: Customers whose history could not be read (they count their sagas as missing).
    unread_customers: int
    #: The first few diverged, unsettled or missing sagas, as the view showed them.
    stuck: tuple[str, ...] = ()

    @classmethod
    def not_yet(cls) -> Sweep:
        """For figures shown before the sweep (a soak minute as it ends)."""
        return cls(0, 0, 0, 0, 0, 0, 0)


class ClosedLoop:
    """N workers, each awaiting `step(worker)` again as soon as it returns, until stopped.

    `step` returns False when its call failed: the worker then pauses before the next one.
    """

    def __init__(self, step: Callable[[int], Awaitable[bool]]) -> None:
        self._step = step
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []

    def start(self, clients: int) -> None:
        self._stopping = False
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(clients)]

    async def stop(self) -> None:
        """Let every worker finish the call it is in (cancelling it would be an error)."""
        self._stopping = True
        await asyncio.gather(*self._workers)
        self._workers = []

    async def cancel(self) -> None:
        """Abandon the calls in flight (on the way out after Ctrl-C or an error)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            if not await self._step(index):
                await asyncio.sleep(ERROR_PAUSE_SECONDS)


def gateway_channels(gateway: str, count: int) -> list[Any]:
    # A local subchannel pool per channel: otherwise gRPC shares one connection between
    # channels with the same target and arguments.
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(gateway, options=options) for _ in range(count)]


class SagaLoad:
    """Sagas through the gateway at a given concurrency, recorded into the current Phase."""

    def __init__(
        self,
        gateway: str,
        *,
        sign_in: SignIn,
        cancel_share: float,
        sample_share: float,
        customers: int,
        seed: int,
    ) -> None:
        # Each customer places and cancels with a token of their own, as a user does; the
        # watching and sweeping read as an operator (who may read anyone's history).
        self._sign_in = sign_in
        self._operator = bearer_metadata(sign_in.token("operator", "bench-operator"))
        self.cancel_share = cancel_share
        self.sample_share = sample_share
        self.customers = customers
        self._rng = random.Random(seed)
        self._run_key = f"b{self._rng.getrandbits(24):06x}"
        self._channels = gateway_channels(gateway, CHANNELS + 1)
        self._orders = [order_grpc.OrderServiceStub(c) for c in self._channels[:CHANNELS]]
        # Watching and sweeping have a connection of their own, beside the workers'.
        self._customers = customer_grpc.CustomerServiceStub(self._channels[CHANNELS])
        self._loop = ClosedLoop(self._step)
        self._sequence = itertools.count()
        self._sample_ids = itertools.count()
        self._watchers: set[asyncio.Task[None]] = set()
        self.phase = self.new_phase("idle")

    async def close(self) -> None:
        await self._loop.cancel()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for channel in self._channels:
            await channel.close()

    @property
    def watching(self) -> int:
        return len(self._watchers)

    def new_phase(self, label: str) -> Phase:
        return Phase(label, f"{self._run_key}-{label}", self.customers)

    # --- running ------------------------------------------------------------------------

    def start(self, clients: int, phase: Phase) -> None:
        self.phase = phase
        phase.started_at = time.perf_counter()
        self._loop.start(clients)

    def switch(self, phase: Phase) -> None:
        """Record into a new phase from now on, without stopping the workers (the soak)."""
        now = time.perf_counter()
        self.phase.ended_at = now
        phase.started_at = now
        self.phase = phase

    async def stop(self) -> None:
        await self._loop.stop()
        self.phase.ended_at = time.perf_counter()

    async def run(self, clients: int, seconds: float, phase: Phase) -> None:
        self.start(clients, phase)
        await asyncio.sleep(seconds)
        await self.stop()

    async def _step(self, worker: int) -> bool:
        phase = self.phase
        stub = self._orders[worker % CHANNELS]
        request_id = f"{phase.key}-{next(self._sequence)}"
        sample = self._rng.random() < self.sample_share and self.watching < MAX_WATCHED
        customer = f"{phase.key}-s{next(self._sample_ids)}" if sample else phase.customer(self._rng)
        request = order_pb.PlaceOrderRequest(
            customer_id=customer,
            item=ITEM,
            quantity=self._rng.choice(QUANTITIES),
            unit_price=self._rng.choice(UNIT_PRICES),
            request_id=request_id,
        )
        signed_in = bearer_metadata(self._sign_in.token("customer", customer))
        sent = time.perf_counter()
        try:
            order = await stub.PlaceOrder(request, timeout=CALL_TIMEOUT_SECONDS, metadata=signed_in)
        except grpc.aio.AioRpcError as error:
            phase.errors.record("PlaceOrder", error)
            return False
        phase.place.record(time.perf_counter() - sent)
        phase.statuses[order_pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")] += 1
        phase.customers_used.add(customer)
        if order.status != order_pb.ORDER_STATUS_PAID:
            return True
        saga = Saga(order.order_id, customer, sent)
        phase.sagas.append(saga)
        answered = True
        if self._rng.random() < self.cancel_share:
            answered = await self._cancel(stub, phase, saga, request_id, signed_in)
        if sample:
            self._watch(phase, saga)
        return answered

    async def _cancel(
        self, stub: Any, phase: Phase, saga: Saga, request_id: str, signed_in: Metadata
    ) -> bool:
        request = order_pb.CancelOrderRequest(order_id=saga.order_id, request_id=f"{request_id}-x")
        sent = time.perf_counter()
        try:
            order = await stub.CancelOrder(
                request, timeout=CALL_TIMEOUT_SECONDS, metadata=signed_in
            )
        except grpc.aio.AioRpcError as error:
            phase.errors.record("CancelOrder", error)
            # A refusal (FAILED_PRECONDITION, …) with an ErrorInfo changed nothing. UNAVAILABLE
            # means "not now": the payment finishes the cancel by itself if the points came
            # back after all, and drops it otherwise; a bare status (a timeout, Envoy's own
            # error) leaves it open too. Either way it must end kept or cancelled, whole.
            refused = error_reason(error) != "-" and error.code() is not grpc.StatusCode.UNAVAILABLE
            saga.expected = Outcome.KEPT if refused else Outcome.EITHER
            return False
        phase.cancel.record(time.perf_counter() - sent)
        if order.status == order_pb.ORDER_STATUS_CANCELLED:
            saga.expected = Outcome.CANCELLED
            phase.cancelled += 1
        return True

    # --- watching -----------------------------------------------------------------------

    def _watch(self, phase: Phase, saga: Saga) -> None:
        phase.samples += 1
        task = asyncio.create_task(self._sample(saga))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _sample(self, saga: Saga) -> None:
        ended_at, end = await self._ended(saga)
        # Into the phase in which it ended: a soak minute reports the sagas it saw end.
        if end is Verdict.DIVERGED:
            self.phase.samples_diverged += 1
        else:
            self.phase.saga.record(ended_at - saga.placed_at)

    async def _ended(self, saga: Saga) -> tuple[float, Verdict]:
        """When the view came to show the saga at an end (a time.perf_counter() value), and
        which end."""
        last_open = saga.placed_at
        while True:
            age = time.perf_counter() - saga.placed_at
            await asyncio.sleep(min(max(age * POLL_SHARE, POLL_MIN_SECONDS), POLL_MAX_SECONDS))
            sent = time.perf_counter()
            view = await self._view(saga)
            end = Verdict.OPEN if view is None else verdict(view, saga.expected)
            if end is not Verdict.OPEN:
                return (last_open + sent) / 2, end
            last_open = sent

    async def _view(self, saga: Saga) -> Any | None:
        self.phase.polls += 1
        try:
            history = await self._customers.GetCustomerHistory(
                customer_pb.GetCustomerHistoryRequest(customer_id=saga.customer_id),
                timeout=CALL_TIMEOUT_SECONDS,
                metadata=self._operator,
            )
        except grpc.aio.AioRpcError as error:
            self.phase.errors.record("GetCustomerHistory", error)
            return None
        return next((o for o in history.orders if o.order_id == saga.order_id), None)

    async def drain(self, phase: Phase, timeout: float) -> float:
        """Wait, at most `timeout` seconds, until the sampled sagas and the last few placed
        have settled; sampled sagas still open then count as unsettled. Returns the wait."""
        start = time.perf_counter()
        tails = {asyncio.create_task(self._ended(s)) for s in phase.sagas[-TAIL_SAGAS:]}
        waiting: set[asyncio.Task[Any]] = set(self._watchers) | tails
        if waiting:
            done, pending = await asyncio.wait(waiting, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()  # a bug in the watch must not pass for a slow system
            phase.samples_unsettled += len(pending - tails)
        return time.perf_counter() - start

    # --- counting -----------------------------------------------------------------------

    async def sweep(self, phase: Phase) -> Sweep:
        """Read the history of every customer the phase used, and judge each of its sagas."""
        views: dict[str, Any] = {}
        semaphore = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def read(customer: str) -> bool:
            async with semaphore:
                for _ in range(SWEEP_ATTEMPTS):
                    try:
                        history = await self._customers.GetCustomerHistory(
                            customer_pb.GetCustomerHistoryRequest(customer_id=customer),
                            timeout=CALL_TIMEOUT_SECONDS,
                            metadata=self._operator,
                        )
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.2)
                        continue
                    views.update((o.order_id, o) for o in history.orders)
                    return True
                return False

        read_ok = await asyncio.gather(*(read(c) for c in sorted(phase.customers_used)))
        return judge(phase.sagas, views, unread=read_ok.count(False))


def judge(sagas: Iterable[Saga], views: dict[str, Any], *, unread: int) -> Sweep:
    ends: Counter[Verdict] = Counter()
    missing = 0
    stuck: list[str] = []
    for saga in sagas:
        view = views.get(saga.order_id)
        if view is None:
            missing += 1
            stuck.append(f"{saga.order_id} expected {saga.expected.value}: not in the view")
            continue
        end = verdict(view, saga.expected)
        ends[end] += 1
        if end in (Verdict.DIVERGED, Verdict.OPEN):
            stuck.append(describe_unsettled(saga, view, end))
    return Sweep(
        completed=ends[Verdict.KEPT] + ends[Verdict.CANCELLED],
        kept=ends[Verdict.KEPT],
        cancelled=ends[Verdict.CANCELLED],
        diverged=ends[Verdict.DIVERGED],
        unsettled=ends[Verdict.OPEN],
        missing=missing,
        unread_customers=unread,
        stuck=tuple(stuck[:STUCK_SHOWN]),
    )


def describe_unsettled(saga: Saga, view: Any, end: Verdict) -> str:
    """What the view shows of a saga that did not settle, to tell a slow one from a lost one."""
    events = ",".join(entry.event_type for entry in view.timeline)
    status = order_pb.OrderStatus.Name(view.status).removeprefix("ORDER_STATUS_")
    return (
        f"{end.value}: {saga.order_id} expected {saga.expected.value}: view {status}, points "
        f"{view.points_granted} granted {view.points_reversed} reversed, events {events}"
    )


@dataclass
class EchoCalls:
    """What the reference primitive (Health/Check through the gateway) did."""

    latency: Latency = field(default_factory=Latency)
    errors: ErrorTally = field(default_factory=ErrorTally)
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def calls(self) -> int:
        return self.latency.count

    @property
    def seconds(self) -> float:
        return max((self.ended_at or time.perf_counter()) - self.started_at, 1e-9)


class EchoLoad:
    """The same closed loop, calling grpc.health.v1.Health/Check through the gateway: a unary
    call through Envoy to the order service that touches neither database nor bus."""

    def __init__(self, gateway: str) -> None:
        self._channels = gateway_channels(gateway, CHANNELS)
        self._stubs = [health_pb2_grpc.HealthStub(c) for c in self._channels]
        self._loop = ClosedLoop(self._step)
        self.calls = EchoCalls()

    async def close(self) -> None:
        await self._loop.cancel()
        for channel in self._channels:
            await channel.close()

    async def run(self, clients: int, seconds: float) -> EchoCalls:
        self.calls = EchoCalls(started_at=time.perf_counter())
        self._loop.start(clients)
        await asyncio.sleep(seconds)
        await self._loop.stop()
        self.calls.ended_at = time.perf_counter()
        return self.calls

    async def _step(self, worker: int) -> bool:
        calls = self.calls
        sent = time.perf_counter()
        try:
            await self._stubs[worker % CHANNELS].Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            calls.errors.record("Health/Check", error)
            return False
        calls.latency.record(time.perf_counter() - sent)
        return True
