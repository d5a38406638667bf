"""The kit's own tables, present in every service's database beside the service's tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT identity.
_Sequence = BigInteger().with_variant(Integer(), "sqlite")

#: Events committed with the changes that caused them, waiting to be published. The relay
#: deletes a row once JetStream has acknowledged it, so the table holds only what is pending.
#: `writer` names the process that committed the row: its own relay publishes it at once, the
#: relays of other processes on the same database (replicas) only once it is overdue.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", _Sequence, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("event_type", String(200), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("traceparent", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("writer", String(64), nullable=False),
    # The W3C tracestate that goes with traceparent (services.kit.tracing). Added after the
    # table was first shipped: a data folder from before it needs `make down` and a fresh
    # .run/data (create_all adds no column to an existing table; docs/architecture.md).
    Column("tracestate", Text, nullable=False, server_default=""),
)

#: Ids of events this service has handled, written in the handler's transaction. A row is
#: pruned once its event can no longer come again: JetStream's ack floor has passed its stream
#: sequence (no redelivery) and it is older than the inbox retention (docs/architecture.md).
inbox = Table(
    "inbox",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
)
Index("ix_inbox_handled_at", inbox.c.handled_at)

#: Events that kept failing, parked with their error so they block nothing and are not lost.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False),
)
