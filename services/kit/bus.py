"""The connection to NATS JetStream, kept up for the life of the process.

NATS being down never stops a service from answering: the outbox holds events until the bus
is back. The bus reports its state to the `phoneseller.eventflow` health entry and the logs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from services.kit.events import DUPLICATE_WINDOW_SECONDS, STREAM, SUBJECT_PREFIX, Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamRetention:
    """How much history the PHONESELLER stream keeps: an operator's choice (docs/configuration.md).

    The customer view can be rebuilt by replay only from what the stream still holds.
    0 means no limit.
    """

    max_age_seconds: float = 0.0
    max_bytes: int = 0


def stream_config(replicas: int = 1, retention: StreamRetention | None = None) -> StreamConfig:
    retention = retention or StreamRetention()
    return StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=retention.max_age_seconds or None,
        max_bytes=retention.max_bytes or None,
    )


@dataclass(frozen=True)
class Published:
    """JetStream's acknowledgement of one published event."""

    #: The stream already held this `Nats-Msg-Id` (a republished copy, refused).
    duplicate: bool


class PublishError(Exception):
    """JetStream refused an event (or no stream takes its subject)."""


def private_inbox(user: str) -> str:
    """The inbox prefix of NATS user `user`. What the server sends a process (acknowledgements,
    pulled events, API answers) goes to its inboxes, and each user may subscribe to its own
    prefix only (stack/nats.py), so no service reads another's."""
    return f"_INBOX_{user}"


def auth_options(user: str, nkey_file: str) -> dict[str, Any]:
    """`nats.connect` options of a process that is NATS user `user` and signs the server's
    challenge with the nkey seed in `nkey_file` ("": no credentials, for a server without
    authorization). nats-py keeps the public key of the first connection for every
    reconnection, so a rotated seed takes a restart of the process (docs/deploy.md)."""
    options: dict[str, Any] = {"inbox_prefix": private_inbox(user)}
    if nkey_file:
        options["nkeys_seed"] = nkey_file
    return options


class EventBus:
    """A reconnecting NATS client plus the JetStream stream the system publishes to."""

    def __init__(
        self,
        url: str,
        *,
        stream_replicas: int = 1,
        retention: StreamRetention | None = None,
        name: str = "phoneseller",
        on_state_change: Callable[[bool], Awaitable[None]] | None = None,
        user: str = "",
        nkey_file: str = "",
    ) -> None:
        self.url = url
        #: The NATS user this process is (default: its name) and that user's nkey seed file.
        self.user = user or name
        self.nkey_file = nkey_file
        self.stream_replicas = stream_replicas
        self.retention = retention or StreamRetention()
        self.name = name
        #: Counts (re)connections: what was asked of the server on an earlier one is gone.
        self.generation = 0
        # Acknowledgements of `publish_all`, by the token at the end of their reply subject.
        self._acks: Subscription | None = None
        self._ack_prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Published]] = {}
        self._on_state_change = on_state_change
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._client is not None and self._client.is_connected

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("event bus not connected yet")
        return self._client

    @property
    def jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("event bus not connected yet")
        return self._js

    async def wait_ready(self) -> JetStreamContext:
        await self._ready.wait()
        return self.jetstream

    async def _report(self, connected: bool) -> None:
        log.log(
            logging.INFO if connected else logging.WARNING,
            "event bus connected" if connected else "event bus disconnected",
            extra={"nats_url": self.url},
        )
        if self._on_state_change is not None:
            await self._on_state_change(connected)

    async def connect(self, retry_interval: float = 0.5) -> None:
        """Connect (retrying until NATS answers) and make sure the stream exists."""
        while self._client is None:
            try:
                self._client = await nats.connect(
                    servers=self.url.split(","),
                    name=self.name,
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    allow_reconnect=True,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                    **auth_options(self.user, self.nkey_file),
                )
            except Exception as exc:
                log.warning(
                    "cannot reach NATS, retrying", extra={"error": str(exc) or type(exc).__name__}
                )
                await asyncio.sleep(retry_interval)
        self._js = self._client.jetstream(timeout=5)
        await self.ensure_stream()
        self.generation += 1
        self._ready.set()
        await self._report(True)

    async def publish_all(
        self, envelopes: Sequence[Envelope], timeout: float
    ) -> list[Published | BaseException]:
        """Publish events to JetStream at once and wait for their acks together.

        What nats-py's `publish_async` does, with less per event (its semaphore, per-message
        bookkeeping and PubAck dataclass): `make bench-events` went from 10.8k to 13.3k events/s
        end to end with this. One reply subscription per connection; each ack is matched by
        the token at the end of its reply subject.
        """
        client = self.client
        if self._acks is None:
            self._ack_prefix = client.new_inbox()
            self._acks = await client.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack)
        loop = asyncio.get_running_loop()
        tokens: list[str] = []
        futures: list[asyncio.Future[Published]] = []
        for envelope in envelopes:
            token = str(next(self._tokens))
            future: asyncio.Future[Published] = loop.create_future()
            self._waiting[token] = future
            tokens.append(token)
            futures.append(future)
            await client.publish(
                envelope.subject,
                envelope.payload,
                reply=f"{self._ack_prefix}.{token}",
                headers=envelope.headers(),
            )
        try:
            await asyncio.wait(futures, timeout=timeout)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        results: list[Published | BaseException] = []
        for future in futures:
            if not future.done():
                future.cancel()
                results.append(TimeoutError("no acknowledgement from JetStream in time"))
            elif (error := future.exception()) is not None:
                results.append(error)
            else:
                results.append(future.result())
        return results

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return  # its publish_all gave up waiting
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(PublishError(f"no stream takes {STREAM} subjects"))
            return
        try:
            answer = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(PublishError(f"unreadable acknowledgement: {exc}"))
            return
        if "error" in answer:
            future.set_exception(PublishError(str(answer["error"].get("description", answer))))
        else:
            future.set_result(Published(duplicate=bool(answer.get("duplicate"))))

    async def ensure_stream(self) -> None:
        """Create the stream, or leave it as it is if it exists (another service made it)."""
        config = stream_config(self.stream_replicas, self.retention)
        try:
            await self.jetstream.add_stream(config)
        except BadRequestError as exc:
            # Exists with other settings (e.g. an operator raised max_age): theirs wins.
            log.info("stream exists with other settings; keeping them", extra={"error": str(exc)})

    async def _disconnected(self) -> None:
        await self._report(False)

    async def _reconnected(self) -> None:
        self.generation += 1
        await self._report(True)

    async def _error(self, exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            # The server refused a publish or subscription: a grant that does not match what
            # this process does (stack/nats.py, docs/deploy.md). The publish waits in vain for
            # its ack, so say why here.
            log.error("NATS refused this user", extra={"user": self.user, "error": str(exc)})
            return
        if "authorization violation" in str(exc).lower():
            # Our key is not (or no longer) the server's: the client keeps reconnecting, and
            # gets in once the server and our seed file agree again (a rotation half done).
            log.warning("NATS refuses our credentials", extra={"user": self.user})
            return
        log.debug("nats client error", extra={"error": str(exc)})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            try:
                async with asyncio.timeout(2):
                    await client.drain()
            except Exception:
                await client.close()
