"""The rendered mesh on the real Envoy, between real grpc.aio servers.

Every test starts its own backends (mesh.testing.FakeBackend: raw-bytes handlers for the method
paths, grpc.health.v1, reflection) and its own Envoy on free 127.0.0.1 ports, and waits on
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.envoy import RenderOptions, cluster_name
from mesh.policy import MeshPolicy, parse_fault
from mesh.testing import CallResult, FakeBackend, call_unary, local_topology, wait_until
from mesh.topology import GRPC_SERVICES, INTERNAL_METHODS, PUBLIC_METHODS
from tests.support.identity import Metadata

CLAW = "/phoneseller.promotion.v1.PromotionService/ClawBackPoints"
BALANCE = "/phoneseller.promotion.v1.PromotionService/GetPointBalance"
PAY = "/phoneseller.payment.v1.PaymentService/Pay"
LIST_STORE = "/phoneseller.store.v1.StoreService/ListStoreOrders"
PLACE_ORDER = "/phoneseller.order.v1.OrderService/PlaceOrder"
GET_ORDER = "/phoneseller.order.v1.OrderService/GetOrder"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

# Retry conditions under which Envoy retries an attempt that hit its per_try_timeout.
PER_TRY_TIMEOUT_RETRIED_BY = {"5xx", "gateway-error", "reset"}

# How a clawback that the policy ends comes back. Envoy's own timer (route or per-try timeout)
# answers UNAVAILABLE "upstream request timeout". The per-try timeout also travels upstream as
# grpc-timeout, so the destination's inbound sidecar may end the last attempt a moment first,
# with DEADLINE_EXCEEDED "downstream duration timeout"; which one wins is a race of two timers
# set to the same instant.
ENDED_BY_THE_POLICY = {
    (grpc.StatusCode.UNAVAILABLE, "upstream request timeout"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "downstream duration timeout"),
}

# Scheduling slack for timing assertions on a busy 2-core machine.
SLACK = 0.15
#: Concurrent clawbacks in the breaker tests: more than the clawback's pool admits, by this many.
BEYOND_THE_BREAKER = 12
FAST = 0.1


def _delay(delay: str) -> Any:
    return parse_fault({"delay": {"fixedDelay": delay, "percentage": {"value": 100}}})


def _methods(service: str) -> list[str]:
    full = GRPC_SERVICES[service]
    return [p for p in (*PUBLIC_METHODS, *INTERNAL_METHODS) if p.startswith(f"/{full}/")]


def _with_retry_on(policy: MeshPolicy, service: str, route_name: str, retry_on: str) -> MeshPolicy:
    dest = policy[service]
    routes = tuple(
        dataclasses.replace(
            r,
            retries=dataclasses.replace(r.retries, retry_on=retry_on),  # type: ignore[type-var]
        )
        if r.name == route_name
        else r
        for r in dest.routes
    )
    return dataclasses.replace(
        policy,
        destinations={**policy.destinations, service: dataclasses.replace(dest, routes=routes)},
    )


def _clawback_cluster(policy: MeshPolicy) -> str:
    """The sidecar's cluster the clawback's route sends to (its subset's, in the chart's values),
    where its circuit breaker, retries and timeouts are counted."""
    route = policy["promotion"].route_for("ClawBackPoints")
    assert route is not None
    return cluster_name("promotion", "outbound", route.subset)


def _expected_clawback_failure(policy: MeshPolicy) -> float:
    """When a call to a promotion that never answers ends, by the policy: at the per-try
    timeout if a timed-out attempt is not retried, else at the route timeout."""
    route = policy["promotion"].route_for("ClawBackPoints")
    assert route is not None
    assert route.timeout is not None
    retries = route.retries
    if retries is None or retries.attempts == 0 or retries.per_try_timeout is None:
        return route.timeout.seconds
    tokens = {t.strip() for t in (retries.retry_on or "").split(",")}
    if tokens & PER_TRY_TIMEOUT_RETRIED_BY:
        return route.timeout.seconds
    return min(retries.per_try_timeout.seconds, route.timeout.seconds)


async def _burst(channel: Any, path: str, n: int) -> list[CallResult]:
    return list(await asyncio.gather(*(call_unary(channel, path, deadline=5) for _ in range(n))))


# -- (1) route timeout --------------------------------------------------------------------


async def test_a_slow_promotion_fails_the_clawback_when_the_policy_says(
    policy: MeshPolicy, start_mesh: Any
) -> None:
    """A promotion that never answers in time ends the clawback when the chart's values say:
    at the per-try timeout (200 ms) if their retryOn does not retry a timed-out attempt, else at
    the 610 ms route timeout (UNAVAILABLE 'upstream request timeout'). The promotion service
    never sees the call."""
    async with FakeBackend("promotion", _methods("promotion")) as promo:
        topo = local_topology({"promotion": [promo.address]})
        mesh = await start_mesh(policy.with_fault("promotion", _delay("2s")), topo)
        await mesh.wait_healthy(_clawback_cluster(policy), 1)
        expected = _expected_clawback_failure(policy)
        async with grpc.aio.insecure_channel(mesh.address("promotion")) as ch:
            r = await call_unary(ch, CLAW, deadline=5)
        assert (r.code, r.details) in ENDED_BY_THE_POLICY, r
        assert expected - 0.02 <= r.elapsed <= expected + SLACK, (r.elapsed, expected)
        assert promo.total_calls == 0
        stats = await mesh.admin.cluster_stats_async(_clawback_cluster(policy))
        assert stats["upstream_rq_per_try_timeout"] + stats["upstream_rq_timeout"] >= 1


async def test_the_route_timeout_ends_a_retried_clawback_at_610ms(
    policy: MeshPolicy, start_mesh: Any
) -> None:
    """When timed-out attempts are retried (retryOn + reset), the call runs to the 610 ms route
    timeout: three 200 ms attempts plus back-off end at 600-610 ms, cut at 610 ms."""
    route = policy["promotion"].route_for("ClawBackPoints")
    assert route is not None
    assert route.timeout is not None
    assert route.retries is not None
    retried = _with_retry_on(
        policy, "promotion", route.name, f"{route.retries.retry_on},reset"
    ).with_fault("promotion", _delay("2s"))
    async with FakeBackend("promotion", _methods("promotion")) as promo:
        topo = local_topology({"promotion": [promo.address]})
        mesh = await start_mesh(retried, topo)
        await mesh.wait_healthy(_clawback_cluster(policy), 1)
        async with grpc.aio.insecure_channel(mesh.address("promotion")) as ch:
            r = await call_unary(ch, CLAW, deadline=5)
            stats = await mesh.admin.cluster_stats_async(_clawback_cluster(policy))
            # A caller's shorter deadline still wins (max_grpc_timeout = route timeout).
            short = await call_unary(ch, CLAW, deadline=0.3)
        timeout = route.timeout.seconds
        assert timeout == pytest.approx(0.610)
        assert route.retries.per_try_timeout is not None
        attempts_end = (route.retries.attempts + 1) * route.retries.per_try_timeout.seconds
        assert (r.code, r.details) in ENDED_BY_THE_POLICY, r
        assert min(timeout, attempts_end) - 0.02 <= r.elapsed <= timeout + SLACK, r.elapsed
        assert stats["upstream_rq_retry"] == route.retries.attempts
        assert stats["upstream_rq_per_try_timeout"] >= route.retries.attempts
        # Envoy's timer (route timeout = the caller's grpc-timeout) races the caller's own.
        assert short.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert short.elapsed < 0.3 + SLACK < timeout
        assert promo.total_calls == 0


# -- (2) retries --------------------------------------------------------------------------


async def test_a_failing_replica_is_retried_then_ejected(
    policy: MeshPolicy, start_mesh: Any
) -> None:
    """Pay retries on UNAVAILABLE on another host; after consecutive5xxErrors failures the bad
    replica is ejected, and a passing health check does not bring it back."""
    async with (
        FakeBackend("payment-good", _methods("payment")) as good,
        FakeBackend("payment-bad", _methods("payment")) as bad,
    ):
        bad.fail_with = grpc.StatusCode.UNAVAILABLE
        topo = local_topology({"payment": [good.address, bad.address]})
        mesh = await start_mesh(policy, topo)
        await mesh.wait_healthy("outbound|payment", 2)
        od = policy["payment"].traffic_policy.outlier_detection
        assert od is not None
        assert od.consecutive_5xx_errors is not None
        results: list[CallResult] = []
        async with grpc.aio.insecure_channel(mesh.address("payment")) as ch:
            # Sequential calls: LEAST_REQUEST picks either replica; go on until the bad one
            # has failed consecutive5xxErrors times.
            for _ in range(200):
                results.append(await call_unary(ch, PAY))
                if bad.total_calls >= od.consecutive_5xx_errors:
                    break
            assert bad.total_calls == od.consecutive_5xx_errors
            assert all(r.ok for r in results), [r for r in results if not r.ok]
            stats = await mesh.admin.cluster_stats_async("outbound|payment")
            # Every failed attempt was retried (on the other replica, previous_hosts).
            assert stats["upstream_rq_retry"] == bad.total_calls

            await mesh.admin.wait_for_async(
                "the bad replica ejected",
                lambda: (
                    "failed_outlier_check"
                    in next(
                        h for h in mesh.admin.hosts("outbound|payment") if h.hostname == "payment-1"
                    ).flags
                ),
                within=5,
            )
            checks = (await mesh.admin.cluster_stats_async("outbound|payment"))[
                "health_check.success"
            ]
            # Two more rounds of passing health checks: the ejection must stay.
            await mesh.admin.wait_for_async(
                "two more health-check rounds",
                lambda: (
                    mesh.admin.cluster_stats("outbound|payment")["health_check.success"]
                    >= checks + 4
                ),
                within=5,
            )
            bad_host = next(
                h
                for h in await mesh.admin.hosts_async("outbound|payment")
                if h.hostname == "payment-1"
            )
            assert "failed_outlier_check" in bad_host.flags
            before = bad.total_calls
            more = [await call_unary(ch, PAY) for _ in range(10)]
            assert all(r.ok for r in more)
            assert bad.total_calls == before
        stats = await mesh.admin.cluster_stats_async("outbound|payment")
        # UNAVAILABLE counts as 503: both a 5xx and a gateway error; either rule may eject.
        assert stats["outlier_detection.ejections_enforced_total"] == 1
        assert stats["outlier_detection.ejections_active"] == 1


# -- (3) circuit breaker ------------------------------------------------------------------


async def test_a_delayed_promotion_trips_the_circuit_breaker(
    policy: MeshPolicy, start_mesh: Any
) -> None:
    """Delay on promotion + 20 concurrent ClawBackPoints: the calls beyond http2MaxRequests
    (+ http1MaxPendingRequests) fail at once with UNAVAILABLE (overflow); the admitted ones
    fail at the policy's timeout; nothing reaches the service."""
    pool = policy["promotion"].policy_for("ClawBackPoints").connection_pool
    assert pool is not None
    assert pool.http is not None
    admitted_max = (pool.http.http2_max_requests or 0) + (pool.http.http1_max_pending_requests or 0)
    async with FakeBackend("promotion", _methods("promotion")) as promo:
        topo = local_topology({"promotion": [promo.address]})
        mesh = await start_mesh(policy.with_fault("promotion", _delay("1s")), topo)
        await mesh.wait_healthy(_clawback_cluster(policy), 1)
        expected = _expected_clawback_failure(policy)
        async with grpc.aio.insecure_channel(mesh.address("promotion")) as ch:
            await call_unary(ch, CLAW)  # opens the upstream connection
            await asyncio.to_thread(mesh.admin.reset_counters)
            results = await _burst(ch, CLAW, admitted_max + BEYOND_THE_BREAKER)
        fast = [r for r in results if r.elapsed < FAST]
        slow = [r for r in results if r.elapsed >= FAST]
        assert len(fast) >= BEYOND_THE_BREAKER, results
        assert all(r.code == grpc.StatusCode.UNAVAILABLE and "overflow" in r.details for r in fast)
        assert 1 <= len(slow) <= admitted_max
        route = policy["promotion"].route_for("ClawBackPoints")
        assert route is not None
        assert route.retries is not None
        assert route.retries.per_try_timeout is not None
        # A retried attempt needs the cluster's retry budget (maxRetries); an admitted call
        # that finds it spent ends after its first try instead of at the route timeout.
        earliest = min(expected, route.retries.per_try_timeout.seconds)
        for r in slow:
            assert (r.code, r.details) in ENDED_BY_THE_POLICY, r
            assert earliest - 0.02 <= r.elapsed <= expected * 2 + SLACK, (r.elapsed, expected)
        stats = await mesh.admin.cluster_stats_async(_clawback_cluster(policy))
        overflow = stats["upstream_rq_pending_overflow"] + stats["upstream_rq_active_overflow"]
        assert overflow == len(fast)
        assert promo.total_calls == 0


