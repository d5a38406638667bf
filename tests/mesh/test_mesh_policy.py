"""mesh.policy: the `mesh:` values loaded into typed data, exactly, and rejected when wrong."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.policy import (
    Duration,
    Fault,
    MeshPolicy,
    PolicyError,
    Retries,
    fault_cli_arg,
    fault_from_cli,
    parse_duration,
    parse_fault,
    parse_policy,
)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("610ms", 610_000_000),
        ("1s", 1_000_000_000),
        ("0.61s", 610_000_000),
        ("1m30s", 90_000_000_000),
        ("1h", 3_600_000_000_000),
        ("250ms", 250_000_000),
        ("1.5ms", 1_500_000),
        ("10us", 10_000),
        ("7ns", 7),
        ("0", 0),
        (".5s", 500_000_000),
    ],
)
def test_durations_are_parsed_exactly(text: str, nanos: int) -> None:
    assert parse_duration(text) == Duration(nanos)


@pytest.mark.parametrize("text", ["", "610", "-1s", "1 s", "1sec", "ms", "1.2.3s", "+1s"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "envoy"),
    [("610ms", "0.61s"), ("1s", "1s"), ("10s", "10s"), ("1m", "60s"), ("1.5ms", "0.0015s")],
)
def test_durations_render_as_protobuf_json(text: str, envoy: str) -> None:
    assert parse_duration(text).envoy() == envoy


def test_values_load_with_the_numbers_of_the_chart(policy: MeshPolicy) -> None:
    assert sorted(policy.destinations) == ["customer", "order", "payment", "promotion", "store"]
    promo = policy["promotion"]
    claw = promo.route_for("ClawBackPoints")
    assert claw is not None
    assert claw.name == "claw-back-points"
    assert claw.timeout == Duration.of_millis(610)
    assert claw.retries == Retries(
        attempts=1,
        per_try_timeout=Duration.of_millis(300),
        retry_on="unavailable,cancelled,connect-failure,refused-stream,reset,deadline-exceeded",
    )
    default = promo.route_for("GetPointBalance")
    assert default is not None
    assert default.is_default
    assert default.retries == Retries(attempts=0)
    # The seed's breaker is the clawback's subset; customers' reads use the host's ample pool.
    assert claw.subset == "clawback"
    assert default.subset is None
    assert list(promo.subsets) == ["clawback"]
    assert promo.policy_for("ClawBackPoints") == promo.traffic_policy_for("clawback")
    assert promo.policy_for("GetPointBalance") == promo.traffic_policy
    host_pool = promo.traffic_policy.connection_pool
    assert host_pool is not None
    assert host_pool.http is not None
    assert (host_pool.http.http2_max_requests, host_pool.http.http1_max_pending_requests) == (
        1024,
        1024,
    )
    pool = promo.policy_for("ClawBackPoints").connection_pool
    assert pool is not None
    assert pool.tcp is not None
    assert pool.http is not None
    assert (pool.tcp.max_connections, pool.tcp.connect_timeout) == (10, Duration.of_millis(250))
    assert (pool.http.http2_max_requests, pool.http.http1_max_pending_requests) == (32, 8)
    assert pool.http.max_retries == 3
    od = promo.policy_for("ClawBackPoints").outlier_detection
    assert od is not None
    assert (od.consecutive_5xx_errors, od.consecutive_gateway_errors) == (3, 3)
    assert (od.interval, od.base_ejection_time) == (
        Duration.of_millis(1000),
        Duration.of_millis(10_000),
    )
    assert (od.max_ejection_percent, od.min_health_percent) == (50, 0)
    # `fault: {}` in the values means no fault.
    assert all(d.fault is None for d in policy.destinations.values())
    # order's outlier detection sets no gateway errors: unset stays None (not 0).
    order_od = policy["order"].traffic_policy.outlier_detection
    assert order_od is not None
    assert order_od.consecutive_gateway_errors is None


def _mesh(dest: dict[str, Any]) -> dict[str, Any]:
    return {"destinations": {"promotion": dest}}


_ROUTE = {"name": "default", "timeout": "5s"}
_CLAW = {"name": "claw", "methods": ["ClawBackPoints"], "subset": "clawback"}
_TIGHT = {"trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 4}}}}


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ({"routes": []}, "routes: expected a non-empty list"),
        ({"routes": [{**_ROUTE, "timeuot": "1s"}]}, "unknown or unsupported field"),
        ({"routes": [{**_ROUTE, "timeout": "610"}]}, "invalid duration"),
        ({"routes": [{**_ROUTE, "timeout": "100us"}]}, "at least 1ms"),
        ({"routes": [{**_ROUTE, "timeout": "1.5ms"}]}, "millisecond precision"),
        ({"routes": [{**_ROUTE, "retries": {"attempts": -1}}]}, "outside"),
        ({"routes": [{**_ROUTE, "retries": {"attempts": 1, "retryOn": "5xx,flaky"}}]}, "flaky"),
        ({"routes": [{**_ROUTE, "retries": {}}]}, "attempts: required"),
        ({"routes": [{**_ROUTE, "methods": ["clawBack"]}]}, "not an RPC method name"),
        ({"routes": [_ROUTE, {"name": "x", "methods": ["A"]}]}, "must come last"),
        (
            {"routes": [{"name": "a", "methods": ["A"]}, {"name": "b", "methods": ["A"]}]},
            "already routed",
        ),
        (
            {"routes": [{"name": "a", "methods": ["A"]}, {"name": "a", "methods": ["B"]}]},
            "used twice",
        ),
        (
            {
                "routes": [_ROUTE],
                "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": "4"}}},
            },
            "expected an integer",
        ),
        (
            {
                "routes": [_ROUTE],
                "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 101}},
            },
            "outside 0..100",
        ),
        ({"routes": [_CLAW, _ROUTE]}, r"routes\[0\]\.subset: no subset 'clawback'"),
        (
            {"routes": [_CLAW, _ROUTE], "subsets": {"clawbak": _TIGHT}},
            r"no subset 'clawback' in mesh.destinations.promotion.subsets \(defined: clawbak\)",
        ),
        ({"routes": [_ROUTE], "subsets": {"clawback": _TIGHT}}, "subsets.clawback: no route"),
        ({"routes": [{**_CLAW, "subset": "Claw_Back"}, _ROUTE]}, "subset: 'Claw_Back' is not a"),
        ({"routes": [_CLAW, _ROUTE], "subsets": {"Claw": _TIGHT}}, "subsets: 'Claw' is not a"),
        (
            {
                "routes": [_CLAW, _ROUTE],
                "subsets": {"clawback": {**_TIGHT, "labels": {"version": "v1"}}},
            },
            "clawback.labels: not supported",
        ),
        (
            {"routes": [_CLAW, _ROUTE], "subsets": {"clawback": {"trafficPolcy": {}}}},
            "subsets.clawback: unknown or unsupported field",
        ),
        (
            {
                "routes": [_CLAW, _ROUTE],
                "subsets": {
                    "clawback": {"trafficPolicy": {"connectionPool": {"http": {"http2MaxReq": 4}}}}
                },
            },
            "subsets.clawback.trafficPolicy.connectionPool.http: unknown",
        ),
        ({"routes": [_ROUTE], "fault": {"abort": {"grpcStatus": "UNAVAILABEL"}}}, "unknown gRPC"),
        ({"routes": [_ROUTE], "fault": {"abort": {"percentage": {"value": 5}}}}, "exactly one"),
        ({"routes": [_ROUTE], "fault": {"delay": {"exponentialDelay": "1s"}}}, "exponentialDelay"),
        (
            {
                "routes": [_ROUTE],
                "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}},
            },
            "outside 0..100",
        ),
    ],
)
def test_invalid_values_are_rejected_with_their_path(dest: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy(_mesh(dest))
    assert "mesh.destinations.promotion" in str(info.value)


def test_unset_retries_keep_istios_default_and_zero_attempts_disable() -> None:
    p = parse_policy(
        _mesh(
            {"routes": [{"name": "a", "methods": ["A"]}, {"name": "b", "retries": {"attempts": 0}}]}
        )
    )
    a, b = p["promotion"].routes
    assert a.retries is None  # Istio default policy (2 retries) applies
    assert a.timeout is None  # no timeout
    assert b.retries == Retries(attempts=0)


def test_a_subsets_policy_replaces_what_it_sets_and_inherits_the_rest() -> None:
    """Istio's merge (docs/mesh.md): field by field at the top of TrafficPolicy, so a
    subset's connectionPool replaces the host's whole, while its unset outlierDetection and
    loadBalancer are the host's."""
    p = parse_policy(
        _mesh(
            {
                "routes": [_CLAW, _ROUTE],
                "trafficPolicy": {
                    "connectionPool": {"tcp": {"maxConnections": 100}},
                    "outlierDetection": {"consecutive5xxErrors": 5},
                    "loadBalancer": {"simple": "ROUND_ROBIN"},
                },
                "subsets": {"clawback": _TIGHT},
            }
        )
    )
    promo = p["promotion"]
    merged = promo.traffic_policy_for("clawback")
    assert merged.connection_pool is not None
    assert merged.connection_pool.tcp is None
    assert merged.connection_pool.http is not None
    assert merged.connection_pool.http.http2_max_requests == 4
    assert merged.outlier_detection == promo.traffic_policy.outlier_detection
    assert merged.load_balancer == "ROUND_ROBIN"
    assert promo.policy_for("ClawBackPoints") == merged
    assert promo.policy_for("GetPointBalance") == promo.traffic_policy
    # A subset without a trafficPolicy is the host's policy, in a cluster of its own.
    bare = parse_policy(_mesh({"routes": [_CLAW, _ROUTE], "subsets": {"clawback": {}}}))
    assert bare["promotion"].traffic_policy_for("clawback") == bare["promotion"].traffic_policy


