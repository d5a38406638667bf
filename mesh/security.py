"""Service identity in the local mesh: mTLS between the proxies and Envoy RBAC on every inbound
listener, from the same values the chart renders its PeerAuthentication and
AuthorizationPolicies from.

Identities are Istio's: `spiffe://<istio.trustDomain>/ns/<namespace>/sa/<service account>`,
with the chart's service account names (`<fullname>-<service>`) and the ingress gateway's
`istio.ingressGateway.namespace` / `.serviceAccount`. Locally the namespace and release are
fixed to those of the documented install (`helm upgrade --install phoneseller … -n shop`), so a
local principal is, letter for letter, the principal the chart's policies name in that install.

The authorization is the chart's (templates/istio/security.yaml), rule for rule:

- the ingress gateway's identity → the service's `publicMethods`;
- each caller's identity → the methods `callers` lists for it;
- any identity of the release's namespace → gRPC health and reflection;
- nothing else (an ALLOW policy: what no rule matches is denied with 403, which a gRPC client
  sees as PERMISSION_DENIED, with the ErrorInfo `CALLER_NOT_ALLOWED` that the listener's local
  replies add, built like the gateway's own refusals in mesh/edge.py).

One rule is local only: the local gateway also routes `Health/Check` and reflection (to
order; the chart's ingress routes neither), so the gateway's identity may call those on the
service the gateway sends them to. `LOCAL_ONLY` marks it, and the chart parity test
(tests/helm/test_chart_authorization_parity.py) checks that everything else equals the chart.

Certificates live in one folder (`MeshTls.in_dir`): `ca.pem`, and per identity `<name>.pem` and
`<name>-key.pem`, the names being the services' and `gateway`. `stack/pki.py` makes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

from mesh.edge import PERMISSION_DENIED, Refusal, rbac_denied, refusal_mappers
from services.kit.catalog import VALUES, Catalog, catalog

__all__ = [
    "CALLER_NOT_ALLOWED",
    "CA_CERT",
    "GATEWAY",
    "LOCAL_NAMESPACE",
    "LOCAL_RELEASE",
    "TOOLING_PATHS",
    "Certificate",
    "Grant",
    "MeshIdentities",
    "MeshTls",
    "authorization",
    "downstream_tls",
    "inbound_local_replies",
    "load_identities",
    "rbac_filter",
    "upstream_tls",
]

Json = dict[str, Any]

#: The name of the ingress gateway's identity, beside the services' names.
GATEWAY: Final = "gateway"
#: The documented install (docs/deploy.md): release `phoneseller` in namespace `shop`.
LOCAL_RELEASE: Final = "phoneseller"
LOCAL_NAMESPACE: Final = "shop"
#: The chart's name, from which it derives resource names (templates/_helpers.tpl).
CHART_NAME: Final = "phoneseller"

CA_CERT: Final = "ca.pem"

#: What the chart lets any identity of the release's namespace call (Istio path syntax: a
#: trailing `*` is a prefix).
TOOLING_PATHS: Final = (
    "/grpc.health.v1.Health/*",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
)
#: What the local gateway routes besides the public methods (mesh/envoy.py's gateway).
GATEWAY_TOOLING_PATHS: Final = (
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
)

_T = "@type"
_TLS_SOCKET = "envoy.transport_sockets.tls"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_FILTER: Final = "envoy.filters.http.rbac"
#: The match criteria that picks the plaintext transport socket for Envoy's health check.
_HEALTH_CHECK_SOCKET: Final = {"phoneseller.health-check": "plaintext"}


# --------------------------------------------------------------------------------------------
# Identities


def chart_fullname(release: str) -> str:
    """The chart's resource name prefix for a release (no name overrides): the release name,
    plus the chart's name unless it contains it, truncated as the helper truncates it."""
    name = release if CHART_NAME in release else f"{release}-{CHART_NAME}"
    return name[:40].rstrip("-")


