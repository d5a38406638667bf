"""Point grants and the ledger in the service's database: tables, repository, unit of work."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    case,
    select,
    update,
)

from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_row
from services.kit.uow import ConcurrentUpdateError, Repository, UnitOfWork
from services.promotion.domain import EntryKind, GrantStatus, LedgerEntry, PointGrant

metadata = MetaData()

grants = Table(
    "point_grants",
    metadata,
    # One grant per order: what makes granting and clawing back idempotent on the order id.
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("points_granted", BigInteger, nullable=False),
    Column("points_reversed", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("paid", Boolean, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

ledger = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    # At most one grant and one reversal per order, even when two writers race.
    UniqueConstraint("order_id", "kind", name="uq_ledger_entries_order_kind"),
)

Index("ix_ledger_entries_customer", ledger.c.customer_id, ledger.c.create_time)

# A grant and its reversal written together share a create_time: the grant comes first.
_KIND_ORDER = case((ledger.c.kind == EntryKind.GRANT.value, 0), else_=1)


_GET = Statement(select(grants).where(grants.c.order_id == bindparam("order_id")))
_GET_FOR_UPDATE = Statement(
    select(grants).where(grants.c.order_id == bindparam("order_id")).with_for_update()
)
_ADD = insert_row(grants)
_ADD_ENTRY = insert_row(ledger)
# Compare-and-set on what the grant was when read: another writer's change makes it miss.
_SAVE = Statement(
    update(grants)
    .where(
        grants.c.order_id == bindparam("key"),
        grants.c.status == bindparam("expected_status"),
        grants.c.paid == bindparam("expected_paid"),
    )
    .values(
        customer_id=bindparam("customer_id"),
        points_granted=bindparam("points_granted"),
        points_reversed=bindparam("points_reversed"),
        status=bindparam("status"),
        paid=bindparam("paid"),
        update_time=bindparam("update_time"),
    )
)
_ENTRIES = Statement(
    select(ledger)
    .where(ledger.c.customer_id == bindparam("customer_id"))
    .order_by(ledger.c.create_time, _KIND_ORDER, ledger.c.entry_id)
)


def _grant(row: Row) -> PointGrant:
    return PointGrant(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        points_granted=row["points_granted"],
        points_reversed=row["points_reversed"],
        status=GrantStatus(row["status"]),
        paid=row["paid"],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
    )


def _entry(row: Row) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row["entry_id"],
        customer_id=row["customer_id"],
        order_id=row["order_id"],
        kind=EntryKind(row["kind"]),
        points=row["points"],
        create_time=as_utc(row["create_time"]),
    )


def _values(grant: PointGrant) -> dict[str, object]:
    return {
        "customer_id": grant.customer_id,
        "points_granted": grant.points_granted,
        "points_reversed": grant.points_reversed,
        "status": grant.status.value,
        "paid": grant.paid,
        "update_time": grant.update_time,
    }


class GrantRepository(Repository):
    """Point grants, and the ledger entries their changes add."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        #: What each grant was when this unit of work read it (for `save`'s compare-and-set).
        self._read: dict[str, tuple[GrantStatus, bool]] = {}

    async def get(self, order_id: str, *, for_update: bool = False) -> PointGrant | None:
        """The order's grant; `for_update` keeps others from changing it until this unit of
        work ends (PostgreSQL; SQLite's writer holds the whole database anyway)."""
        row = await self.session.row(_GET_FOR_UPDATE if for_update else _GET, order_id=order_id)
        if row is None:
            return None
        grant = _grant(row)
        self._read[grant.order_id] = (grant.status, grant.paid)
        return grant

    async def save(self, grant: PointGrant) -> None:
        """Write a new grant, or a changed one read in this unit of work, with its new ledger
        entries. Raises ConcurrentUpdateError if another writer changed it since (nothing is
        written then) and the database's IntegrityError if another writer created it first."""
        read = self._read.get(grant.order_id)
        if read is None:
            await self.session.execute(
                _ADD, order_id=grant.order_id, create_time=grant.create_time, **_values(grant)
            )
        else:
            changed = await self.session.execute(
                _SAVE,
                key=grant.order_id,
                expected_status=read[0].value,
                expected_paid=read[1],
                **_values(grant),
            )
            if changed != 1:
                raise ConcurrentUpdateError(f"grant of order {grant.order_id!r} changed")
        self._read[grant.order_id] = (grant.status, grant.paid)
        await self.session.execute_many(
            _ADD_ENTRY,
            [
                {
                    "entry_id": e.entry_id,
                    "customer_id": e.customer_id,
                    "order_id": e.order_id,
                    "kind": e.kind.value,
                    "points": e.points,
                    "create_time": e.create_time,
                }
                for e in grant.new_entries
            ],
        )
        grant.new_entries.clear()
        self._saved(grant)

    async def entries(self, customer_id: str) -> list[LedgerEntry]:
        """The customer's ledger, oldest first."""
        return [_entry(row) for row in await self.session.rows(_ENTRIES, customer_id=customer_id)]


class PromotionUnitOfWork(UnitOfWork):
    grants: GrantRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.grants = GrantRepository(session)
        return (self.grants,)
