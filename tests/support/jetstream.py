"""Publishing events as the outbox relays do, and reading back what reached the stream."""

from __future__ import annotations

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from services.kit.events import MSG_ID, STREAM, Envelope, EventTypes, envelope_for
from tests.support.nats_server import NatsServer


async def publish_events(
    js: JetStreamContext, *events: Message, dedupe: bool = True
) -> list[PubAck]:
    """Publish as the outbox relays do; `dedupe=False` drops `Nats-Msg-Id` so that JetStream
    stores copies it would otherwise refuse, and the consumer's inbox has to catch them."""
    acks = []
    for event in events:
        envelope = envelope_for(event)
        headers = envelope.headers()
        if not dedupe:
            del headers[MSG_ID]
        acks.append(await js.publish(envelope.subject, envelope.payload, headers=headers))
    return acks


async def read_subject(js: JetStreamContext, subject: str = "phoneseller.>") -> list[Msg]:
    """Every message now in the stream on `subject`, oldest first (an ephemeral consumer that
    stops at what was pending when it was made, so it never waits for a timeout)."""
    subscription = await js.pull_subscribe(
        subject,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )
    try:
        pending = (await subscription.consumer_info()).num_pending or 0
        messages: list[Msg] = []
        while len(messages) < pending:
            messages += await subscription.fetch(min(pending - len(messages), 1000), timeout=5)
        return messages
    finally:
        await subscription.unsubscribe()


async def events_about(
    js: JetStreamContext, subject: str, event_types: EventTypes, order_id: str
) -> list[Message]:
    """The decoded events on `subject` about one order, oldest first."""
    events = []
    for msg in await read_subject(js, subject):
        envelope = Envelope.from_message(msg.subject, msg.headers, msg.data)
        if envelope.order_id == order_id:
            event = event_types.decode(envelope)
            assert getattr(event, "event_id", None) == envelope.event_id
            events.append(event)
    return events


async def stream_messages(server: NatsServer, subject: str = "phoneseller.>") -> list[Msg]:
    """Every message in the stream on `subject`, from a fresh connection (as admin)."""
    client = await server.connect()
    try:
        return await read_subject(client.jetstream(), subject)
    finally:
        await client.close()


async def stream_count(server: NatsServer) -> int:
    client = await server.connect()
    try:
        info = await client.jetstream().stream_info(STREAM)
        count: int = info.state.messages
        return count
    finally:
        await client.close()