async def test_customers_reads_are_not_refused_by_the_clawbacks_breaker(
    policy: MeshPolicy, start_mesh: Any, signed_in: Metadata
) -> None:
    """The breaker guards the clawback only. With promotion slow (a delay fault), 60 concurrent
    GetPointBalance through the gateway and 20 concurrent ClawBackPoints through payment's
    sidecar, all at once: the reads go to the host's cluster with its ample pool, all 40 are in
    flight together and all succeed; the clawbacks go to their subset's cluster and overflow its
    breaker as before, while the host's clusters refuse nothing."""
    reads = 60
    read_route = policy["promotion"].route_for("GetPointBalance")
    assert read_route is not None
    assert read_route.subset is None, "customers' reads must not go to the clawback's subset"
    pool = policy["promotion"].policy_for("ClawBackPoints").connection_pool
    assert pool is not None
    assert pool.http is not None
    admitted_max = (pool.http.http2_max_requests or 0) + (pool.http.http1_max_pending_requests or 0)
    clawbacks = admitted_max + BEYOND_THE_BREAKER
    assert admitted_max < reads, "the reads alone would overflow the clawback's breaker"
    reads_cluster = cluster_name("promotion", "gateway", read_route.subset)
    claw_cluster = _clawback_cluster(policy)
    async with FakeBackend("promotion", _methods("promotion")) as promo:
        topo = local_topology({"promotion": [promo.address]})
        # Longer than the clawback may take, well within the reads' route timeout (5 s).
        mesh = await start_mesh(policy.with_fault("promotion", _delay("2s")), topo)
        for name in (reads_cluster, claw_cluster):
            await mesh.wait_healthy(name, 1)
        async with (
            grpc.aio.insecure_channel(mesh.address("gateway")) as gateway,
            grpc.aio.insecure_channel(mesh.address("promotion")) as sidecar,
        ):
            bursts = asyncio.gather(
                asyncio.gather(
                    *(
                        call_unary(gateway, BALANCE, deadline=10, metadata=signed_in)
                        for _ in range(reads)
                    )
                ),
                _burst(sidecar, CLAW, clawbacks),
            )
            # All reads are held by the delay at the same time: far more than the clawback's
            # breaker would let through.
            try:
                await mesh.admin.wait_for_async(
                    "reads in flight",
                    lambda: (
                        mesh.admin.counter(f"cluster.{reads_cluster}.upstream_rq_active") >= reads
                    ),
                    within=10,
                )
                crowded = True
            except TimeoutError:
                crowded = False
            read_results, claw_results = await bursts
        assert all(r.ok for r in read_results), [r for r in read_results if not r.ok]
        assert crowded, f"the {reads} reads were never in flight at once in {reads_cluster}"
        assert promo.calls[BALANCE] == reads
        refused = (
            "upstream_rq_pending_overflow",
            "upstream_rq_active_overflow",
            "upstream_cx_overflow",
        )
        for name in (reads_cluster, cluster_name("promotion", "outbound")):
            stats = await mesh.admin.cluster_stats_async(name)
            assert {k: stats.get(k, 0) for k in refused} == dict.fromkeys(refused, 0), name
        # The clawbacks: refused beyond what the breaker admits, the others end by the policy.
        assert not any(r.ok for r in claw_results), claw_results
        overflowed = [r for r in claw_results if "overflow" in r.details]
        assert len(overflowed) >= clawbacks - admitted_max, claw_results
        stats = await mesh.admin.cluster_stats_async(claw_cluster)
        assert stats["upstream_rq_pending_overflow"] + stats["upstream_rq_active_overflow"] == len(
            overflowed
        )
        assert promo.calls[CLAW] == 0