def test_faults_parse_from_values_and_cli_and_round_trip() -> None:
    fault = parse_fault(
        {
            "delay": {"fixedDelay": "1s", "percentage": {"value": 100}},
            "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}},
        }
    )
    assert fault is not None
    assert fault.delay is not None
    assert fault.abort is not None
    assert fault.delay.fixed_delay == Duration.of_millis(1000)
    assert fault.abort.grpc_code == 14
    assert parse_fault({}) is None
    name, parsed = fault_from_cli(fault_cli_arg("promotion", fault))
    assert (name, parsed) == ("promotion", fault)
    assert fault_from_cli("promotion={}") == ("promotion", None)
    assert fault_from_cli('promotion={"abort":{"httpStatus":503}}')[1] == Fault(
        abort=parse_fault({"abort": {"httpStatus": 503}}).abort  # type: ignore[union-attr]
    )
    with pytest.raises(PolicyError, match="SERVICE=JSON"):
        fault_from_cli('{"delay":{}}')


def test_with_fault_replaces_only_that_destination(policy: MeshPolicy) -> None:
    fault = parse_fault({"delay": {"fixedDelay": "1s", "percentage": {"value": 100}}})
    changed = policy.with_fault("promotion", fault)
    assert changed["promotion"].fault == fault
    assert changed["payment"] == policy["payment"]
    assert policy["promotion"].fault is None  # the original is unchanged
    assert changed.with_fault("promotion", None)["promotion"].fault is None
    with pytest.raises(PolicyError):
        policy.with_fault("nope", fault)
