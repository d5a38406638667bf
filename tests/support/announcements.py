"""Committing events with no state change, for tests and benchmarks of the kit itself.

Services publish events only through the aggregates they save; a kit test that wants events in
an outbox saves an `Announcement` (an aggregate that is nothing but events) the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from services.kit.db import Session
from services.kit.uow import Repository, UnitOfWork


class Announcement:
    def __init__(self, *events: Message) -> None:
        self.events: list[Message] = list(events)


class Announcements(Repository):
    async def save(self, announcement: Announcement) -> None:
        self._saved(announcement)


class AnnouncingUnitOfWork(UnitOfWork):
    announcements: Announcements

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.announcements = Announcements(session)
        return (self.announcements,)
