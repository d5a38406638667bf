"""The gateway's edge: who may call (end-user tokens and roles) and what a refusal looks like.

Rendered into the gateway listener by mesh/envoy.py, from the same values as the chart's
ingress objects (templates/istio/end-users.yaml), so that the two agree (the parity test in
tests/helm/test_chart_end_users.py):

- **Authentication** — Envoy's `jwt_authn`, as Istio's RequestAuthentication renders it: a
  token must be signed by the issuer's keys (a local JWKS file), carry its `iss`, one of the
  audiences and an `exp` in the future. A public RPC needs one (missing → 401); elsewhere a
  token is optional but, if sent, must be valid (Istio's semantics). The verified payload goes
  to the services in CLAIMS_HEADER; a client's own CLAIMS_HEADER is removed first (and the
  `authorization` header is not forwarded, as Istio's `forwardOriginalToken: false`).
- **Authorization** — Envoy's `rbac` with DENY rules, as the chart's DENY AuthorizationPolicy:
  a public RPC without a verified principal of the issuer is denied, and so is one whose token's
  `roles` include none of the roles the values give the RPC (`services.<svc>.publicMethods`).
  DENY rather than ALLOW because at a shared ingress gateway ALLOW policies of other
  applications would widen ours; a DENY always holds.
- **Refusals** — every reply the gateway makes itself is a proper error (`local_reply_config`):
  a gRPC status whose `grpc-status-details-bin` carries ErrorInfo (and RetryInfo when the caller
  should come back), or for HTTP/JSON a `google.rpc.Status` JSON body with the matching HTTP
  code. The filters order the kinds: circuit-breaker overflow, no healthy upstream, upstream
  timeout, other upstream failures, missing/rejected token, denied role, closed method, unknown
  route, malformed JSON body.

The filter chain of the gateway is therefore: strip CLAIMS_HEADER → HTTP/JSON transcoding (so
that authentication and authorization see gRPC paths for both protocols) → jwt_authn → rbac →
fault → router.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from services.kit.catalog import catalog
from services.kit.errors import ERROR_DOMAIN
from services.kit.identity import CLAIMS_HEADER

Json = dict[str, Any]

_T = "@type"
_JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
#: Set by the transcoder on the gRPC call it makes of an HTTP/JSON request.
_ORIGINAL_METHOD = "x-envoy-original-method"
_HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)

#: Where jwt_authn leaves the verified payload for rbac (its dynamic metadata key).
PAYLOAD_METADATA_KEY: Final = "jwt_payload"
#: The one provider's name in the jwt_authn filter.
PROVIDER: Final = "phoneseller-issuer"
#: Reachable without a token (a token, if sent, must still be valid): the health check and
#: server reflection, so that `grpcurl list` and probes work before anyone signs in.
OPEN_PREFIXES: Final = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
#: How long a caller told to come back (RetryInfo) should wait, for the gateway's own 503s.
RETRY_AFTER_SECONDS: Final = 1


@dataclass(frozen=True)
class EndUserAuth:
    """Who signs the end users' tokens, and which roles may call which public RPC."""

    issuer: str
    audiences: tuple[str, ...]
    #: The issuer's public keys (a JWKS file); None = no keys: no token verifies, every public
    #: RPC is refused (as the chart without auth.jwksUri/jwks).
    jwks_path: Path | None
    #: gRPC path → the roles whose tokens may call it (the values' publicMethods).
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: catalog().roles_by_path)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], jwks_path: Path | None) -> EndUserAuth:
        """The values' `auth:` block (issuer and audiences), with keys from `jwks_path`."""
        auth = values.get("auth") or {}
        return cls(
            issuer=str(auth.get("issuer", "")),
            audiences=tuple(auth.get("audiences", ())),
            jwks_path=jwks_path,
        )


# --------------------------------------------------------------------------------------------
# Filters


