"""Every refusal the gateway makes itself is a proper error, for both protocols, on the real
Envoy (mesh/edge.py): a gRPC status with ErrorInfo (and RetryInfo where the caller should come
back) in `grpc-status-details-bin`, or a JSON `google.rpc.Status` body with the matching HTTP
code. One mesh serves every kind at once:

  order      healthy, for the token, role, route and body cases;
  promotion  slow, behind a circuit breaker of one request (overflow);
  customer   slow, behind a 300 ms route timeout without retries (upstream timeout);
  store      nothing listening (no healthy upstream).

Also here: what the gateway lets through. The verified claims reach the service and a forged
claims header does not; the token itself is not forwarded; health checks and reflection need
no token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from client.issuer import DevIssuer
from mesh import edge
from mesh.edge import Refusal
from mesh.policy import ConnectionPool, Duration, HttpPool, MeshPolicy, Retries
from mesh.testing import FakeBackend, MeshHarness, free_port, local_topology
from mesh.topology import GRPC_SERVICES, INTERNAL_METHODS, PUBLIC_METHODS
from services.kit.identity import CLAIMS_HEADER
from tests.support.identity import Metadata, bearer, issuer_in

ORDER = "/phoneseller.order.v1.OrderService"
GET_ORDER = f"{ORDER}/GetOrder"
BALANCE = "/phoneseller.promotion.v1.PromotionService/GetPointBalance"
HISTORY = "/phoneseller.customer.v1.CustomerService/GetCustomerHistory"
LIST_STORE = "/phoneseller.store.v1.StoreService/ListStoreOrders"
PAY = "/phoneseller.payment.v1.PaymentService/Pay"
#: Longer than the customer route's timeout, and than one overflowing burst takes.
SLOW_SECONDS = 2.0
BURST = 6


def methods_of(service: str) -> list[str]:
    full = GRPC_SERVICES[service]
    return [p for p in (*PUBLIC_METHODS, *INTERNAL_METHODS) if p.startswith(f"/{full}/")]


def edge_policy(policy: MeshPolicy) -> MeshPolicy:
    """The chart's policy with a breaker of one request on promotion's host cluster (the one
    customers' reads use) and a 300 ms timeout without retries on customer's routes."""
    dests = dict(policy.destinations)
    promotion = dests["promotion"]
    tiny = ConnectionPool(http=HttpPool(http1_max_pending_requests=1, http2_max_requests=1))
    dests["promotion"] = replace(
        promotion, traffic_policy=replace(promotion.traffic_policy, connection_pool=tiny)
    )
    customer = dests["customer"]
    dests["customer"] = replace(
        customer,
        routes=tuple(
            replace(r, timeout=Duration.parse("300ms"), retries=Retries(attempts=0))
            for r in customer.routes
        ),
    )
    return MeshPolicy(destinations=dests)


@dataclass
class Edge:
    mesh: MeshHarness
    issuer: DevIssuer
    stranger: DevIssuer  # another issuer's key: its tokens are badly signed for the gateway
    order: FakeBackend

    def token(self, role: str, subject: str = "alice", **options: Any) -> Metadata:
        return bearer(self.issuer.token(subject, role, **options))

    @property
    def gateway(self) -> str:
        return self.mesh.address("gateway")


@pytest.fixture
async def edge_mesh(
    policy: MeshPolicy, start_mesh: Any, issuer: DevIssuer, tmp_path: Path, descriptor_set: Path
) -> Any:
    async with (
        FakeBackend(
            "order", methods_of("order"), reflection_services=[GRPC_SERVICES["order"]]
        ) as order,
        FakeBackend("promotion", methods_of("promotion")) as promotion,
        FakeBackend("customer", methods_of("customer")) as customer,
    ):
        promotion.delay = customer.delay = SLOW_SECONDS
        nobody = f"127.0.0.1:{free_port()}"  # nothing listens: store is never healthy
        topology = local_topology(
            {
                "order": [order.address],
                "promotion": [promotion.address],
                "customer": [customer.address],
                "store": [nobody],
            }
        )
        mesh = await start_mesh(
            edge_policy(policy),
            topology,
            descriptor_set_path=descriptor_set,
        )
        for name in ("order", "promotion", "customer"):
            await mesh.wait_healthy(f"gateway|{name}", 1)
        yield Edge(mesh, issuer, issuer_in(tmp_path / "stranger"), order)


# --- gRPC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcCase:
    name: str
    path: str
    metadata: Metadata
    expected: Refusal


def grpc_cases(e: Edge) -> list[GrpcCase]:
    an_hour_ago = time.time() - 3600
    return [
        GrpcCase("no token", GET_ORDER, (), edge.TOKEN_MISSING),
        GrpcCase(
            "badly signed",
            GET_ORDER,
            bearer(e.stranger.token("alice", "customer")),
            edge.TOKEN_REJECTED,
        ),
        GrpcCase(
            "expired",
            GET_ORDER,
            e.token("customer", ttl_seconds=60, now=an_hour_ago),
            edge.TOKEN_REJECTED,
        ),
        GrpcCase(
            "wrong audience", GET_ORDER, e.token("customer", audience="other"), edge.TOKEN_REJECTED
        ),
        GrpcCase("not a JWT", GET_ORDER, bearer("not.a.jwt"), edge.TOKEN_REJECTED),
        GrpcCase("a dealer reads an order", GET_ORDER, e.token("dealer"), edge.ROLE_NOT_ALLOWED),
        GrpcCase("internal method", PAY, e.token("operator"), edge.METHOD_NOT_EXPOSED),
        GrpcCase("unknown method", "/phoneseller.billing.v1.Billing/Bill", (), edge.NO_SUCH_ROUTE),
        GrpcCase("no healthy upstream", LIST_STORE, e.token("dealer"), edge.NO_HEALTHY_UPSTREAM),
        GrpcCase("upstream timeout", HISTORY, e.token("customer"), edge.UPSTREAM_TIMEOUT),
    ]


def status_of(error: grpc.aio.AioRpcError) -> tuple[str, list[Any]]:
    """The ErrorInfo reason and the other details of the google.rpc.Status sent with `error`."""
    status = rpc_status.from_call(error)  # also checks code and message agree with it
    assert status is not None, "no grpc-status-details-bin"
    reason, others = "", []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                if isinstance(message, error_details_pb2.ErrorInfo):
                    assert message.domain == "phoneseller"
                    assert message.metadata["service"] == "gateway"
                    reason = message.reason
                else:
                    others.append(message)
    return reason, others


def check_grpc(name: str, error: grpc.aio.AioRpcError | None, expected: Refusal) -> list[str]:
    if error is None:
        return [f"{name}: succeeded, expected {expected.reason}"]
    problems = []
    if error.code().value[0] != expected.code:
        problems.append(f"{name}: {error.code().name} {error.details()!r}, expected {expected}")
        return problems
    reason, others = status_of(error)
    if reason != expected.reason:
        problems.append(f"{name}: reason {reason!r}, expected {expected.reason}")
    retry = [o for o in others if isinstance(o, error_details_pb2.RetryInfo)]
    if (expected.retry_after_seconds is not None) != bool(retry):
        problems.append(f"{name}: RetryInfo {retry}, expected after {expected.retry_after_seconds}")
    return problems


async def grpc_call(
    channel: grpc.aio.Channel, path: str, metadata: Metadata
) -> grpc.aio.AioRpcError | None:
    try:
        await channel.unary_unary(path)(b"", timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def test_every_refusal_is_a_grpc_status_with_error_info(edge_mesh: Edge) -> None:
    problems: list[str] = []
    async with grpc.aio.insecure_channel(edge_mesh.gateway) as channel:
        for case in grpc_cases(edge_mesh):
            error = await grpc_call(channel, case.path, case.metadata)
            problems += check_grpc(case.name, error, case.expected)
        # Overflow: more concurrent reads than the breaker of one admits, all held by the delay.
        burst = await asyncio.gather(
            *(grpc_call(channel, BALANCE, edge_mesh.token("customer")) for _ in range(BURST))
        )
        overflowed = [e for e in burst if e is not None]
        if not overflowed:
            problems.append("overflow: every call of the burst was admitted")
        for error in overflowed:
            problems += check_grpc("overflow", error, edge.OVERFLOW)
    assert not problems, "\n".join(problems)


# --- HTTP/JSON ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    name: str
    method: str
    path: str
    headers: Metadata
    expected: Refusal
    body: bytes | None = None


def http_cases(e: Edge) -> list[HttpCase]:
    alice = e.token("customer")
    malformed = {
        "cut short": b"{",
        "an array": b"[]",
        "null": b"null",
        "a string for a number": b'{"customer_id": "alice", "quantity": "many"}',
        "not UTF-8": b'{"customer_id": "\xff\xfe"}',
    }
    return [
        HttpCase("no token", "GET", "/v1/orders/o-1", (), edge.TOKEN_MISSING),
        HttpCase(
            "badly signed",
            "GET",
            "/v1/orders/o-1",
            bearer(e.stranger.token("alice", "customer")),
            edge.TOKEN_REJECTED,
        ),
        HttpCase(
            "a dealer reads an order",
            "GET",
            "/v1/orders/o-1",
            e.token("dealer"),
            edge.ROLE_NOT_ALLOWED,
        ),
        HttpCase("unknown route", "GET", "/v2/nothing", alice, edge.NO_SUCH_ROUTE),
        *(
            HttpCase(f"body {name}", "POST", "/v1/orders", alice, edge.MALFORMED_BODY, body)
            for name, body in malformed.items()
        ),
        HttpCase(
            "no healthy upstream",
            "GET",
            "/v1/storeOrders",
            e.token("dealer"),
            edge.NO_HEALTHY_UPSTREAM,
        ),
        HttpCase(
            "upstream timeout",
            "GET",
            "/v1/customers/alice/history",
            alice,
            edge.UPSTREAM_TIMEOUT,
        ),
    ]


def http_call(
    gateway: str, method: str, path: str, headers: Metadata, body: bytes | None = None
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        f"http://{gateway}{path}",
        data=body,
        method=method,
        headers={"content-type": "application/json", **dict(headers)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def check_http(name: str, answer: tuple[int, str, bytes], expected: Refusal) -> list[str]:
    status, content_type, raw = answer
    if status != expected.http:
        return [f"{name}: HTTP {status} {raw[:200]!r}, expected {expected.http}"]
    if not content_type.startswith("application/json"):
        return [f"{name}: content-type {content_type!r}: {raw[:200]!r}"]
    body = json.loads(raw)
    problems = []
    if body.get("code") != expected.code or not body.get("message"):
        problems.append(f"{name}: {body}, expected code {expected.code} with a message")
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in body.get("details", [])}
    info = details.get("ErrorInfo", {})
    if (info.get("reason"), info.get("domain")) != (expected.reason, "phoneseller"):
        problems.append(f"{name}: ErrorInfo {info}, expected {expected.reason}")
    if (expected.retry_after_seconds is not None) != ("RetryInfo" in details):
        problems.append(f"{name}: details {sorted(details)}, RetryInfo expected or not wrongly")
    if expected is edge.MALFORMED_BODY:
        violations = details.get("BadRequest", {}).get("field_violations", [])
        if [v.get("field") for v in violations] != ["body"]:
            problems.append(f"{name}: BadRequest {details.get('BadRequest')}")
    return problems


async def test_every_refusal_is_a_json_status_with_the_http_code(edge_mesh: Edge) -> None:
    problems: list[str] = []
    for case in http_cases(edge_mesh):
        answer = await asyncio.to_thread(
            http_call, edge_mesh.gateway, case.method, case.path, case.headers, case.body
        )
        problems += check_http(case.name, answer, case.expected)
    alice = edge_mesh.token("customer")
    burst: Sequence[tuple[int, str, bytes]] = await asyncio.gather(
        *(
            asyncio.to_thread(
                http_call, edge_mesh.gateway, "GET", "/v1/customers/alice/points", alice
            )
            for _ in range(BURST)
        )
    )
    overflowed = [a for a in burst if a[0] != 200]
    if not overflowed:
        problems.append("overflow: every request of the burst was admitted")
    for answer in overflowed:
        problems += check_http("overflow", answer, edge.OVERFLOW)
    assert not problems, "\n".join(problems)


# --- what passes ----------------------------------------------------------------------------


async def test_the_service_gets_the_verified_claims_and_never_the_token(edge_mesh: Edge) -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    async def get_order(request: bytes, context: Any) -> bytes:
        seen.append(tuple((k, v) for k, v in context.invocation_metadata()))
        return b""

    edge_mesh.order.handlers[GET_ORDER] = get_order
    forged = (
        CLAIMS_HEADER,
        base64.b64encode(b'{"sub": "mallory", "roles": ["operator"]}').decode(),
    )
    async with grpc.aio.insecure_channel(edge_mesh.gateway) as channel:
        await channel.unary_unary(GET_ORDER)(
            b"", timeout=10, metadata=(forged, *edge_mesh.token("customer", "alice"))
        )
        # Without a token, a forged header alone does not get anywhere either.
        refused = await grpc_call(channel, GET_ORDER, (forged,))
    assert refused is not None and refused.code() is grpc.StatusCode.UNAUTHENTICATED
    (metadata,) = seen
    claims = [v for k, v in metadata if k == CLAIMS_HEADER]
    assert len(claims) == 1, f"exactly the gateway's claims header: {claims}"
    payload = json.loads(base64.urlsafe_b64decode(claims[0] + "=" * (-len(claims[0]) % 4)))
    assert (payload["sub"], payload["roles"], payload["iss"]) == (
        "alice",
        ["customer"],
        "phoneseller-dev",
    )
    assert not [k for k, _ in metadata if k == "authorization"], "the token stays at the edge"


async def test_health_and_reflection_need_no_token(edge_mesh: Edge) -> None:
    async with grpc.aio.insecure_channel(edge_mesh.gateway) as channel:
        health = await channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        replies = [r async for r in stub.ServerReflectionInfo(requests, timeout=10)]
    listed = {s.name for s in replies[0].list_services_response.service}
    assert "phoneseller.order.v1.OrderService" in listed
