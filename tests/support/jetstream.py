"""Reading what actually reached the JetStream stream."""

from __future__ import annotations

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

from services.kit.events import STREAM


async def stream_messages(nats_url: str, subject: str = "phoneseller.>") -> list[Msg]:
    """Every message in the stream on `subject`, oldest first, read with an ephemeral consumer."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        info = await js.stream_info(STREAM)
        subscription = await js.pull_subscribe(
            subject,
            stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        messages: list[Msg] = []
        while True:
            try:
                batch = await subscription.fetch(1000, timeout=1)
            except (FetchTimeoutError, TimeoutError):
                break
            messages.extend(batch)
            if batch and batch[-1].metadata.sequence.stream >= info.state.last_seq:
                break
        await subscription.unsubscribe()
        return messages
    finally:
        await client.close()


async def stream_count(nats_url: str) -> int:
    client = await nats.connect(nats_url)
    try:
        info = await client.jetstream().stream_info(STREAM)
        count: int = info.state.messages
        return count
    finally:
        await client.close()