def strip_claims_filter() -> Json:
    """Remove CLAIMS_HEADER from what the client sent: only jwt_authn may set it."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            _T: _HEADER_MUTATION,
            "mutations": {"request_mutations": [{"remove": CLAIMS_HEADER}]},
        },
    }


#: A P-256 public key whose private half was discarded the moment it was made: no token
#: verifies against it (what "no keys configured" means).
_UNSIGNABLE_KEY = {
    "kty": "EC",
    "crv": "P-256",
    "x": "el0XPRsRWEI-GR1GdGVKIZKeHWXXSQBnU1iOZW1yu18",
    "y": "7emhLKjP7SVzEt3lU04WBKNmoC1WvzjGLNb-dwj2VeU",
    "kid": "no-private-key",
    "alg": "ES256",
    "use": "sig",
}


def jwt_filter(auth: EndUserAuth) -> Json:
    if auth.jwks_path is not None:
        jwks: Json = {"filename": str(auth.jwks_path)}
    else:
        # Envoy refuses an empty key set; a key nobody can sign with closes the gateway just
        # the same.
        jwks = {"inline_string": json.dumps({"keys": [_UNSIGNABLE_KEY]})}
    provider: Json = {
        "issuer": auth.issuer,
        "audiences": list(auth.audiences),
        "local_jwks": jwks,
        "forward": False,
        "forward_payload_header": CLAIMS_HEADER,
        "payload_in_metadata": PAYLOAD_METADATA_KEY,
    }
    optional = {
        "requires_any": {
            "requirements": [{"provider_name": PROVIDER}, {"allow_missing": {}}],
        }
    }
    rules: list[Json] = [
        {"match": {"path": path}, "requires": {"provider_name": PROVIDER}}
        for path in sorted(auth.roles)
    ]
    rules.append({"match": {"prefix": "/"}, "requires": optional})
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {_T: _JWT, "providers": {PROVIDER: provider}, "rules": rules},
    }


def _claim(key: str, value: Json) -> Json:
    """A principal matching the verified payload's `key` (jwt_authn's dynamic metadata)."""
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": PAYLOAD_METADATA_KEY}, {"key": key}],
                "value": value,
            }
        }
    }


def _paths(paths: Iterable[str]) -> Json:
    rules = [{"url_path": {"path": {"exact": p}}} for p in sorted(paths)]
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def rbac_filter(auth: EndUserAuth) -> Json:
    """DENY: public RPCs without the issuer's verified token, or with none of their roles."""
    policies: Json = {
        "signed-in": {
            "permissions": [_paths(auth.roles)],
            "principals": [
                {"not_id": _claim("iss", {"string_match": {"exact": auth.issuer}})},
            ],
        }
    }
    for path, roles in sorted(auth.roles.items()):
        any_role = [
            _claim("roles", {"list_match": {"one_of": {"string_match": {"exact": role}}}})
            for role in roles
        ]
        allowed = any_role[0] if len(any_role) == 1 else {"or_ids": {"ids": any_role}}
        policies[f"roles:{path}"] = {
            "permissions": [_paths([path])],
            "principals": [{"not_id": allowed}],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {_T: _RBAC, "rules": {"action": "DENY", "policies": policies}},
    }


def gateway_filters(
    auth: EndUserAuth | None, transcoder: Json | None, public_paths: Iterable[str]
) -> list[Json]:
    """The gateway's HTTP filters up to (not including) fault and router, in order.

    Every public path the gateway routes must have its roles: a route without them would be
    open to anyone (ValueError).
    """
    auth = auth or EndUserAuth("unconfigured", ("phoneseller",), None)
    unguarded = sorted(set(public_paths) - set(auth.roles))
    if unguarded:
        raise ValueError(f"public methods without roles (publicMethods): {unguarded}")
    filters = [strip_claims_filter()]
    if transcoder is not None:
        filters.append(transcoder)
    filters += [jwt_filter(auth), rbac_filter(auth)]
    return filters


def rbac_rules(auth: EndUserAuth) -> dict[str, tuple[str, ...]]:
    """What the rendered RBAC enforces, in the values' terms: path → roles (for parity)."""
    return {path: tuple(sorted(roles)) for path, roles in auth.roles.items()}


# --------------------------------------------------------------------------------------------
# Refusals


@dataclass(frozen=True)
class Refusal:
    """One kind of reply the gateway makes itself, and the error it becomes."""

    name: str
    #: gRPC status code number of the error (what a gRPC client sees).
    code: int
    reason: str
    message: str
    #: When set, a RetryInfo with this delay (UNAVAILABLE: the caller should come back).
    retry_after_seconds: int | None = None
    #: The HTTP status of the reply; None = the usual one for `code` (HTTP_STATUS). gRPC
    #: clients see the gRPC status Envoy maps it to, which is `code` again.
    http_status: int | None = None
    #: Who refused (ErrorInfo.metadata["service"]): the gateway, or the mesh's inbound side of
    #: a service (mesh/security.py), so that a client can tell the proxy's refusal from the
    #: service's own.
    origin: str = "gateway"

    @property
    def http(self) -> int:
        return self.http_status or HTTP_STATUS[self.code]

    def status(self, extra: Sequence[Message] = ()) -> status_pb2.Status:
        details: list[Message] = [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata={"service": self.origin}
            ),
            *extra,
        ]
        if self.retry_after_seconds is not None:
            details.append(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
                )
            )
        packed = []
        for detail in details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        return status_pb2.Status(code=self.code, message=self.message, details=packed)

    def status_header(self) -> str:
        """The `grpc-status-details-bin` value (base64 of the serialized Status)."""
        return base64.b64encode(self.status().SerializeToString()).decode()