async def test_a_client_side_fault_delay_escapes_timeout_and_circuit_breaker(
    policy: MeshPolicy, start_mesh: Any
) -> None:
    """Istio's placement (fault filter on the caller's route), measured: the delay runs before
    the router, so a 700 ms delay does not trip the 610 ms route timeout and no call fails fast
    during the delay: this is why the local mesh injects faults on the inbound side."""
    async with FakeBackend("promotion", _methods("promotion")) as promo:
        topo = local_topology({"promotion": [promo.address]})
        mesh = await start_mesh(
            policy.with_fault("promotion", _delay("700ms")),
            topo,
            options=RenderOptions(fault_placement="outbound"),
        )
        await mesh.wait_healthy(_clawback_cluster(policy), 1)
        async with grpc.aio.insecure_channel(mesh.address("promotion")) as ch:
            single = await call_unary(ch, CLAW)
            results = await _burst(ch, CLAW, 20)
        assert single.ok, single
        assert single.elapsed >= 0.69  # longer than the 610 ms route timeout, and it succeeded
        assert all(r.elapsed >= 0.69 for r in results), [r.elapsed for r in results]
        assert any(r.ok for r in results)
        assert promo.total_calls >= 2


# -- (4) gateway ---------------------------------------------------------------------------


async def test_gateway_serves_public_rpcs_and_refuses_internal_ones(
    policy: MeshPolicy, start_mesh: Any, signed_in: Metadata
) -> None:
    backends = {
        name: FakeBackend(
            name,
            _methods(name),
            reflection_services=[GRPC_SERVICES[name]] if name == "order" else (),
        )
        for name in GRPC_SERVICES
    }
    try:
        for b in backends.values():
            await b.start()
        topo = local_topology({n: [b.address] for n, b in backends.items()})
        mesh = await start_mesh(policy, topo)
        for name in GRPC_SERVICES:
            await mesh.wait_healthy(f"gateway|{name}", 1)
        async with grpc.aio.insecure_channel(mesh.address("gateway")) as ch:
            for path in PUBLIC_METHODS:
                if path == HEALTH_CHECK:
                    continue
                r = await call_unary(ch, path, metadata=signed_in)
                assert r.ok, (path, r)
            for path in INTERNAL_METHODS:
                r = await call_unary(ch, path, metadata=signed_in)
                assert r.code == grpc.StatusCode.PERMISSION_DENIED, (path, r)
                assert "does not expose" in r.details
            # Health checks go to order.
            health = await call_unary(
                ch, HEALTH_CHECK, health_pb2.HealthCheckRequest().SerializeToString()
            )
            assert health.ok, health
            assert health_pb2.HealthCheckResponse.FromString(health.response or b"").status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            # Server reflection goes to order.
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            reqs = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            replies = [r async for r in stub.ServerReflectionInfo(reqs, timeout=5)]
            names = {s.name for s in replies[0].list_services_response.service}
            assert "phoneseller.order.v1.OrderService" in names
            unknown = await call_unary(ch, "/phoneseller.billing.v1.BillingService/Bill")
            assert unknown.code == grpc.StatusCode.UNIMPLEMENTED
        for path in PUBLIC_METHODS:
            if path != HEALTH_CHECK:
                owner = next(b for b in backends.values() if path in b.methods)
                assert owner.calls[path] == 1, path
        for path in INTERNAL_METHODS:
            assert all(b.calls[path] == 0 for b in backends.values())
    finally:
        for b in backends.values():
            await b.stop()