@dataclass(frozen=True)
class MeshIdentities:
    """Who is who in the mesh: the chart's principals for one namespace and release."""

    trust_domain: str = "cluster.local"
    namespace: str = LOCAL_NAMESPACE
    release: str = LOCAL_RELEASE
    cluster_domain: str = "cluster.local"
    gateway_namespace: str = "istio-system"
    gateway_service_account: str = "istio-ingressgateway-service-account"

    def service_account(self, service: str) -> str:
        return f"{chart_fullname(self.release)}-{service}"

    def principal(self, name: str) -> str:
        """Istio's principal (an AuthorizationPolicy's `principals` entry) of a service or of
        the gateway: `<trust domain>/ns/<namespace>/sa/<service account>`."""
        if name == GATEWAY:
            return (
                f"{self.trust_domain}/ns/{self.gateway_namespace}/sa/{self.gateway_service_account}"
            )
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account(name)}"

    def spiffe_id(self, name: str) -> str:
        """The URI SAN of the identity's certificate (what Envoy's RBAC matches)."""
        return f"spiffe://{self.principal(name)}"

    def dns_name(self, name: str) -> str:
        """The Kubernetes Service name the identity answers to in a cluster. Istio's workload
        certificates carry only the URI; the local ones add this DNS name so that a gRPC client
        which checks host names (Python's does, it cannot be turned off) can dial an inbound
        listener with `grpc.ssl_target_name_override`."""
        if name == GATEWAY:
            return f"istio-ingressgateway.{self.gateway_namespace}.svc.{self.cluster_domain}"
        return f"{self.service_account(name)}.{self.namespace}.svc.{self.cluster_domain}"


def load_identities(
    values_path: str | Path = VALUES,
    *,
    namespace: str = LOCAL_NAMESPACE,
    release: str = LOCAL_RELEASE,
) -> MeshIdentities:
    """The identities of the chart's values (`istio.trustDomain`, `istio.ingressGateway`,
    `clusterDomain`), for the local namespace and release unless told otherwise."""
    values = yaml.safe_load(Path(values_path).read_text(encoding="utf-8")) or {}
    istio = values.get("istio") or {}
    gateway = istio.get("ingressGateway") or {}
    defaults = MeshIdentities()
    return MeshIdentities(
        trust_domain=str(istio.get("trustDomain") or defaults.trust_domain),
        namespace=namespace,
        release=release,
        cluster_domain=str(values.get("clusterDomain") or defaults.cluster_domain),
        gateway_namespace=str(gateway.get("namespace") or defaults.gateway_namespace),
        gateway_service_account=str(
            gateway.get("serviceAccount") or defaults.gateway_service_account
        ),
    )


# --------------------------------------------------------------------------------------------
# Authorization (the chart's AuthorizationPolicies)


@dataclass(frozen=True)
class Grant:
    """One rule of a service's ALLOW policy: these sources may call these paths.

    Sources are Istio principals (no `spiffe://`) or namespaces; paths use Istio's syntax
    (exact, or a prefix ending in `*`)."""

    name: str
    paths: tuple[str, ...]
    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    #: Not in the chart: the local gateway routes health and reflection, Istio's does not.
    local_only: bool = False


def authorization(
    services: Catalog,
    identities: MeshIdentities,
    *,
    gateway_tooling_service: str | None = None,
) -> dict[str, tuple[Grant, ...]]:
    """Each service's grants, as templates/istio/security.yaml renders them from the values;
    plus, for `gateway_tooling_service` (where the local gateway sends health checks and
    reflection), the gateway's identity → those paths."""
    out: dict[str, tuple[Grant, ...]] = {}
    for spec in services:
        grants: list[Grant] = []
        if spec.public_paths:
            grants.append(
                Grant("ingress-gateway", spec.public_paths, (identities.principal(GATEWAY),))
            )
        for caller, methods in spec.callers.items():
            paths = tuple(spec.path(m) for m in methods)
            grants.append(Grant(f"caller-{caller}", paths, (identities.principal(caller),)))
        grants.append(Grant("namespace-tooling", TOOLING_PATHS, namespaces=(identities.namespace,)))
        if spec.name == gateway_tooling_service:
            grants.append(
                Grant(
                    "local-gateway-tooling",
                    GATEWAY_TOOLING_PATHS,
                    (identities.principal(GATEWAY),),
                    local_only=True,
                )
            )
        out[spec.name] = tuple(grants)
    return out


