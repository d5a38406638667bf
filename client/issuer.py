"""The development issuer: signs the bearer tokens that the gateway verifies, on one machine.

In a cluster an identity provider signs the users' tokens and the mesh fetches its public keys
(the chart's `auth.jwksUri`). On a laptop there is none, so `make up` makes one: an ES256
signing key and its public half as a JWKS, under `.run/auth/`. The local gateway's `jwt_authn`
filter reads the JWKS file; `phoneseller token --customer alice` signs with the key, as a sign-in
would. Anyone who can read the key can mint any identity — it is a development key, kept to the
user (mode 0600) and never shipped.

The tokens carry what the mesh and the services need (docs/security.md):

- `iss` = ISSUER, `aud` = AUDIENCE, `iat`/`exp` (UTC seconds): the gateway rejects anything else;
- `sub`: the customer id for a customer, the dealer's id for a dealer, the operator's name;
- `roles`: one of ROLES — which RPCs the gateway lets the token call.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

#: Who signs (`iss`) and for whom (`aud`): the chart's defaults `auth.issuer`/`auth.audiences`.
ISSUER = "phoneseller-dev"
AUDIENCE = "phoneseller"
#: The roles a token may carry (the chart's values say which role may call which RPC).
ROLES = ("customer", "dealer", "operator")
#: How long a token is good for unless asked otherwise: one working session.
DEFAULT_TTL_SECONDS = 8 * 3600
ALGORITHM = "ES256"

KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
#: The run folder of a checkout (`make up` keeps its state there), unless PHONESELLER_RUN_DIR.
RUN_DIR = Path(__file__).resolve().parents[1] / ".run"


def default_folder() -> Path:
    """Where `make up` keeps the development issuer: `<run folder>/auth`."""
    return Path(os.environ.get("PHONESELLER_RUN_DIR") or RUN_DIR) / "auth"


class IssuerError(RuntimeError):
    """No signing key where the issuer was asked to sign (the stack was never brought up)."""


@dataclass(frozen=True)
class DevIssuer:
    """The signing key under `folder` (usually `.run/auth`), and what it signs."""

    folder: Path

    @property
    def key_path(self) -> Path:
        return self.folder / KEY_FILE

    @property
    def jwks_path(self) -> Path:
        """The public keys, in the JWKS form the gateway (and Istio's jwksUri) reads."""
        return self.folder / JWKS_FILE

    @property
    def key_id(self) -> str:
        return self._keys()[1]

    def ensure(self) -> DevIssuer:
        """Create the key and the JWKS unless they exist (tokens stay valid across restarts)."""
        if self.key_path.is_file() and self.jwks_path.is_file():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(self.key_path, pem)
        public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        public.update(kid=f"dev-{uuid.uuid4().hex[:12]}", use="sig", alg=ALGORITHM)
        self.jwks_path.write_text(json.dumps({"keys": [public]}, indent=2) + "\n")
        return self

    def token(
        self,
        subject: str,
        *roles: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        audience: str = AUDIENCE,
        now: float | None = None,
    ) -> str:
        """A signed bearer token for `subject` acting in `roles` (one or more)."""
        unknown = [role for role in roles if role not in ROLES]
        if unknown or not roles:
            raise ValueError(f"unknown role(s) {unknown or '(none)'}; one of {', '.join(ROLES)}")
        if not subject:
            raise ValueError("a token needs a subject")
        key, kid = self._keys()
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "sub": subject,
            "roles": list(roles),
            "iat": issued,
            "exp": issued + ttl_seconds,
        }
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})

    def _keys(self) -> tuple[Any, str]:
        try:
            pem = self.key_path.read_bytes()
            jwks = json.loads(self.jwks_path.read_text())
        except (OSError, ValueError):
            raise IssuerError(
                f"no development signing key in {self.folder}: run `make up` first"
            ) from None
        key = serialization.load_pem_private_key(pem, password=None)
        return key, str(jwks["keys"][0]["kid"])


def _write_private(path: Path, content: bytes) -> None:
    """Write a file only its owner may read, without a moment in which others could."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)


__all__ = [
    "AUDIENCE",
    "DEFAULT_TTL_SECONDS",
    "ISSUER",
    "ROLES",
    "DevIssuer",
    "IssuerError",
    "default_folder",
]