# gRPC codes (google.rpc.Code).
INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED = 3, 7, 16
UNIMPLEMENTED, UNAVAILABLE, DEADLINE_EXCEEDED = 12, 14, 4

OVERFLOW = Refusal(
    "overflow",
    UNAVAILABLE,
    "MESH_OVERFLOW",
    "the service is at capacity (the mesh's circuit breaker); try again shortly",
    RETRY_AFTER_SECONDS,
)
NO_HEALTHY_UPSTREAM = Refusal(
    "no-healthy-upstream",
    UNAVAILABLE,
    "NO_HEALTHY_UPSTREAM",
    "no instance of the service is healthy now; try again shortly",
    RETRY_AFTER_SECONDS,
)
UPSTREAM_TIMEOUT = Refusal(
    "upstream-timeout",
    UNAVAILABLE,
    "UPSTREAM_TIMEOUT",
    "the service did not answer in time (the route's timeout); try again shortly",
    RETRY_AFTER_SECONDS,
    http_status=504,
)
UPSTREAM_FAILURE = Refusal(
    "upstream-failure",
    UNAVAILABLE,
    "UPSTREAM_UNAVAILABLE",
    "the service could not be reached; try again shortly",
    RETRY_AFTER_SECONDS,
)
TOKEN_MISSING = Refusal(
    "token-missing",
    UNAUTHENTICATED,
    "TOKEN_MISSING",
    "sign in: this call needs `authorization: Bearer <token>`",
)
TOKEN_REJECTED = Refusal(
    "token-rejected",
    UNAUTHENTICATED,
    "TOKEN_REJECTED",
    "the bearer token is not valid: expired, not signed by the issuer, or for another audience",
)
ROLE_NOT_ALLOWED = Refusal(
    "role-not-allowed",
    PERMISSION_DENIED,
    "ROLE_NOT_ALLOWED",
    "the token's roles may not call this method",
)
METHOD_NOT_EXPOSED = Refusal(
    "method-not-exposed",
    PERMISSION_DENIED,
    "METHOD_NOT_EXPOSED",
    "the gateway does not expose this method",
)
NO_SUCH_ROUTE = Refusal("no-such-route", UNIMPLEMENTED, "NO_SUCH_ROUTE", "no such method or route")
MALFORMED_BODY = Refusal(
    "malformed-body",
    INVALID_ARGUMENT,
    "MALFORMED_REQUEST_BODY",
    "the request body is not the JSON form of the request message",
)

#: Every kind, in the order the mappers try them.
REFUSALS: Final = (
    OVERFLOW,
    NO_HEALTHY_UPSTREAM,
    UPSTREAM_TIMEOUT,
    UPSTREAM_FAILURE,
    TOKEN_MISSING,
    TOKEN_REJECTED,
    ROLE_NOT_ALLOWED,
    METHOD_NOT_EXPOSED,
    NO_SUCH_ROUTE,
    MALFORMED_BODY,
)

#: HTTP status of each kind for HTTP/JSON clients (the transcoder's mapping of the gRPC code).
HTTP_STATUS: Final = {
    INVALID_ARGUMENT: 400,
    UNAUTHENTICATED: 401,
    PERMISSION_DENIED: 403,
    UNIMPLEMENTED: 404,
    UNAVAILABLE: 503,
    DEADLINE_EXCEEDED: 504,
}


def _status_is(code: int) -> Json:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": code, "runtime_key": "unused"}}
        }
    }


def _flags(*flags: str) -> Json:
    return {"response_flag_filter": {"flags": list(flags)}}


def _header(name: str, match: Json | None = None, *, invert: bool = False) -> Json:
    header: Json = {"name": name}
    if match is None:
        header["present_match"] = True
    else:
        header["string_match"] = match
    if invert:
        header["invert_match"] = True
    return {"header_filter": {"header": header}}


def _all(*filters: Json) -> Json:
    return filters[0] if len(filters) == 1 else {"and_filter": {"filters": list(filters)}}


def _any(filters: Sequence[Json]) -> Json:
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": list(filters)}}


_GRPC = {"prefix": "application/grpc"}


