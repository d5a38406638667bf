"""Zero-downtime deploy: a rolling restart of every replica under a flood, and no call fails.

Two replicas of each service behind Envoy. 32 clients place orders and cancel every third
through the gateway as fast as they are answered — no pause, no client-side retries — while
every replica of every service is restarted in turn (`supervisorctl restart`: SIGTERM → the
replica reports NOT_SERVING, keeps serving while Envoy's health check takes it out, finishes
its calls in flight, exits; supervisord starts it again). The next replica goes only once the
restarted one is SERVING and Envoy counts it healthy again, as a Kubernetes rollout waits for
readiness. Every call must succeed: a rolling restart is invisible to clients, even when the
machine is saturated (the clawback's 610 ms budget and its circuit breaker hold because a saga
costs little, not because the clients are polite).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.message import Message
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc

from services.kit.config import SERVICE_NAMES
from stack.supervisor import LocalStack
from tests.e2e.saga import error_details
from tests.support.identity import Metadata, Tokens
from tests.support.stack import admin, program_pid, running_stack, stack_on_free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

REPLICAS = 2
CLIENTS = 32
#: Every call's deadline; a call that is held up this long counts as failed.
CALL_DEADLINE = 10.0
#: Services whose calls from other services pass a sidecar cluster of their own.
EAST_WEST = ("payment", "promotion")


@dataclass
class Load:
    """Clients placing orders and cancelling every third, counting every call.

    They run as tasks of one event loop on a thread of their own (grpc.aio): 32 client
    threads would spend the CPU the system under test needs.
    """

    gateway: str
    tokens: Tokens
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(CALL_DEADLINE * 2 + 10)
        assert not self._thread.is_alive(), "a client is stuck"

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _run(self) -> None:
        self._loop.run_until_complete(self._clients())
        self._loop.close()

    async def _clients(self) -> None:
        async with grpc.aio.insecure_channel(self.gateway) as channel:
            orders = order_grpc.OrderServiceStub(channel)
            await asyncio.gather(*(self._client(n, orders) for n in range(CLIENTS)))

    async def _call(
        self,
        what: str,
        method: Callable[..., Awaitable[order_pb.Order]],
        request: Message,
        signed_in: Metadata,
    ) -> order_pb.Order | None:
        """One call with its deadline; a failure is counted with its code and details."""
        began = time.monotonic()
        try:
            result = await method(request, timeout=CALL_DEADLINE, metadata=signed_in)
        except grpc.aio.AioRpcError as exc:
            reason = error_details(exc).get("reason", "")
            self.failures.append(
                f"{what} after {time.monotonic() - began:.3f}s: {exc.code().name} "
                f"{reason} {exc.details()}"
            )
            return None
        self.calls[what] += 1
        self.slowest = max(self.slowest, time.monotonic() - began)
        return result

    async def _client(self, n: int, orders: order_grpc.OrderServiceStub) -> None:
        customer = f"rolling-{n}-{uuid.uuid4().hex[:6]}"
        signed_in = self.tokens.customer(customer)
        i = 0
        while not self._stop.is_set():
            i += 1
            request = order_pb.PlaceOrderRequest(
                customer_id=customer,
                item="Galaxy S25",
                quantity=1,
                unit_price=900_000 + i,
                request_id=uuid.uuid4().hex,
            )
            order = await self._call("PlaceOrder", orders.PlaceOrder, request, signed_in)
            if order is not None and order.status != order_pb.ORDER_STATUS_PAID:
                self.failures.append(f"PlaceOrder answered {order}")
            if order is not None and i % 3 == 0:
                cancel = order_pb.CancelOrderRequest(
                    order_id=order.order_id, request_id=f"cancel-{order.order_id}"
                )
                cancelled = await self._call("CancelOrder", orders.CancelOrder, cancel, signed_in)
                if cancelled is not None and cancelled.status != order_pb.ORDER_STATUS_CANCELLED:
                    self.failures.append(f"CancelOrder answered {cancelled}")


@dataclass(frozen=True)
class Restart:
    replica: str
    old_pid: int
    new_pid: int
    seconds: float  # from `restart` until SERVING and healthy in Envoy


def restart_and_wait_healthy(stack: LocalStack, service: str, replica: int) -> Restart:
    program, name = stack.program(service, replica), stack.replica_name(service, replica)
    old = program_pid(stack, program)
    assert old > 0, f"{program} is not running"
    began = time.monotonic()
    result = stack.supervisorctl("restart", program)
    assert result.returncode == 0, result.stdout + result.stderr
    new = program_pid(stack, program)
    wait_until(lambda: stack.health()[name], timeout=30, interval=0.1, message=f"{name} SERVING")
    envoy = admin(stack)
    clusters = [f"gateway|{service}"] + ([f"outbound|{service}"] if service in EAST_WEST else [])
    for cluster in clusters:
        wait_until(
            lambda cluster=cluster: len(envoy.healthy_hosts(cluster)) == REPLICAS,  # type: ignore[misc]
            timeout=30,
            interval=0.1,
            message=f"Envoy counts {name} healthy again in {cluster}",
        )
    return Restart(name, old, new, time.monotonic() - began)


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    configured = stack_on_free_ports(tmp_path_factory.mktemp("rolling"), replicas=REPLICAS)
    with running_stack(configured) as running:
        yield running


def test_a_rolling_restart_under_load_fails_no_call(stack: LocalStack) -> None:
    load = Load(stack.gateway, Tokens(stack.issuer))
    restarts: list[Restart] = []
    load.start()
    try:
        wait_until(
            lambda: load.calls["PlaceOrder"] >= CLIENTS * 2 or load.failures,
            timeout=60,
            message="the load is flowing",
        )
        for service in SERVICE_NAMES:
            for replica in range(REPLICAS):
                restarts.append(restart_and_wait_healthy(stack, service, replica))
        # The load goes on once the last replica is back.
        calls_then = load.total
        wait_until(
            lambda: load.total >= calls_then + CLIENTS,
            timeout=30,
            message="calls after the last restart",
        )
    finally:
        load.finish()
    # Each replica drained and exited by itself (not SIGKILLed after stopwaitsecs).
    supervisord_log = (stack.logs / "supervisord.log").read_text()
    print(
        f"calls {dict(load.calls)}, slowest {load.slowest:.3f}s, failures {len(load.failures)}; "
        "restarts: "
        + ", ".join(f"{r.replica} {r.old_pid}→{r.new_pid} {r.seconds:.1f}s" for r in restarts)
    )
    assert not load.failures, "\n".join(load.failures[:20])
    assert len(restarts) == len(SERVICE_NAMES) * REPLICAS
    for restart in restarts:
        assert restart.new_pid not in (0, restart.old_pid), restart
        assert f"stopped: {restart.replica} (exit status 0)" in supervisord_log, restart
    assert "SIGKILL" not in supervisord_log, "a replica did not stop in time on SIGTERM"
    assert load.calls["PlaceOrder"] >= len(restarts) * CLIENTS
    assert load.calls["CancelOrder"] > 0
