"""Signed-in callers for tests: tokens from a real development issuer, or the gateway's claims.

Through a gateway, tests send `authorization: Bearer <token>` signed by a `DevIssuer` (the same
code as `make up` and `phoneseller token`), exactly as a user does. Tests that call a service
directly stand where the gateway stands and send the verified claims header instead
(`as_customer`, `as_dealer`, `as_operator`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from client.issuer import DevIssuer
from client.signin import DevSignIn, bearer_metadata
from mesh.edge import EndUserAuth
from services.kit.identity import claims_header

Metadata = tuple[tuple[str, str], ...]


def issuer_in(folder: Path) -> DevIssuer:
    """A development issuer with a fresh key under `folder`."""
    return DevIssuer(folder).ensure()


def end_users(issuer: DevIssuer) -> EndUserAuth:
    """The gateway's view of `issuer`: the chart's issuer and audience, its JWKS file."""
    from client.issuer import AUDIENCE, ISSUER

    return EndUserAuth(ISSUER, (AUDIENCE,), issuer.jwks_path)


def bearer(token: str) -> Metadata:
    return bearer_metadata(token)


def customer_token(issuer: DevIssuer, customer_id: str) -> Metadata:
    return bearer(issuer.token(customer_id, "customer"))


def dealer_token(issuer: DevIssuer, dealer_id: str = "dealer-1") -> Metadata:
    return bearer(issuer.token(dealer_id, "dealer"))


def operator_token(issuer: DevIssuer, name: str = "operator-1") -> Metadata:
    return bearer(issuer.token(name, "operator"))


def as_customer(customer_id: str) -> Metadata:
    """The claims the gateway passes for a verified customer token (direct calls only)."""
    return (claims_header(customer_id, "customer"),)


def as_dealer(dealer_id: str = "dealer-1") -> Metadata:
    return (claims_header(dealer_id, "dealer"),)


def as_operator(name: str = "operator-1") -> Metadata:
    return (claims_header(name, "operator"),)


class Tokens:
    """Bearer metadata for users of one issuer, each token signed once (as a client that signs
    in once and reuses its token): the client's own DevSignIn, as call metadata."""

    def __init__(self, issuer: DevIssuer) -> None:
        self._sign_in = DevSignIn(issuer)

    def customer(self, customer_id: str) -> Metadata:
        return bearer_metadata(self._sign_in.token("customer", customer_id))

    def dealer(self, dealer_id: str = "dealer-1") -> Metadata:
        return bearer_metadata(self._sign_in.token("dealer", dealer_id))

    def operator(self, name: str = "operator-1") -> Metadata:
        return bearer_metadata(self._sign_in.token("operator", name))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SignedIn(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        signed = _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(signed, request)


def signed_in(channel: grpc.Channel, metadata: Metadata) -> grpc.Channel:
    """`channel` sending `metadata` (a bearer token) on every unary call, as a client's auth
    interceptor does."""
    return grpc.intercept_channel(channel, _SignedIn(metadata))
