"""How the client signs in: which bearer token each call carries.

A call acts for someone — placing alice's order is alice's, shipping is a dealer's — so the
client asks its `SignIn` for a token per (role, subject):

- `DevSignIn` signs one with the development issuer's key (`make up` made it), as a sign-in
  page would after checking a password: the CLI and `phoneseller demo` use it on a laptop;
- `BearerToken` sends one token the user brought (`--token`, `$PHONESELLER_TOKEN`) for every
  call, whatever it is for: what a user of a real deployment does;
- `Anonymous` sends none (the gateway then answers UNAUTHENTICATED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from client.issuer import DevIssuer

CUSTOMER, DEALER, OPERATOR = "customer", "dealer", "operator"


class SignIn(Protocol):
    def token(self, role: str, subject: str) -> str | None:
        """The bearer token for a call made as `subject` in `role`; None = no token."""


@dataclass
class DevSignIn:
    """Tokens from the development issuer, one per identity, made when first needed."""

    issuer: DevIssuer
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def token(self, role: str, subject: str) -> str:
        key = (role, subject)
        if key not in self._tokens:
            self._tokens[key] = self.issuer.token(subject, role)
        return self._tokens[key]


@dataclass(frozen=True)
class BearerToken:
    """One token for every call."""

    value: str

    def token(self, role: str, subject: str) -> str:
        return self.value


class Anonymous:
    def token(self, role: str, subject: str) -> None:
        return None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


__all__ = [
    "CUSTOMER",
    "DEALER",
    "OPERATOR",
    "Anonymous",
    "BearerToken",
    "DevSignIn",
    "SignIn",
    "bearer_metadata",
]
