"""NATS refuses what a service was not granted (stack/nats.py), seen by real clients of a real
nats-server: no anonymous connection, no forged events, no use of another's consumer.

The issue's attack, end to end: a running promotion service, and promotion's own credentials
trying to publish a `PayCompleted` so that promotion grants points for a payment that never
happened. The permission violation reaches the client, the event never reaches the stream, and
promotion's ledger stays empty, while the same event published with payment's credentials is
granted (the control that shows the check would have seen a grant).
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig
from phoneseller.order.v1 import events_pb2 as order_events
from phoneseller.payment.v1 import events_pb2 as payment_events
from phoneseller.promotion.v1 import promotion_service_pb2 as pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as pb_grpc

from services.kit.bus import auth_options, stream_config
from services.kit.config import SERVICE_NAMES
from services.kit.events import STREAM, envelope_for, new_event
from stack.nats import NatsAuth, chart_env_values
from stack.supervisor import LocalStack
from tests.support.identity import as_customer
from tests.support.jetstream import stream_messages
from tests.support.nats_server import NatsServer
from tests.support.processes import ServiceProcess
from tests.support.stack import stack_on_free_ports
from tests.support.waiting import eventually, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "helm" / "phoneseller" / "examples"

pytestmark = pytest.mark.slow

#: How long a client waits for an answer the server will never send (a refused request).
REFUSED_TIMEOUT = 1.0


class Connected:
    """A client connected as one user, with the errors the server sent it."""

    def __init__(self, client: Client, errors: list[str]) -> None:
        self.client = client
        self.errors = errors
        self.js = client.jetstream(timeout=REFUSED_TIMEOUT)

    async def refusal(self, subject: str) -> str:
        """The server's permission violation about `subject` (it arrives asynchronously)."""

        async def found() -> str | None:
            wanted = f'"{subject.lower()}"'
            return next(
                (e for e in self.errors if "permissions violation" in e and wanted in e), None
            )

        return await eventually(found, timeout=10, message=f"a permission violation for {subject}")


#: Connects as one of the server's users.
Connect = Callable[[str], Awaitable[Connected]]


@pytest.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def as_user(user: str) -> Connected:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        client = await nats.connect(
            nats_server.url, error_cb=on_error, **auth_options(user, nats_server.nkey_file(user))
        )
        clients.append(client)
        return Connected(client, errors)

    yield as_user
    for client in clients:
        await client.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def pay_completed(order_id: str, customer_id: str, amount: int) -> payment_events.PayCompleted:
    return new_event(
        payment_events.PayCompleted,
        order_id=order_id,
        customer_id=customer_id,
        payment_id=uid("pay"),
        amount=amount,
    )


async def test_a_connection_without_credentials_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=5)
    # A well-formed nkey the server was never told about is no better.
    stranger = NatsAuth(tmp_path / "elsewhere").seed_file("order")
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            nats_server.url, allow_reconnect=False, connect_timeout=5, nkeys_seed=str(stranger)
        )


