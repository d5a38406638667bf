"""Who may do what on NATS: one nkey per service, and the nats-server configuration that lets
each publish only its own events and use only its own durable consumer (DESIGN §10).

A service authenticates with an nkey: the seed (a file only it can read, 0600) signs the
server's challenge, and the server knows only the public key. So the server's configuration
holds no secret, no secret crosses the wire, and in a cluster the NATS chart's values need only
the public keys (docs/deploy.md). Everything not granted here is refused by the server:

- order, payment, promotion, store publish `phoneseller.<themselves>.>` only;
- each of them and customer may get the stream's info, create it, and create, read, ask about
  and acknowledge on its own durable consumer (named after it) only; payment has none;
- customer publishes nothing, and may also use the rebuild's replay consumer;
- admin may do everything (the operator's `nats` CLI, the tests' tooling).

Each user receives on its own inbox prefix only (`_INBOX_<user>.>`, services/kit/bus.py):
acknowledgements, pulled events and API answers for one service cannot be read by another.
Every service may create the `PHONESELLER` stream if it is missing, as before (the first one
wins); none may update, purge or delete it, or delete a durable consumer (a consumer created
again starts from the first event).

`LocalStack` (`make up`) and the tests' nats-server use the same `NatsAuth`; its seeds live in
one folder and are made once, so a stack keeps its users across `down`/`up`.

    python -m stack.nats keys DIR   # seeds and public keys for a cluster (docs/deploy.md)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from services.customer.rebuild import REPLAY_CONSUMER
from services.kit.bus import private_inbox
from services.kit.events import STREAM, SUBJECT_PREFIX

ADMIN = "admin"
API = "$JS.API"


@dataclass(frozen=True)
class Grant:
    """What one NATS user may do."""

    user: str
    #: Subjects it may publish events on.
    publishes: tuple[str, ...] = ()
    #: Durable consumers it may create or update, pull from, ask about and acknowledge on.
    durables: tuple[str, ...] = ()
    #: Ephemeral consumers of a fixed name it may create, pull from and delete (no acks).
    replays: tuple[str, ...] = ()
    #: No restrictions at all.
    admin: bool = False

    def publish_allow(self) -> list[str]:
        allowed = [*self.publishes, f"{API}.STREAM.INFO.{STREAM}", f"{API}.STREAM.CREATE.{STREAM}"]
        for name in self.durables:
            allowed += [
                # nats-py creates a durable by the legacy subject; newer clients by name (with
                # the filter appended when there is one).
                f"{API}.CONSUMER.DURABLE.CREATE.{STREAM}.{name}",
                *_named_consumer(name),
                # The reply subject of every delivered event, where acks, naks and "in
                # progress" go: $JS.ACK.<stream>.<consumer>.<delivered>.<seqs>.<time>.<pending>
                # (a JetStream domain would insert two tokens first; ours have none).
                f"$JS.ACK.{STREAM}.{name}.>",
            ]
        for name in self.replays:
            allowed += [*_named_consumer(name), f"{API}.CONSUMER.DELETE.{STREAM}.{name}"]
        return allowed

    def permissions(self) -> dict[str, Any] | None:
        """The user's `permissions` block (None: unrestricted)."""
        if self.admin:
            return None
        return {
            "publish": {"allow": self.publish_allow()},
            "subscribe": {"allow": [f"{private_inbox(self.user)}.>"]},
        }


def _named_consumer(name: str) -> list[str]:
    return [
        f"{API}.CONSUMER.CREATE.{STREAM}.{name}",
        f"{API}.CONSUMER.CREATE.{STREAM}.{name}.>",
        f"{API}.CONSUMER.INFO.{STREAM}.{name}",
        f"{API}.CONSUMER.MSG.NEXT.{STREAM}.{name}",
    ]


