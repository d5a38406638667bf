"""Who is calling: the end user's verified claims, as the mesh hands them to a service.

The gateway verifies the bearer token (signature, issuer, audience, expiry: Envoy's
`jwt_authn` locally, Istio's RequestAuthentication in a cluster) and lets a role reach only the
RPCs the chart's values give it (`services.<svc>.publicMethods`). What it cannot decide is
*whose* data a call touches; that is the services' part, here. The gateway passes the verified
payload on in CLAIMS_HEADER (base64url JSON, as Envoy's `forward_payload_header` writes it) and
removes any such header a client sent, so a service can trust it: in a cluster only the ingress
gateway may call the public RPCs (AuthorizationPolicy), and locally only the gateway's Envoy
forwards them (docs/security.md says what one machine can and cannot isolate).

The rules (docs/security.md, "Roles"):

- a customer (`sub` = customer id) acts only for themselves: places their own orders, reads and
  cancels their own orders, reads their own history, balance and payments;
- an operator reads anyone's (support staff), and changes nothing;
- a dealer works the store (`ListStoreOrders`, `ShipOrder`), which is no one customer's data.

A call without claims never reaches a check: `current()` refuses it as UNAUTHENTICATED. Calls
between services (e.g. `Pay` from order) carry no end user and are authorized by the callers'
mesh identities instead (mTLS + RBAC), so they do not ask for one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from services.kit import errors

#: The header carrying the verified token payload from the gateway to the services.
CLAIMS_HEADER = "x-phoneseller-claims"

CUSTOMER = "customer"
DEALER = "dealer"
OPERATOR = "operator"


@dataclass(frozen=True)
class Caller:
    """The signed-in user a call is made for."""

    subject: str
    roles: frozenset[str]

    def acts_for(self, customer_id: str) -> bool:
        """Whether this caller is that customer."""
        return CUSTOMER in self.roles and self.subject == customer_id

    def reads_for(self, customer_id: str) -> bool:
        """Whether this caller may read that customer's data (themselves, or an operator)."""
        return self.acts_for(customer_id) or OPERATOR in self.roles

    def require_acting_for(self, customer_id: str, what: str) -> None:
        """Refuse (PERMISSION_DENIED) unless this caller is the customer `what` belongs to."""
        if not self.acts_for(customer_id):
            raise self._denied(customer_id, what)

    def require_reading(self, customer_id: str, what: str) -> None:
        """Refuse (PERMISSION_DENIED) unless this caller may read that customer's `what`."""
        if not self.reads_for(customer_id):
            raise self._denied(customer_id, what)

    def _denied(self, customer_id: str, what: str) -> errors.ServiceError:
        return errors.permission_denied(
            "NOT_THE_CUSTOMERS_OWN",
            f"{self.subject!r} may not access {what} of another customer",
            {"subject": self.subject, "roles": ",".join(sorted(self.roles))},
        )


_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def from_claims(value: str) -> Caller:
    """The caller in a CLAIMS_HEADER value; UNAUTHENTICATED if it is not a token payload."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        raise _malformed() from None
    if not isinstance(payload, Mapping):
        raise _malformed()
    subject = payload.get("sub")
    roles = payload.get("roles", [])
    if not isinstance(subject, str) or not subject:
        raise _malformed()
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _malformed()
    return Caller(subject, frozenset(roles))


def _malformed() -> errors.ServiceError:
    return errors.unauthenticated(
        "CLAIMS_MALFORMED", "the verified claims passed by the gateway cannot be read"
    )


@contextmanager
def bound(metadata: Mapping[str, str]) -> Iterator[None]:
    """Make the caller of a call (from its metadata; maybe none) `current()` while it runs."""
    value = metadata.get(CLAIMS_HEADER)
    token = _caller.set(from_claims(value) if value else None)
    try:
        yield
    finally:
        _caller.reset(token)


def current() -> Caller:
    """The signed-in caller of this call; UNAUTHENTICATED if the call has none."""
    caller = _caller.get()
    if caller is None:
        raise errors.unauthenticated(
            "SIGN_IN_REQUIRED",
            "this call needs a signed-in user: send `authorization: Bearer <token>` "
            "through the gateway",
        )
    return caller


def claims_header(subject: str, *roles: str) -> tuple[str, str]:
    """The (header, value) the gateway passes for a verified token of `subject` with `roles`.

    For callers that stand where the gateway stands: tests that call a service directly.
    """
    payload = json.dumps({"sub": subject, "roles": list(roles)}).encode()
    return CLAIMS_HEADER, base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


__all__ = [
    "CLAIMS_HEADER",
    "CUSTOMER",
    "DEALER",
    "OPERATOR",
    "Caller",
    "bound",
    "claims_header",
    "current",
    "from_claims",
]
