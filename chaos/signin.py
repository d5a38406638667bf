"""How a chaos client signs in: the one place that decides what metadata a call carries.

A customer's calls carry `authorization: Bearer <JWT>` signed by the stack's development
issuer (`LocalStack.issuer`, client/issuer.py: the key the gateway's JWKS names), one token per
customer, as a user of `phoneseller token` would. The checker reads everyone's data with an
operator's token: the operator role reads anyone's orders, payments, points, views and dealer
orders and changes nothing. Every call the clients and the checker make goes through
`Credentials.metadata_for`, so a change in how users sign in changes this module only.
"""

from __future__ import annotations

from typing import Protocol

from client.issuer import DevIssuer
from stack.supervisor import LocalStack

Metadata = tuple[tuple[str, str], ...]

#: The subject of the checker's reads: signed in with the operator role.
OPERATOR = "chaos-operator"


class Credentials(Protocol):
    """What a call made on behalf of `subject` (a customer id, or OPERATOR) carries."""

    def metadata_for(self, subject: str) -> Metadata: ...


class TokenSignIn:
    """Bearer tokens from a development issuer, one per subject, minted once and kept (they
    are good for hours, longer than any run)."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.issuer = issuer
        self._tokens: dict[str, Metadata] = {}

    def metadata_for(self, subject: str) -> Metadata:
        metadata = self._tokens.get(subject)
        if metadata is None:
            role = "operator" if subject == OPERATOR else "customer"
            token = self.issuer.token(subject, role)
            metadata = self._tokens[subject] = (("authorization", f"Bearer {token}"),)
        return metadata


def credentials_for_stack(stack: LocalStack) -> Credentials:
    """Tokens signed by the stack's own issuer (the one its gateway verifies)."""
    return TokenSignIn(stack.issuer.ensure())
