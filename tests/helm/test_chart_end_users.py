"""End users, two renderings: the chart's RequestAuthentication and DENY AuthorizationPolicy at
the ingress gateway, and the local gateway's jwt_authn and rbac filters (mesh/edge.py), both
from the values' `auth:` block and `services.<name>.publicMethods`. They must refuse the same
requests: every public RPC without the issuer's verified token, and each one whose token holds
none of its roles. Also: no keys configured means closed, the claims header is the one the
services read, and clients cannot set it themselves.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh.edge import EndUserAuth, rbac_rules
from services.kit import catalog
from services.kit.identity import CLAIMS_HEADER
from stack.supervisor import VALUES
from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered

JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]})


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped,unused-ignore]

    loaded: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return loaded


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return chartkit.render(chartkit.load_chart(), {"auth": {"jwks": JWKS}})


def at_the_gateway(rendered: Rendered, kind: str) -> list[Obj]:
    gateway = rendered.get("Gateway", f"{chartkit.RELEASE}-gateway")["spec"]["selector"]
    return [
        obj
        for obj in rendered.of_kind(kind)
        if obj["spec"]
        .get("selector", obj["spec"].get("workloadSelector", {}))
        .get("matchLabels", obj["spec"].get("workloadSelector", {}).get("labels"))
        == gateway
    ]


def deny_rules(rendered: Rendered) -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """(paths refused without a verified token of the issuer, path → roles one must hold)."""
    (policy,) = [
        p for p in at_the_gateway(rendered, "AuthorizationPolicy") if p["spec"]["action"] == "DENY"
    ]
    unsigned: set[str] = set()
    roles: dict[str, tuple[str, ...]] = {}
    for rule in policy["spec"]["rules"]:
        paths = [p for to in rule["to"] for p in to["operation"]["paths"]]
        if "from" in rule:
            (source,) = [f["source"] for f in rule["from"]]
            assert source == {"notRequestPrincipals": ["phoneseller-dev/*"]}
            unsigned |= set(paths)
        else:
            (condition,) = rule["when"]
            assert condition["key"] == "request.auth.claims[roles]"
            (path,) = paths
            roles[path] = tuple(sorted(condition["notValues"]))
    return unsigned, roles


def test_the_chart_and_the_local_gateway_refuse_the_same_requests(
    rendered: Rendered, values: dict[str, Any]
) -> None:
    local = EndUserAuth.from_values(values, None)
    unsigned, roles = deny_rules(rendered)
    public = set(catalog.catalog().public_paths)
    assert unsigned == public == set(local.roles), "a public RPC needs a verified token"
    assert roles == rbac_rules(local), "the same roles per RPC"
    assert roles["/phoneseller.store.v1.StoreService/ShipOrder"] == ("dealer",)
    assert roles["/phoneseller.order.v1.OrderService/PlaceOrder"] == ("customer",)


def test_the_token_is_verified_with_the_values_issuer_and_keys(
    rendered: Rendered, values: dict[str, Any]
) -> None:
    (authn,) = at_the_gateway(rendered, "RequestAuthentication")
    (rule,) = authn["spec"]["jwtRules"]
    local = EndUserAuth.from_values(values, None)
    assert rule["issuer"] == local.issuer == "phoneseller-dev"
    assert tuple(rule["audiences"]) == local.audiences
    assert rule["jwks"] == JWKS
    assert rule["outputPayloadToHeader"] == CLAIMS_HEADER, "the header the services read"
    assert rule["forwardOriginalToken"] is False, "services never see the token itself"
    with_uri = chartkit.render(
        chartkit.load_chart(), {"auth": {"jwksUri": "https://id.example.com/jwks.json"}}
    )
    (authn,) = at_the_gateway(with_uri, "RequestAuthentication")
    assert authn["spec"]["jwtRules"][0]["jwksUri"] == "https://id.example.com/jwks.json"
    assert "jwks" not in authn["spec"]["jwtRules"][0]


def test_without_keys_the_gateway_is_closed_not_open() -> None:
    """No auth.jwksUri or auth.jwks: no RequestAuthentication, so no request has a verified
    principal, and the DENY policy refuses every public RPC."""
    closed = chartkit.render(chartkit.load_chart())
    assert at_the_gateway(closed, "RequestAuthentication") == []
    unsigned, _ = deny_rules(closed)
    assert unsigned == set(catalog.catalog().public_paths)


def test_clients_cannot_set_the_claims_header(rendered: Rendered) -> None:
    """Removed first thing at the gateway, before the transcoder and the token check (which
    would add the verified payload beside a forged one, not replace it)."""
    strip = rendered.get("EnvoyFilter", f"{chartkit.RELEASE}-strip-claims")["spec"]
    transcoder = rendered.get("EnvoyFilter", f"{chartkit.RELEASE}-grpc-json-transcoder")["spec"]
    assert strip.get("priority", 0) > transcoder.get("priority", 0), "applied after it"
    for patch in strip["configPatches"]:
        assert patch["patch"]["operation"] == "INSERT_FIRST"
        mutations = patch["patch"]["value"]["typed_config"]["mutations"]["request_mutations"]
        assert mutations == [{"remove": CLAIMS_HEADER}]
    for patch in transcoder["configPatches"]:
        assert patch["patch"]["operation"] == "INSERT_FIRST", "before the authorization"
    ports = {p["match"]["listener"]["portNumber"] for p in strip["configPatches"]}
    assert ports == {p["match"]["listener"]["portNumber"] for p in transcoder["configPatches"]}
