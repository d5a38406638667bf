"""One authorization, two renderings: the chart's AuthorizationPolicies (for Istio's sidecars)
and the RBAC of the local Envoy's inbound listeners (mesh/security.py) allow the same
(principal, path) pairs, service by service, and the local principals are the chart's for the
documented install (release `phoneseller` in namespace `shop`).

The only local addition is named and checked here: the local gateway routes health checks and
reflection to order (the chart's ingress routes neither), so order's inbound side lets the
gateway's identity call those. Both sides keep mTLS mandatory: the chart's PeerAuthentication
is STRICT, and every local inbound listener requires a client certificate.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from mesh.envoy import RenderOptions, render_envoy_config
from mesh.policy import load_policy
from mesh.security import GATEWAY, LOCAL_NAMESPACE, LOCAL_RELEASE, MeshTls, load_identities
from mesh.topology import default_topology
from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered

VALUES = chartkit.CHART_DIR / "values.yaml"
Pair = tuple[str, str]
#: The local-only rule (mesh/security.py, Grant.local_only).
LOCAL_ONLY_POLICY = "local-gateway-tooling"


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # Rendering needs only where the certificates would be, not the files.
    folder = tmp_path_factory.mktemp("pki")
    tls = MeshTls.in_dir(folder, identities=load_identities(VALUES))
    options = RenderOptions(mtls=tls)
    return render_envoy_config(load_policy(VALUES), default_topology(), None, options=options)


def test_the_local_install_is_the_documented_one() -> None:
    """The chart tests render release `phoneseller` into `shop`, as docs/deploy.md installs it;
    the local identities are those of that install."""
    assert (LOCAL_RELEASE, LOCAL_NAMESPACE) == (chartkit.RELEASE, chartkit.NAMESPACE)


def chart_grants(rendered: Rendered, pod_labels: dict[str, str]) -> set[Pair]:
    """(source, path) pairs the ALLOW policies selecting these pods grant; source is a
    principal or "ns:<namespace>", path as written (a trailing * is a prefix)."""
    found: set[Pair] = set()
    for policy in rendered.of_kind("AuthorizationPolicy"):
        spec = policy["spec"]
        selector = spec.get("selector", {}).get("matchLabels", {})
        if policy["metadata"].get("namespace", chartkit.NAMESPACE) != chartkit.NAMESPACE:
            continue
        if not all(pod_labels.get(k) == v for k, v in selector.items()):
            continue
        if spec.get("action", "ALLOW") != "ALLOW":
            continue
        for rule in spec.get("rules", []):
            assert "when" not in rule, "conditions are not rendered locally"
            sources = [p for f in rule["from"] for p in f["source"].get("principals", [])]
            sources += [f"ns:{n}" for f in rule["from"] for n in f["source"].get("namespaces", [])]
            paths = [p for t in rule["to"] for p in t["operation"]["paths"]]
            found |= {(s, p) for s in sources for p in paths}
    return found


_NAMESPACE_REGEX = re.compile(r"^\.\*/ns/(.+)/\.\*$")


def local_grants(envoy: dict[str, Any], listener_name: str) -> dict[str, set[Pair]]:
    """The RBAC of one inbound listener, per policy, in the chart's notation."""
    (listener,) = [x for x in envoy["static_resources"]["listeners"] if x["name"] == listener_name]
    (chain,) = listener["filter_chains"]
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True
    filters = chain["filters"][0]["typed_config"]["http_filters"]
    (rbac,) = [f for f in filters if f["name"] == "envoy.filters.http.rbac"]
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "ALLOW", "deny by default: what no policy allows is refused"
    out: dict[str, set[Pair]] = {}
    for name, policy in rules["policies"].items():
        paths = []
        for permission in policy["permissions"]:
            for rule in permission["or_rules"]["rules"]:
                path = rule["url_path"]["path"]
                paths.append(path["exact"] if "exact" in path else path["prefix"] + "*")
        sources = []
        for principal in policy["principals"]:
            for matcher in principal["or_ids"]["ids"]:
                name_matcher = matcher["authenticated"]["principal_name"]
                if "exact" in name_matcher:
                    uri = name_matcher["exact"]
                    assert uri.startswith("spiffe://"), uri
                    sources.append(uri.removeprefix("spiffe://"))
                else:
                    match = _NAMESPACE_REGEX.match(name_matcher["safe_regex"]["regex"])
                    assert match, name_matcher
                    sources.append("ns:" + match[1].replace("\\", ""))
        out[name] = {(s, p) for s in sources for p in paths}
    return out


def pod_labels_of(rendered: Rendered, service: str) -> dict[str, str]:
    deployment = rendered.get("Deployment", f"{chartkit.RELEASE}-{service}")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("service", chartkit.SERVICES)
def test_the_charts_authorization_policies_equal_the_local_rbac(
    default_render: Rendered, envoy: dict[str, Any], service: str
) -> None:
    chart = chart_grants(default_render, pod_labels_of(default_render, service))
    assert chart, f"no AuthorizationPolicy allows anything on {service}"
    local = local_grants(envoy, f"inbound|{service}|0")
    local.pop(LOCAL_ONLY_POLICY, None)  # checked by the next test
    assert set().union(*local.values()) == chart


def test_the_only_local_addition_lets_the_gateway_ask_orders_health_and_reflection(
    envoy: dict[str, Any],
) -> None:
    gateway = load_identities(VALUES).principal(GATEWAY)
    for service in chartkit.SERVICES:
        extra = local_grants(envoy, f"inbound|{service}|0").get(LOCAL_ONLY_POLICY, set())
        if service != "order":
            assert extra == set(), service
            continue
        assert {source for source, _ in extra} == {gateway}
        assert {path for _, path in extra} == {
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/*",
            "/grpc.reflection.v1alpha.ServerReflection/*",
        }


def test_clawback_only_from_payment_in_both(
    default_render: Rendered, envoy: dict[str, Any]
) -> None:
    """The issue's example, spelled out: ClawBackPoints is granted to payment's service account
    alone, in the chart and locally; Pay and CancelPayment to order's alone."""
    identities = load_identities(VALUES)
    cases = {
        "promotion": ("/phoneseller.promotion.v1.PromotionService/ClawBackPoints", "payment"),
        "payment": ("/phoneseller.payment.v1.PaymentService/Pay", "order"),
    }
    for service, (path, caller) in cases.items():
        chart = chart_grants(default_render, pod_labels_of(default_render, service))
        local = set().union(*local_grants(envoy, f"inbound|{service}|0").values())
        expected = {identities.principal(caller)}
        assert {s for s, p in chart if p == path} == expected
        assert {s for s, p in local if p == path} == expected
    assert identities.principal("payment") == "cluster.local/ns/shop/sa/phoneseller-payment"


def test_mtls_stays_strict_in_the_chart(default_render: Rendered) -> None:
    (peer_authentication,) = default_render.of_kind("PeerAuthentication")
    assert peer_authentication["spec"]["mtls"] == {"mode": "STRICT"}
    rules: list[Obj] = default_render.of_kind("DestinationRule")
    assert all(r["spec"]["trafficPolicy"]["tls"] == {"mode": "ISTIO_MUTUAL"} for r in rules)


def test_every_local_principal_names_a_service_account_of_the_chart(
    default_render: Rendered,
) -> None:
    accounts = set(default_render.names("ServiceAccount"))
    identities = load_identities(VALUES)
    for service in chartkit.SERVICES:
        trust_domain, namespace, account = chartkit.principal_account(identities.principal(service))
        assert trust_domain == default_render.values["istio"]["trustDomain"]
        assert namespace == chartkit.NAMESPACE
        assert account in accounts
