"""Point grants and the ledger in the service's database (SQLAlchemy Core)."""

from __future__ import annotations

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
    case,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import as_utc
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


def _grant(row: RowMapping) -> PointGrant:
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


def _entry(row: RowMapping) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row["entry_id"],
        customer_id=row["customer_id"],
        order_id=row["order_id"],
        kind=EntryKind(row["kind"]),
        points=row["points"],
        create_time=as_utc(row["create_time"]),
    )


class PromotionRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def get(self, order_id: str, *, for_update: bool = False) -> PointGrant | None:
        """The order's grant; `for_update` locks its row until the transaction ends
        (PostgreSQL; SQLite's write transactions are serialized already)."""
        query = select(grants).where(grants.c.order_id == order_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.connection.execute(query)).mappings().first()
        return _grant(row) if row else None

    async def add(self, grant: PointGrant) -> None:
        await self.connection.execute(
            insert(grants).values(
                order_id=grant.order_id,
                customer_id=grant.customer_id,
                points_granted=grant.points_granted,
                points_reversed=grant.points_reversed,
                status=grant.status.value,
                paid=grant.paid,
                create_time=grant.create_time,
                update_time=grant.update_time,
            )
        )
        await self._add_entries(grant)

    async def save(self, grant: PointGrant, expected: PointGrant) -> bool:
        """Compare-and-set a changed grant and add its new entries; False if another writer
        changed the grant first (nothing is written then)."""
        result = await self.connection.execute(
            update(grants)
            .where(
                grants.c.order_id == grant.order_id,
                grants.c.status == expected.status.value,
                grants.c.paid == expected.paid,
            )
            .values(
                customer_id=grant.customer_id,
                points_granted=grant.points_granted,
                points_reversed=grant.points_reversed,
                status=grant.status.value,
                paid=grant.paid,
                update_time=grant.update_time,
            )
        )
        if result.rowcount != 1:
            return False
        await self._add_entries(grant)
        return True

    async def _add_entries(self, grant: PointGrant) -> None:
        if not grant.new_entries:
            return
        await self.connection.execute(
            insert(ledger),
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

    async def entries(self, customer_id: str) -> list[LedgerEntry]:
        """The customer's ledger, oldest first."""
        rows = (
            (
                await self.connection.execute(
                    select(ledger)
                    .where(ledger.c.customer_id == customer_id)
                    .order_by(ledger.c.create_time, _KIND_ORDER, ledger.c.entry_id)
                )
            )
            .mappings()
            .all()
        )
        return [_entry(row) for row in rows]