# -- (5) draining replica -----------------------------------------------------------------


async def test_a_not_serving_replica_stops_getting_traffic(
    policy: MeshPolicy, start_mesh: Any, signed_in: Metadata
) -> None:
    async with (
        FakeBackend("store-0", _methods("store")) as s0,
        FakeBackend("store-1", _methods("store")) as s1,
    ):
        topo = local_topology({"store": [s0.address, s1.address]})
        mesh = await start_mesh(policy, topo)
        await mesh.wait_healthy("gateway|store", 2)
        async with grpc.aio.insecure_channel(mesh.address("gateway")) as ch:
            warm = [await call_unary(ch, LIST_STORE, metadata=signed_in) for _ in range(20)]
            assert all(r.ok for r in warm)
            assert s0.total_calls > 0
            assert s1.total_calls > 0

            await s1.set_serving(False)
            started = time.monotonic()
            hc = topo.health_check
            limit = hc.interval.seconds * hc.unhealthy_threshold + hc.timeout.seconds + 1
            await mesh.admin.wait_for_async(
                "store-1 marked unhealthy",
                lambda: mesh.admin.healthy_hosts("gateway|store") == ["store-0"],
                within=limit,
            )
            detected = time.monotonic() - started
            before = s1.total_calls
            after = [await call_unary(ch, LIST_STORE, metadata=signed_in) for _ in range(20)]
            assert all(r.ok for r in after)
            assert s1.total_calls == before

            await s1.set_serving(True)
            await mesh.wait_healthy("gateway|store", 2, within=limit)
            await wait_until(
                "store-1 serving again",
                lambda: _call_count_grows(ch, s1, signed_in),
                within=limit,
            )
        assert detected <= limit