def _json_body(refusal: Refusal, message: str | None = None) -> Json:
    """The google.rpc.Status JSON body (as the transcoder writes a service's error)."""
    # Proto field names, as the transcoder prints (preserve_proto_field_names), so that a client
    # and docs/openapi/ meet one spelling whoever refused.
    info: Json = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": refusal.reason,
        "domain": ERROR_DOMAIN,
        "metadata": {"service": refusal.origin},
    }
    details: list[Json] = [info]
    if refusal is MALFORMED_BODY:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "field_violations": [{"field": "body", "description": "%LOCAL_REPLY_BODY%"}],
            }
        )
    if refusal.retry_after_seconds is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retry_delay": f"{refusal.retry_after_seconds}s",
            }
        )
    return {
        "json_format": {
            "code": refusal.code,
            "message": message or refusal.message,
            "details": details,
        },
        "content_type": "application/json",
    }


def _details(cel: str) -> Json:
    """Match on the reply's response code details (which filter refused, and why)."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {_T: _CEL_FILTER, "expression": cel},
        }
    }


def rbac_denied() -> Json:
    """Matches a reply of Envoy's rbac filter: the gateway's role check, or an inbound
    listener's check of the caller's identity (mesh/security.py)."""
    return _details("response.code_details.startsWith('rbac_access_denied')")


def _mapper(when: Json, refusal: Refusal, grpc: bool) -> Json:
    if grpc:
        # A gRPC call as the client sent it; a transcoded HTTP/JSON call carries the
        # transcoder's x-envoy-original-method and is answered in JSON.
        when = _all(when, _header("content-type", _GRPC), _header(_ORIGINAL_METHOD, invert=True))
    # The status decides the gRPC code too (jwt_authn answers a wrong audience with 403).
    mapper: Json = {"filter": when, "status_code": refusal.http}
    if grpc:
        # The reply's grpc-message is its body; the Status in the details header must say the
        # same (clients such as grpc_status.rpc_status.from_call check that they agree).
        mapper["body"] = {"inline_string": refusal.message}
        mapper["headers_to_add"] = [
            {
                "header": {"key": "grpc-status-details-bin", "value": refusal.status_header()},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    else:
        mapper["body_format_override"] = _json_body(refusal)
    return mapper


def refusal_mappers(kinds: Sequence[tuple[Json, Refusal]], *, http_json: bool = True) -> list[Json]:
    """`local_reply_config` mappers turning the replies each filter matches into its refusal:
    for gRPC calls, then (`http_json`) for HTTP/JSON ones. A listener that only ever sees gRPC
    (a service's inbound side, behind the gateway's transcoder) needs no HTTP/JSON mappers."""
    mappers = [_mapper(when, refusal, grpc=True) for when, refusal in kinds]
    if http_json:
        mappers += [_mapper(when, refusal, grpc=False) for when, refusal in kinds]
    return mappers


def local_reply_config() -> Json:
    """Mappers turning each kind of the gateway's own replies into a proper error.

    The kind is read from the reply's response flags (UO, UH, UT) and response code details
    (`jwt_authn_access_denied{...}`, `rbac_access_denied...`, `direct_response`,
    `route_not_found`, the transcoder's own); the protocol from the request: gRPC as the client
    sent it, or HTTP/JSON (also after transcoding, when jwt_authn, rbac or the router refuse).
    """
    kinds: list[tuple[Json, Refusal]] = [
        (_flags("UO"), OVERFLOW),
        (_flags("UH"), NO_HEALTHY_UPSTREAM),
        (_flags("UT"), UPSTREAM_TIMEOUT),
        (_status_is(503), UPSTREAM_FAILURE),
        (
            _details("response.code_details == 'jwt_authn_access_denied{Jwt_is_missing}'"),
            TOKEN_MISSING,
        ),
        (_details("response.code_details.startsWith('jwt_authn_access_denied')"), TOKEN_REJECTED),
        (rbac_denied(), ROLE_NOT_ALLOWED),
        (_status_is(403), METHOD_NOT_EXPOSED),
        (_status_is(404), NO_SUCH_ROUTE),
    ]
    mappers = refusal_mappers(kinds)
    # The transcoder's own 400: the body is not JSON, or not the request message's JSON.
    malformed = _mapper(_status_is(400), MALFORMED_BODY, grpc=False)
    malformed["body_format_override"] = _json_body(MALFORMED_BODY, "%LOCAL_REPLY_BODY%")
    mappers.append(malformed)
    return {"mappers": mappers}


__all__ = [
    "CLAIMS_HEADER",
    "OPEN_PREFIXES",
    "REFUSALS",
    "EndUserAuth",
    "Refusal",
    "gateway_filters",
    "local_reply_config",
    "rbac_denied",
    "rbac_rules",
    "refusal_mappers",
]