def _path_matcher(path: str) -> Json:
    # As Istio renders an operation's paths: "X*" a prefix, anything else exact.
    if path.endswith("*"):
        return {"url_path": {"path": {"prefix": path[:-1]}}}
    return {"url_path": {"path": {"exact": path}}}


def _principal_matcher(grant: Grant) -> list[Json]:
    # As Istio renders a source: a principal is the exact SPIFFE URI of the peer's certificate,
    # a namespace a regular expression on it.
    ids: list[Json] = [
        {"authenticated": {"principal_name": {"exact": f"spiffe://{p}"}}} for p in grant.principals
    ]
    ids += [
        {"authenticated": {"principal_name": {"safe_regex": {"regex": f".*/ns/{re.escape(n)}/.*"}}}}
        for n in grant.namespaces
    ]
    return ids


def rbac_filter(grants: Sequence[Grant]) -> Json:
    """The `envoy.filters.http.rbac` filter of one service's inbound listener: ALLOW, one
    policy per grant; a request no policy matches gets 403 (gRPC: PERMISSION_DENIED)."""
    policies = {
        grant.name: {
            "permissions": [{"or_rules": {"rules": [_path_matcher(p) for p in grant.paths]}}],
            "principals": [{"or_ids": {"ids": _principal_matcher(grant)}}],
        }
        for grant in grants
    }
    return {
        "name": RBAC_FILTER,
        "typed_config": {_T: _RBAC, "rules": {"action": "ALLOW", "policies": policies}},
    }


# --------------------------------------------------------------------------------------------
# Certificates and TLS contexts


@dataclass(frozen=True)
class Certificate:
    """Where one identity's certificate (PEM, leaf first) and private key are."""

    cert: Path
    key: Path


def certificate_in(folder: str | Path, name: str) -> Certificate:
    base = Path(folder)
    return Certificate(base / f"{name}.pem", base / f"{name}-key.pem")


@dataclass(frozen=True)
class MeshTls:
    """What the renderer needs for mTLS: the trusted CA, each identity's certificate, who is
    who, and what each service allows.

    `caller_of` says whose identity each client-side sidecar listener presents (by the service
    it reaches): the local mesh has one such listener per called service, used by its caller.
    """

    ca: Path
    certificates: Mapping[str, Certificate]
    identities: MeshIdentities
    caller_of: Mapping[str, str]
    grants: Mapping[str, tuple[Grant, ...]]

    @classmethod
    def in_dir(
        cls,
        folder: str | Path,
        *,
        identities: MeshIdentities | None = None,
        services: Catalog | None = None,
        gateway_tooling_service: str | None = "order",
    ) -> MeshTls:
        """The certificates in `folder` (stack/pki.py's layout) for the repository's services
        (or `services`), the identities of the chart's values and their authorization."""
        ids = identities or load_identities()
        found = services or catalog()
        names = [*found.names, GATEWAY]
        return cls(
            ca=Path(folder) / CA_CERT,
            certificates={name: certificate_in(folder, name) for name in names},
            identities=ids,
            caller_of=callers_of_sidecars(found),
            grants=authorization(found, ids, gateway_tooling_service=gateway_tooling_service),
        )

    def files(self) -> list[Path]:
        return [self.ca, *(p for c in self.certificates.values() for p in (c.cert, c.key))]

    def missing(self) -> list[Path]:
        return [p for p in self.files() if not p.is_file()]

    def certificate(self, name: str) -> Certificate:
        try:
            return self.certificates[name]
        except KeyError:
            raise ValueError(f"no certificate for {name!r}") from None


def callers_of_sidecars(services: Catalog) -> dict[str, str]:
    """For each called service, the one service that calls it (whose identity that service's
    client-side sidecar listener presents). A service called by several would need a listener
    per caller: refused here rather than rendered with one caller's identity for all."""
    out: dict[str, str] = {}
    for spec in services:
        callers = list(spec.callers)
        if len(callers) > 1:
            raise ValueError(
                f"services.{spec.name} has several callers ({', '.join(callers)}); the local "
                "mesh renders one client-side listener per called service, presenting its "
                "caller's identity (docs/mesh.md, Identity)"
            )
        if callers:
            out[spec.name] = callers[0]
    return out