async def _call_count_grows(ch: Any, backend: FakeBackend, signed_in: Metadata) -> bool:
    before = backend.total_calls
    for _ in range(5):
        await call_unary(ch, LIST_STORE, metadata=signed_in)
    return backend.total_calls > before


# -- (6) HTTP/JSON transcoding ------------------------------------------------------------


def _message_classes(descriptor_set: Path, *names: str) -> list[Any]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    files = {f.name: f for f in fds.file}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return [message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names]


def _http(
    url: str, signed_in: Metadata, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"content-type": "application/json", **dict(signed_in)},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def test_http_json_is_transcoded_to_the_grpc_backend(
    policy: MeshPolicy, start_mesh: Any, descriptor_set: Path, signed_in: Metadata
) -> None:
    place_req, get_req, order_msg = _message_classes(
        descriptor_set,
        "phoneseller.order.v1.PlaceOrderRequest",
        "phoneseller.order.v1.GetOrderRequest",
        "phoneseller.order.v1.Order",
    )
    seen: list[Any] = []

    async def place_order(request: bytes, context: Any) -> bytes:
        req = place_req.FromString(request)
        seen.append(req)
        order = order_msg(
            order_id="o-1",
            customer_id=req.customer_id,
            item=req.item,
            quantity=req.quantity,
            unit_price=req.unit_price,
            amount=req.unit_price * req.quantity,
            status=2,  # ORDER_STATUS_PAID
        )
        return bytes(order.SerializeToString())

    async def get_order(request: bytes, context: Any) -> bytes:
        req = get_req.FromString(request)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no order {req.order_id}")
        return b""

    async with FakeBackend("order", _methods("order")) as order:
        order.handlers[PLACE_ORDER] = place_order
        order.handlers[GET_ORDER] = get_order
        topo = local_topology({"order": [order.address]})
        mesh = await start_mesh(policy, topo, descriptor_set_path=descriptor_set)
        await mesh.wait_healthy("gateway|order", 1)
        base = f"http://{mesh.address('gateway')}"
        status, body = await asyncio.to_thread(
            _http,
            f"{base}/v1/orders",
            signed_in,
            {"customer_id": "c-7", "item": "Galaxy S25", "quantity": 2, "unit_price": 1_200_000},
        )
        assert status == 200, body
        assert body["order_id"] == "o-1"
        assert body["customer_id"] == "c-7"
        assert body["amount"] == "2400000"  # int64 as a JSON string
        assert body["status"] == "ORDER_STATUS_PAID"
        assert body["payback_points"] == "0"  # primitives printed even when zero
        assert len(seen) == 1
        assert seen[0].quantity == 2
        # gRPC errors become HTTP status + JSON (convert_grpc_status).
        status, body = await asyncio.to_thread(_http, f"{base}/v1/orders/o-404", signed_in)
        assert status == 404, body
        assert body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert "o-404" in body["message"]
        # The same route still serves gRPC.
        async with grpc.aio.insecure_channel(mesh.address("gateway")) as ch:
            r = await call_unary(
                ch,
                PLACE_ORDER,
                place_req(customer_id="c-8", quantity=1).SerializeToString(),
                metadata=signed_in,
            )
        assert r.ok, r
        assert order_msg.FromString(r.response).customer_id == "c-8"
