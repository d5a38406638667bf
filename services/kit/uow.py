"""The unit of work: one transaction, the repositories that work in it, and the events of the
aggregates they saved, written to the outbox in that same transaction.

Every service has a `UnitOfWork` subclass that creates its repositories in `repositories()`;
use cases and handlers only ever see those (`uow.orders`, `uow.payments`, …). A repository's
`save(aggregate)` records the aggregate; `commit()` collects the events every recorded aggregate
raised and adds them to the outbox, so an event exists if and only if its change does, and no
code path can forget to publish one.

    async with OrderUnitOfWork(database) as uow:
        order = await uow.orders.get(order_id)
        order.mark_paid(payment_id)
        await uow.orders.save(order)
        await uow.commit()

`commit()` marks the work to be kept; it becomes durable when the `async with` block ends (on
SQLite, together with the other units of work of its group commit). A block that ends without
`commit()`, or with an exception, changes nothing. `async with uow.reading():` opens a
read-only transaction (on SQLite, the reader connection: it never waits for writers). One unit
of work object may be entered again and again, one transaction after another, but never by two
tasks at once: make one per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol, Self

from google.protobuf.message import Message

from services.kit import context, metrics
from services.kit.db import Database, Session, Transaction
from services.kit.events import envelope_for
from services.kit.sql import insert_row
from services.kit.tables import outbox


class Aggregate(Protocol):
    """Anything a repository saves: it lists the events its last changes raised."""

    events: list[Message]


class ConcurrentUpdateError(Exception):
    """Another writer changed the aggregate between our read and our write; nothing was
    written. Callers read again and retry (use cases) or let the event come again (handlers)."""


class Repository:
    """The base of every repository: statements through the session, saved aggregates kept."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.saved: list[Aggregate] = []
        #: The trace context each saved aggregate was saved in: its events' context (a batch
        #: handler or an event handler commits after its event's span has ended).
        self.saved_in: list[tuple[str, str]] = []

    def _saved(self, aggregate: Aggregate) -> None:
        """Call from `save` once the aggregate is written: its events will be published."""
        if not any(a is aggregate for a in self.saved):
            self.saved.append(aggregate)
            self.saved_in.append(context.current())


_INSERT_OUTBOX = insert_row(outbox)


class UnitOfWork:
    """One transaction of a service's database; subclasses add their repositories."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.read_only = False
        self._transaction: Transaction | None = None
        self._repositories: list[Repository] = []
        self.committed = False
        #: The events the transaction writes, counted (services.kit.metrics) once it is durable.
        self._events: list[Message] = []

    def repositories(self, session: Session) -> Sequence[Repository]:
        """Create the service's repositories on `session` (as attributes) and return them."""
        return ()

    @property
    def session(self) -> Session:
        if self._transaction is None:
            raise RuntimeError("unit of work used outside its `async with` block")
        return self._transaction.session

    async def __aenter__(self) -> Self:
        if self._transaction is not None:
            raise RuntimeError("unit of work entered twice at once; make one per request")
        transaction = self.database.transaction(read_only=self.read_only)
        await transaction.begin()
        self._transaction = transaction
        self.committed = False
        try:
            self._repositories = list(self.repositories(transaction.session))
        except BaseException:
            await transaction.end(commit=False)
            self._transaction = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is not None:
            events, self._events = self._events, []
            await transaction.end(commit=self.committed and exc is None)
            if events and self.committed and exc is None:
                metrics.events_committed(events)  # durable now: count the saga's steps

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Self]:
        """A read-only transaction on the same repositories."""
        self.read_only = True
        try:
            async with self:
                yield self
        finally:
            self.read_only = False

    def collect_new_events(self) -> Iterator[Message]:
        """The events of every saved aggregate, each once (taken off the aggregate)."""
        for event, _ in self._collect_with_context():
            yield event

    def _collect_with_context(self) -> Iterator[tuple[Message, tuple[str, str]]]:
        for repository in self._repositories:
            for aggregate, trace in zip(repository.saved, repository.saved_in, strict=True):
                events = list(aggregate.events)
                aggregate.events.clear()
                for event in events:
                    yield event, trace
            repository.saved.clear()
            repository.saved_in.clear()

    async def commit(self) -> None:
        """Keep this unit of work's changes, with the events they raised in the outbox."""
        if self.read_only:
            raise RuntimeError("a read-only unit of work cannot commit")
        transaction = self._transaction
        if transaction is None:
            raise RuntimeError("unit of work used outside its `async with` block")
        raised = list(self._collect_with_context())
        envelopes = [envelope_for(event, trace) for event, trace in raised]
        self._events = [event for event, _ in raised]
        if envelopes:
            writer = self.database.writer_id
            await transaction.session.execute_many(
                _INSERT_OUTBOX, [envelope.outbox_row(writer) for envelope in envelopes]
            )
            transaction.wrote_events()
        self.committed = True


__all__ = ["Aggregate", "ConcurrentUpdateError", "Repository", "UnitOfWork"]