@pytest.fixture
def promotion(nats_server: NatsServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("promotion", tmp_path, nats_server).start()
    yield service
    service.stop()


async def test_promotion_cannot_publish_a_payment_and_grants_nothing(
    promotion: ServiceProcess, nats_server: NatsServer, connect: Connect
) -> None:
    promotion_user = await connect("promotion")
    payment_user = await connect("payment")
    await payment_user.js.add_stream(stream_config())  # exists already: promotion made it
    forged_customer, real_customer = uid("forged"), uid("real")
    forged = envelope_for(pay_completed(uid("o"), forged_customer, 1_000_000))

    # Promotion's credentials: the server drops the publish, so JetStream never answers.
    with pytest.raises(TimeoutError):
        await promotion_user.js.publish(
            forged.subject, forged.payload, headers=forged.headers(), timeout=REFUSED_TIMEOUT
        )
    await promotion_user.refusal("phoneseller.payment.PayCompleted")

    # The same kind of event with payment's credentials is stored, and promotion grants it:
    # once that grant is there, promotion has handled everything the stream held before it.
    real = envelope_for(pay_completed(uid("o"), real_customer, 1_000))
    await payment_user.js.publish(real.subject, real.payload, headers=real.headers())
    async with grpc.aio.insecure_channel(promotion.address) as channel:
        stub = pb_grpc.PromotionServiceStub(channel)

        async def balance(customer_id: str) -> pb.PointBalance:
            # Straight to the service, as the gateway would pass a signed-in customer.
            answer: pb.PointBalance = await stub.GetPointBalance(
                pb.GetPointBalanceRequest(customer_id=customer_id),
                metadata=as_customer(customer_id),
            )
            return answer

        async def real_granted() -> bool:
            return (await balance(real_customer)).balance == 100

        await eventually(real_granted, timeout=20, message="the real payment's points")
        forged_balance = await balance(forged_customer)
    assert (forged_balance.balance, list(forged_balance.entries)) == (0, [])
    customers = {
        m.headers.get("Phoneseller-Customer-Id") if m.headers else None
        for m in await stream_messages(nats_server, "phoneseller.payment.>")
    }
    assert customers == {real_customer}, "the forged event never reached the stream"


async def test_a_service_cannot_use_another_services_consumer(
    nats_server: NatsServer, connect: Connect
) -> None:
    store = await connect("store")
    promotion = await connect("promotion")
    await store.js.add_stream(stream_config())
    await store.js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name="store",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subjects=["phoneseller.order.Ordered"],
        ),
    )
    order = await connect("order")
    ordered = envelope_for(
        new_event(
            order_events.Ordered,
            order_id=uid("o"),
            customer_id=uid("c"),
            item="Galaxy S25",
            quantity=1,
            unit_price=1,
            amount=1,
        )
    )
    await order.js.publish(ordered.subject, ordered.payload, headers=ordered.headers())

    # Promotion may neither re-create store's consumer (say, to change its filter), nor ask
    # about it, nor pull its events, nor listen on store's inboxes or everyone's.
    with pytest.raises(TimeoutError):
        await promotion.js.add_consumer(
            STREAM, ConsumerConfig(durable_name="store", ack_policy=AckPolicy.EXPLICIT)
        )
    await promotion.refusal(f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.store")
    with pytest.raises(TimeoutError):
        await promotion.js.consumer_info(STREAM, "store")
    await promotion.refusal(f"$JS.API.CONSUMER.INFO.{STREAM}.store")
    inbox = promotion.client.new_inbox()
    await promotion.client.subscribe(inbox)
    await promotion.client.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.store", b'{"batch": 1}', reply=inbox
    )
    await promotion.refusal(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.store")
    for foreign in ("_INBOX.>", "_INBOX_store.>"):
        await promotion.client.subscribe(foreign)
        await promotion.refusal(foreign)
    # Nor may anyone but the operator remove the stream.
    with pytest.raises(TimeoutError):
        await promotion.js.delete_stream(STREAM)
    await promotion.refusal(f"$JS.API.STREAM.DELETE.{STREAM}")

    # Store's consumer is untouched: its event is still waiting for store, who gets it.
    admin = await nats_server.connect()
    try:
        info = await admin.jetstream().consumer_info(STREAM, "store")
    finally:
        await admin.close()
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (1, 0, 0)
    pulled = await store.js.pull_subscribe_bind(consumer="store", stream=STREAM)
    [msg] = await pulled.fetch(1, timeout=5)
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == ordered.event_id
    await msg.ack()


def nats_chart_config(values: dict[str, object]) -> str:
    """nats.conf as the official NATS chart renders `config.merge` (its `nats.formatConfig`):
    pretty JSON, with every `"<< X >>"` string unquoted, so `$VAR` is a variable of the NATS
    configuration, resolved from the container's environment."""
    rendered = json.dumps(values, indent=2)
    return re.sub(r'"<<\s+(.*)\s+>>"', r"\1", rendered)


async def test_the_nats_chart_example_is_enforced_by_a_real_nats_server(tmp_path: Path) -> None:
    """examples/nats-auth-values.yaml with the keys of `python -m stack.nats keys`, as the NATS
    chart hands them to nats-server (tests/helm checks the grants equal the local stack's)."""
    server = NatsServer(tmp_path / "jetstream")
    merge = yaml.safe_load((EXAMPLES / "nats-auth-values.yaml").read_text())["config"]["merge"]
    server.config_file = tmp_path / "nats.conf"
    server.config_file.write_text(nats_chart_config(merge))
    server.env = yaml.safe_load(chart_env_values(server.auth))["container"]["env"]
    server.start()
    try:
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        promotion = Connected(await server.connect("promotion", error_cb=on_error), errors)
        payment = await server.connect("payment")
        try:
            await payment.jetstream().add_stream(stream_config())
            forged = envelope_for(pay_completed(uid("o"), uid("c"), 1_000_000))
            with pytest.raises(TimeoutError):
                await promotion.js.publish(
                    forged.subject, forged.payload, headers=forged.headers(), timeout=1
                )
            await promotion.refusal("phoneseller.payment.PayCompleted")
            real = envelope_for(pay_completed(uid("o"), uid("c"), 1_000))
            ack = await payment.jetstream().publish(
                real.subject, real.payload, headers=real.headers()
            )
            assert ack.seq == 1, "only payment's own event is stored"
        finally:
            await promotion.client.close()
            await payment.close()
    finally:
        server.stop()


@pytest.fixture
def stack_nats(tmp_path: Path) -> Iterator[LocalStack]:
    """The nats-server of `make up`: its supervisord program, run as it is written there."""
    stack = stack_on_free_ports(tmp_path / "run")
    stack.write_config()
    programs = configparser.RawConfigParser()
    programs.read(stack.config_path)
    command = shlex.split(programs["program:nats"]["command"])
    log_path = tmp_path / "nats.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def accepts() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            with socket.create_connection(("127.0.0.1", stack.nats_port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(accepts, timeout=15, message="the stack's nats-server")
        yield stack
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_make_up_runs_nats_with_a_user_per_service(stack_nats: LocalStack) -> None:
    """It refuses a stranger and lets each service in with the seed its environment names."""
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(stack_nats.nats_url, allow_reconnect=False, connect_timeout=5)
    for service in SERVICE_NAMES:
        seed = stack_nats.env_for(service, 0)["PHONESELLER_NATS_NKEY_FILE"]
        client = await nats.connect(
            stack_nats.nats_url, allow_reconnect=False, **auth_options(service, seed)
        )
        await client.close()