#: What each service does on the bus (docs/architecture.md; tests/unit/test_nats_grants.py
#: checks this against the code): it publishes its own context's events, if it has any, and
#: uses the durable consumer named after it, if it consumes any. The customer view publishes
#: nothing and may also replay the stream (services/customer/rebuild.py runs as customer).
SERVICE_GRANTS: dict[str, Grant] = {
    "order": Grant("order", publishes=(f"{SUBJECT_PREFIX}.order.>",), durables=("order",)),
    "payment": Grant("payment", publishes=(f"{SUBJECT_PREFIX}.payment.>",)),
    "promotion": Grant(
        "promotion", publishes=(f"{SUBJECT_PREFIX}.promotion.>",), durables=("promotion",)
    ),
    "store": Grant("store", publishes=(f"{SUBJECT_PREFIX}.store.>",), durables=("store",)),
    "customer": Grant("customer", durables=("customer",), replays=(REPLAY_CONSUMER,)),
}
ADMIN_GRANT = Grant(ADMIN, admin=True)


def new_seed() -> bytes:
    """A fresh user nkey seed (`SU…`)."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    """The public key (`U…`) of a user seed: what the server is told."""
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only; never replace an existing file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


class NatsAuth:
    """The users of one nats-server: their seeds in `folder`, and its configuration file."""

    def __init__(self, folder: Path, grants: Iterable[Grant] | None = None) -> None:
        self.folder = folder
        self.grants = {g.user: g for g in (grants or [*SERVICE_GRANTS.values(), ADMIN_GRANT])}

    @property
    def config_path(self) -> Path:
        return self.folder / "nats-server.conf"

    def seed_file(self, user: str) -> Path:
        """The file with `user`'s seed (what PHONESELLER_NATS_NKEY_FILE names), made if new."""
        if user not in self.grants:
            raise KeyError(f"no NATS user {user!r}; known: {sorted(self.grants)}")
        path = self.folder / f"{user}.nk"
        if not path.exists():
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Another process making the same user's seed at once: theirs is as good.
            with contextlib.suppress(FileExistsError):
                _write_private(path, new_seed() + b"\n")
        return path

    def public_key(self, user: str) -> str:
        return public_key(self.seed_file(user).read_bytes().strip())

    def server_config(self) -> str:
        """nats-server's `authorization` block: one nkey user per grant, nothing anonymous."""
        users = []
        for grant in self.grants.values():
            user: dict[str, Any] = {"nkey": self.public_key(grant.user)}
            if (permissions := grant.permissions()) is not None:
                user["permissions"] = permissions
            users.append(user)
        # JSON is valid nats-server configuration; quoting keeps `$JS…` from being variables.
        body = json.dumps({"users": users}, indent=2)
        header = "# Written by stack/nats.py from its grants; edits are overwritten."
        return f"{header}\nauthorization {body}\n"

    def write_server_config(self) -> Path:
        """(Re)write the configuration from the seeds in `folder` (made where missing)."""
        text = self.server_config()
        self.config_path.write_text(text)
        return self.config_path


def chart_env_values(auth: NatsAuth) -> str:
    """Values for the NATS chart that hand the public keys to examples/nats-auth-values.yaml."""
    lines = [
        "# Public keys of the phoneseller NATS users, for the official NATS chart, with",
        "# helm/phoneseller/examples/nats-auth-values.yaml. No secret here: the seeds stay in DIR.",
        "container:",
        "  env:",
    ]
    for user in auth.grants:
        lines.append(f"    {chart_env_name(user)}: {auth.public_key(user)}")
    return "\n".join(lines) + "\n"


def chart_env_name(user: str) -> str:
    """The NATS container's variable that carries `user`'s public key."""
    return f"PHONESELLER_{user.upper()}_NKEY"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.nats", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser(
        "keys", help="make (or keep) a seed per user in DIR and write the NATS chart's key values"
    )
    keys.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    auth = NatsAuth(args.dir)
    values = args.dir / "nats-keys-values.yaml"
    for user in auth.grants:
        print(f"{user:<10} {auth.public_key(user)}  seed: {auth.seed_file(user)}")
    values.write_text(chart_env_values(auth))
    print(f"public keys for the NATS chart: {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