def _common_tls(cert: Certificate, ca: Path, alpn: Iterable[str]) -> Json:
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(cert.cert)},
                "private_key": {"filename": str(cert.key)},
            }
        ],
        "alpn_protocols": list(alpn),
    }


def upstream_tls(tls: MeshTls, client: str, server: str) -> Json:
    """The transport socket of a cluster whose calls `client` makes to `server`: present the
    client's certificate, trust the mesh's CA, and accept only the server's SPIFFE id (as
    Istio's ISTIO_MUTUAL checks the destination's service account)."""
    common = _common_tls(tls.certificate(client), tls.ca, ["h2"])
    common["validation_context"] = {
        "trusted_ca": {"filename": str(tls.ca)},
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": tls.identities.spiffe_id(server)}}
        ],
    }
    return {
        "name": _TLS_SOCKET,
        "typed_config": {_T: _UPSTREAM_TLS, "common_tls_context": common},
    }


def downstream_tls(tls: MeshTls, server: str) -> Json:
    """The transport socket of a service's inbound listener (PeerAuthentication STRICT):
    present the service's certificate, require a client certificate from the mesh's CA. Who
    the client is decides the RBAC filter, as in Istio."""
    common = _common_tls(tls.certificate(server), tls.ca, ["h2", "http/1.1"])
    common["validation_context"] = {"trusted_ca": {"filename": str(tls.ca)}}
    return {
        "name": _TLS_SOCKET,
        "typed_config": {
            _T: _DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": common,
        },
    }


def secure_cluster(cluster: Json, tls: MeshTls, client: str, server: str) -> Json:
    """`cluster` (an outbound or gateway cluster to `server`'s inbound listeners) with mTLS as
    `client`. Its active health check keeps going straight to the instance's own plaintext
    port (the services serve plaintext behind their sidecar), so it gets a plaintext socket
    of its own: the health check stands in for the kubelet's probe, which Istio also keeps out
    of mTLS and authorization."""
    secured = dict(cluster)
    secured["transport_socket"] = upstream_tls(tls, client, server)
    secured["transport_socket_matches"] = [
        {
            "name": "health-check-plaintext",
            "match": dict(_HEALTH_CHECK_SOCKET),
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {_T: _RAW_BUFFER},
            },
        }
    ]
    secured["health_checks"] = [
        {**check, "transport_socket_match_criteria": dict(_HEALTH_CHECK_SOCKET)}
        for check in cluster.get("health_checks", [])
    ]
    return secured


#: The inbound side's refusal of a caller whose identity no rule allows (as the gateway's own
#: refusals, mesh/edge.py): PERMISSION_DENIED with an ErrorInfo that names the mesh, not the
#: service, as the one that refused (the service never saw the call).
CALLER_NOT_ALLOWED: Final = Refusal(
    "caller-not-allowed",
    PERMISSION_DENIED,
    "CALLER_NOT_ALLOWED",
    "the caller's identity may not call this method (the mesh's authorization)",
    origin="mesh",
)


def inbound_local_replies() -> Json:
    """The inbound listener's `local_reply_config`: the RBAC filter's 403 becomes
    CALLER_NOT_ALLOWED. gRPC only: behind the gateway's transcoder every call is gRPC, and a
    transcoded one (the gateway's identity, public methods only) is never refused here.
    Envoy's other local replies on this side (the service down: 503) stay as they are, so
    the caller's retry policy sees them unchanged."""
    return {"mappers": refusal_mappers([(rbac_denied(), CALLER_NOT_ALLOWED)], http_json=False)}


@dataclass(frozen=True)
class InboundSecurity:
    """What a service's inbound listener gets: its transport socket, its RBAC filter and the
    local replies that turn the filter's refusal into a proper error."""

    transport_socket: Json
    rbac: Json = field(default_factory=dict)
    local_replies: Json = field(default_factory=inbound_local_replies)


def inbound_security(tls: MeshTls, service: str) -> InboundSecurity:
    grants = tls.grants.get(service)
    if grants is None:
        raise ValueError(f"no authorization is known for {service!r}")
    return InboundSecurity(downstream_tls(tls, service), rbac_filter(grants))
