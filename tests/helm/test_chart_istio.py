"""Istio resources: the `mesh:` values become the same numbers in DestinationRules and
VirtualServices; mTLS and authorization allow exactly what the design allows, naming real
service accounts and real RPCs of gen/descriptors.binpb; the gateway exposes the public API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2  # type: ignore[import-untyped,unused-ignore]
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered

RenderValues = Callable[[dict[str, Any]], Rendered]

# The API split (docs/mesh.md, Gateway): what the gateway may reach, and who calls whom.
PUBLIC_RPCS = {
    "/phoneseller.order.v1.OrderService/PlaceOrder",
    "/phoneseller.order.v1.OrderService/GetOrder",
    "/phoneseller.order.v1.OrderService/CancelOrder",
    "/phoneseller.payment.v1.PaymentService/GetPayment",
    "/phoneseller.promotion.v1.PromotionService/GetPointBalance",
    "/phoneseller.store.v1.StoreService/ListStoreOrders",
    "/phoneseller.store.v1.StoreService/ShipOrder",
    "/phoneseller.customer.v1.CustomerService/GetCustomerHistory",
}
INTERNAL_CALLS = {
    ("order", "/phoneseller.payment.v1.PaymentService/Pay"),
    ("order", "/phoneseller.payment.v1.PaymentService/CancelPayment"),
    ("payment", "/phoneseller.promotion.v1.PromotionService/ClawBackPoints"),
    ("payment", "/phoneseller.promotion.v1.PromotionService/GetPointGrant"),
}
TOOLING_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
ISTIO_GROUPS = ("networking.istio.io/", "security.istio.io/")


def istio_objects(rendered: Rendered) -> list[Obj]:
    return [o for o in rendered.objects if o["apiVersion"].startswith(ISTIO_GROUPS)]


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def host_of(rendered: Rendered, service: str) -> str:
    name = f"{fullname(rendered)}-{service}"
    assert name in rendered.names("Service")
    return f"{name}.{chartkit.NAMESPACE}.svc.cluster.local"


def fullname(rendered: Rendered) -> str:
    return rendered.values["fullnameOverride"] or chartkit.RELEASE


def grpc_paths(rendered: Rendered, service: str, methods: list[str]) -> list[str]:
    grpc_service = rendered.values["services"][service]["grpcService"]
    return [f"/{grpc_service}/{method}" for method in methods]


@pytest.fixture
def meshed(rendered: Rendered) -> Rendered:
    if not rendered.values["istio"]["enabled"]:
        pytest.skip("Istio is off in this combination")
    return rendered


def test_istio_off_renders_no_istio_objects(render_values: RenderValues) -> None:
    rendered = render_values(chartkit.example_values("no-istio-values.yaml"))
    assert istio_objects(rendered) == []
    assert rendered.of_kind("EnvoyFilter") == []
    for obj in rendered.of_kind("Deployment"):
        assert "sidecar.istio.io/inject" not in pod_labels(obj)


def test_every_pod_gets_a_sidecar(meshed: Rendered) -> None:
    pods = [pod_labels(d) for d in meshed.of_kind("Deployment")]
    pods += [p["metadata"]["labels"] for p in meshed.of_kind("Pod")]
    revision = meshed.values["istio"]["revision"]
    for labels in pods:
        if revision:
            assert labels["istio.io/rev"] == revision
        else:
            assert labels["sidecar.istio.io/inject"] == "true"


# --- Parity with the `mesh:` values ----------------------------------------------------------


def test_destination_rules_carry_the_mesh_numbers(meshed: Rendered) -> None:
    destinations = meshed.values["mesh"]["destinations"]
    rules = {d["spec"]["host"]: d for d in meshed.of_kind("DestinationRule")}
    assert len(rules) == len(destinations)
    for service, policy in destinations.items():
        spec = rules[host_of(meshed, service)]["spec"]
        traffic_policy = dict(spec["trafficPolicy"])
        assert traffic_policy.pop("tls") == {"mode": "ISTIO_MUTUAL"}
        assert traffic_policy == policy.get("trafficPolicy", {}), service
        # Subsets keep their trafficPolicy as given: Istio merges it over the top-level one
        # (tls included, so the subset's traffic is mTLS too).
        subsets = {s["name"]: s for s in spec.get("subsets", [])}
        assert sorted(subsets) == sorted(policy.get("subsets") or {}), service
        for name, subset in subsets.items():
            assert subset.get("trafficPolicy", {}) == (
                policy["subsets"][name].get("trafficPolicy") or {}
            )
            assert "tls" not in subset.get("trafficPolicy", {}), "inherited from the top level"


def test_every_subset_selects_all_the_pods_of_its_service(meshed: Rendered) -> None:
    """A subset here exists for its own policy (the clawback's breaker), not to pick pods: its
    labels select exactly the pods the service's Service selects."""
    deployments = meshed.of_kind("Deployment")
    subsets = [
        (rule, subset)
        for rule in meshed.of_kind("DestinationRule")
        for subset in rule["spec"].get("subsets", [])
    ]
    assert subsets, "the chart's values define the clawback's subset"
    for rule, subset in subsets:
        service = next(
            s
            for s in meshed.of_kind("Service")
            if rule["spec"]["host"].startswith(f"{s['metadata']['name']}.")
        )
        assert subset["labels"] == service["spec"]["selector"]
        chosen = [
            d["metadata"]["name"] for d in deployments if selects(subset["labels"], pod_labels(d))
        ]
        assert chosen == [service["metadata"]["name"]], subset


def test_the_clawback_alone_goes_to_the_breakers_subset(meshed: Rendered) -> None:
    """Payment's clawback call meets the seed's tight pool (the subset); every other route to
    promotion, customers' GetPointBalance at the ingress among them, meets the host's."""
    host = host_of(meshed, "promotion")
    rule = next(d for d in meshed.of_kind("DestinationRule") if d["spec"]["host"] == host)
    (clawback,) = rule["spec"]["subsets"]
    tight = clawback["trafficPolicy"]["connectionPool"]["http"]
    ample = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    assert (tight["http2MaxRequests"], tight["http1MaxPendingRequests"]) == (32, 8)
    assert min(ample["http2MaxRequests"], ample["http1MaxPendingRequests"]) > 40
    to_promotion = [
        (route["name"], route["route"][0]["destination"])
        for virtual_service in meshed.of_kind("VirtualService")
        for route in virtual_service["spec"]["http"]
        if route["route"][0]["destination"]["host"] == host
    ]
    assert {name for name, d in to_promotion if "subset" in d} == {"claw-back-points"}
    assert {d.get("subset") for _, d in to_promotion} == {clawback["name"], None}
    assert "promotion-get-point-balance" in {name for name, d in to_promotion if "subset" not in d}


def expected_route(
    rendered: Rendered, service: str, route: dict[str, Any], match: list[str]
) -> dict[str, Any]:
    """The Istio HTTPRoute a mesh route becomes."""
    expected: dict[str, Any] = {"name": route["name"]}
    if match:
        expected["match"] = [{"uri": {"exact": path}} for path in match]
    destination: dict[str, Any] = {"host": host_of(rendered, service), "port": {"number": 50051}}
    if "subset" in route:
        destination["subset"] = route["subset"]
    expected["route"] = [{"destination": destination}]
    for field in ("timeout", "retries"):  # without them, Istio's defaults apply
        if field in route:
            expected[field] = route[field]
    if fault := rendered.values["mesh"]["destinations"][service].get("fault"):
        expected["fault"] = fault
    return expected


def test_virtual_services_carry_the_mesh_routes(meshed: Rendered) -> None:
    destinations = meshed.values["mesh"]["destinations"]
    services = {v["spec"]["hosts"][0]: v for v in meshed.of_kind("VirtualService")}
    for service, policy in destinations.items():
        virtual_service = services[host_of(meshed, service)]
        assert virtual_service["spec"]["hosts"] == [host_of(meshed, service)]
        assert virtual_service["spec"]["gateways"] == ["mesh"]
        expected = [
            expected_route(
                meshed, service, route, grpc_paths(meshed, service, route.get("methods", []))
            )
            for route in policy["routes"]
        ]
        assert virtual_service["spec"]["http"] == expected, service
        assert "match" not in virtual_service["spec"]["http"][-1], "the catch-all route is last"


def test_no_retries_renders_as_zero_attempts(default_render: Rendered) -> None:
    payment = default_render.get("VirtualService", "phoneseller-payment")
    routes = {r["name"]: r for r in payment["spec"]["http"]}
    assert routes["cancel-payment"]["retries"] == {"attempts": 0}
    assert routes["pay"]["retries"]["attempts"] == 2


def test_fault_injection_reaches_only_the_promotion_routes(render_values: RenderValues) -> None:
    values = chartkit.example_values("fault-values.yaml")
    rendered = render_values(values)
    fault = values["mesh"]["destinations"]["promotion"]["fault"]
    for virtual_service in rendered.of_kind("VirtualService"):
        for route in virtual_service["spec"]["http"]:
            destination = route["route"][0]["destination"]["host"]
            if destination == host_of(rendered, "promotion"):
                assert route["fault"] == fault
            else:
                assert "fault" not in route
    default = render_values({})
    assert all(
        "fault" not in r for v in default.of_kind("VirtualService") for r in v["spec"]["http"]
    )


# --- Ingress ---------------------------------------------------------------------------------


def ingress(rendered: Rendered) -> Obj:
    (virtual_service,) = [
        v for v in rendered.of_kind("VirtualService") if v["spec"]["gateways"] != ["mesh"]
    ]
    return virtual_service


def test_the_gateway_routes_exactly_the_public_rpcs(meshed: Rendered) -> None:
    gateway_name = f"{fullname(meshed)}-gateway"
    assert (
        meshed.get("Gateway", gateway_name)["spec"]["selector"]
        == meshed.values["istio"]["ingressGateway"]["selector"]
    )
    routes = ingress(meshed)["spec"]["http"]
    assert ingress(meshed)["spec"]["gateways"] == [gateway_name]
    paths = [m["uri"]["exact"] for route in routes for m in route["match"]]
    assert sorted(paths) == sorted(PUBLIC_RPCS)


def test_ingress_routes_carry_the_policy_of_their_destination(meshed: Rendered) -> None:
    for route in ingress(meshed)["spec"]["http"]:
        (match,) = route["match"]
        grpc_service, method = match["uri"]["exact"].strip("/").split("/")
        (service,) = [
            s for s, v in meshed.values["services"].items() if v["grpcService"] == grpc_service
        ]
        policy = meshed.values["mesh"]["destinations"][service]
        mesh_route = next(
            (r for r in policy["routes"] if method in r.get("methods", [])),
            next(r for r in policy["routes"] if not r.get("methods")),
        )
        destination = {"host": host_of(meshed, service), "port": {"number": 50051}}
        if "subset" in mesh_route:
            destination["subset"] = mesh_route["subset"]
        assert route["route"] == [{"destination": destination}]
        assert route.get("timeout") == mesh_route.get("timeout")
        assert route.get("retries") == mesh_route.get("retries")
        assert route.get("fault", {}) == policy.get("fault", {})


def test_https_is_served_with_the_given_certificate(render_values: RenderValues) -> None:
    rendered = render_values(chartkit.EVERYTHING)
    servers = rendered.get("Gateway", "shop-gateway")["spec"]["servers"]
    https = next(s for s in servers if s["port"]["protocol"] == "HTTPS")
    assert https["tls"] == {"mode": "SIMPLE", "credentialName": "shop-example-com"}
    assert https["hosts"] == ["shop.example.com"]


# --- Authorization ---------------------------------------------------------------------------


def policies_with_rules(rendered: Rendered) -> list[Obj]:
    """The ALLOW policies of the release's pods (the gateway's DENY policy for end users is
    tests/helm/test_chart_end_users.py's)."""
    return [
        p
        for p in rendered.of_kind("AuthorizationPolicy")
        if p["spec"].get("rules") and p["spec"].get("action") != "DENY"
    ]


def grants(rendered: Rendered) -> set[tuple[str, str]]:
    """(source, path) pairs the ALLOW policies grant; source = principal or "ns:<namespace>"."""
    found = set()
    for policy in policies_with_rules(rendered):
        assert policy["spec"]["action"] == "ALLOW"
        for rule in policy["spec"]["rules"]:
            sources = [
                *[p for f in rule["from"] for p in f["source"].get("principals", [])],
                *[f"ns:{n}" for f in rule["from"] for n in f["source"].get("namespaces", [])],
            ]
            paths = [p for t in rule["to"] for p in t["operation"]["paths"]]
            found |= {(source, path) for source in sources for path in paths}
    return found


def test_mtls_is_strict_for_every_pod(meshed: Rendered) -> None:
    (peer_authentication,) = meshed.of_kind("PeerAuthentication")
    assert peer_authentication["spec"]["mtls"] == {"mode": "STRICT"}
    selector = peer_authentication["spec"]["selector"]["matchLabels"]
    for deployment in meshed.of_kind("Deployment"):
        assert selects(selector, pod_labels(deployment))


def test_authorization_denies_by_default(meshed: Rendered) -> None:
    deny_by_default = [
        p for p in meshed.of_kind("AuthorizationPolicy") if not p["spec"].get("rules")
    ]
    (policy,) = deny_by_default
    assert policy["spec"].get("action", "ALLOW") == "ALLOW", "an ALLOW without rules allows nothing"
    for deployment in meshed.of_kind("Deployment"):
        assert selects(policy["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        allowing = [
            p
            for p in policies_with_rules(meshed)
            if selects(p["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(allowing) == 1, deployment["metadata"]["name"]


def test_authorization_allows_exactly_the_designed_calls(meshed: Rendered) -> None:
    istio = meshed.values["istio"]
    ingress_gateway = istio["ingressGateway"]
    gateway = "{}/ns/{}/sa/{}".format(
        istio["trustDomain"], ingress_gateway["namespace"], ingress_gateway["serviceAccount"]
    )

    def account(service: str) -> str:
        return f"{istio['trustDomain']}/ns/{chartkit.NAMESPACE}/sa/{fullname(meshed)}-{service}"

    expected = {(gateway, path) for path in PUBLIC_RPCS}
    expected |= {(account(caller), path) for caller, path in INTERNAL_CALLS}
    granted = grants(meshed)
    business = {(source, path) for source, path in granted if not path.startswith(TOOLING_PREFIXES)}
    assert business == expected
    tooling = granted - business
    assert {source for source, _ in tooling} == {f"ns:{chartkit.NAMESPACE}"}


def test_authorization_names_real_service_accounts(meshed: Rendered) -> None:
    accounts = set(meshed.names("ServiceAccount"))
    gateway = meshed.values["istio"]["ingressGateway"]
    for source, _ in grants(meshed):
        if source.startswith("ns:"):
            continue
        trust_domain, namespace, account = chartkit.principal_account(source)
        assert trust_domain == meshed.values["istio"]["trustDomain"]
        if namespace == chartkit.NAMESPACE:
            assert account in accounts, f"{source}: no such ServiceAccount in the release"
        else:
            assert (namespace, account) == (gateway["namespace"], gateway["serviceAccount"])


def test_every_rpc_path_the_chart_names_exists(meshed: Rendered, rpc_paths: set[str]) -> None:
    """Authorization paths and route matches: real methods of gen/descriptors.binpb."""
    named = {path for _, path in grants(meshed)}
    named |= {
        m["uri"]["exact"]
        for v in meshed.of_kind("VirtualService")
        for r in v["spec"]["http"]
        for m in r.get("match", [])
    }
    for path in named:
        if path.endswith("/*"):
            assert path.startswith(TOOLING_PREFIXES), (
                f"{path}: wildcards only for health and reflection"
            )
        else:
            assert path in rpc_paths, f"{path} is not a method in gen/descriptors.binpb"
    assert rpc_paths >= PUBLIC_RPCS | {path for _, path in INTERNAL_CALLS}


# --- HTTP/JSON transcoding at the gateway ---------------------------------------------------


def transcoder(rendered: Rendered) -> tuple[Obj, dict[str, Any]]:
    (envoy_filter,) = [
        f
        for f in rendered.of_kind("EnvoyFilter")
        if f["metadata"]["name"].endswith("grpc-json-transcoder")
    ]
    configs = [p["patch"]["value"]["typed_config"] for p in envoy_filter["spec"]["configPatches"]]
    assert all(c == configs[0] for c in configs)
    return envoy_filter, configs[0]


def test_the_transcoder_ships_the_descriptor_set(
    meshed: Rendered, descriptors: FileDescriptorSet
) -> None:
    envoy_filter, config = transcoder(meshed)
    namespace = meshed.values["istio"]["ingressGateway"]["namespace"]
    assert envoy_filter["metadata"]["namespace"] == namespace, "EnvoyFilters act in their namespace"
    assert (
        envoy_filter["spec"]["workloadSelector"]["labels"]
        == meshed.values["istio"]["ingressGateway"]["selector"]
    )
    config_map = meshed.get("ConfigMap", f"{fullname(meshed)}-descriptors")
    assert config_map["metadata"]["namespace"] == namespace
    shipped = chartkit.decoded_binary(config_map["binaryData"]["descriptors.binpb"])
    assert shipped == chartkit.DESCRIPTORS.read_bytes()
    if meshed.values["istio"]["jsonTranscoding"]["descriptorSource"] == "inline":
        assert chartkit.decoded_binary(config["proto_descriptor_bin"]) == shipped
    else:
        assert (
            config["proto_descriptor"]
            == meshed.values["istio"]["jsonTranscoding"]["descriptorPath"]
        )
    assert set(config["services"]) <= chartkit.descriptor_services(descriptors)
    assert config["convert_grpc_status"] is True


def test_the_public_rpcs_have_http_rules(descriptors: FileDescriptorSet) -> None:
    """Every public RPC has a google.api.http rule the transcoder serves; the helm test reads
    an order back with GET /v1/orders/{order_id}."""
    rules = {}
    for file in descriptors.file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                rules[f"/{file.package}.{service.name}/{method.name}"] = rule
    for path in PUBLIC_RPCS:
        assert rules[path].WhichOneof("pattern"), f"{path} has no HTTP rule"
    assert rules["/phoneseller.order.v1.OrderService/GetOrder"].get == "/v1/orders/{order_id}"


ENVOY = Path(sys.executable).parent / "envoy"
TYPES = "type.googleapis.com/envoy.extensions.filters"
HCM = f"{TYPES}.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = f"{TYPES}.http.router.v3.Router"


def envoy_validate(
    transcoder_config: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate` on a listener with the transcoder, as the gateway would run it."""
    connection_manager = {
        "@type": HCM,
        "stat_prefix": "gateway",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": []}]},
        "http_filters": [
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder_config},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    listener = {
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager,
                    }
                ]
            }
        ],
    }
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener]}}))
    command = [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(not ENVOY.exists(), reason="envoy is not installed in the venv")
def test_envoy_accepts_the_transcoder_config(default_render: Rendered, tmp_path: Path) -> None:
    """The real Envoy (the data plane Istio runs) loads the filter: descriptor set and services;
    and it would refuse a service the descriptor set lacks, so the check has teeth."""
    _, config = transcoder(default_render)
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = dict(config, services=[*config["services"], "phoneseller.order.v1.NoSuchService"])
    assert envoy_validate(broken, tmp_path).returncode != 0
