"""Payments in the service's database: the table, the repository and the unit of work."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)

from services.kit.clock import as_utc
from services.kit.db import Session
from services.kit.sql import Row, Statement, insert_ignoring_conflicts
from services.kit.uow import ConcurrentUpdateError, Repository, UnitOfWork
from services.payment.domain import Payment, PaymentStatus

metadata = MetaData()

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(64), primary_key=True),
    # One payment per order: this is what makes Pay idempotent on the order id.
    Column("order_id", String(64), nullable=False, unique=True),
    Column("customer_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decline_reason", String(200), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

_GET = Statement(select(payments).where(payments.c.payment_id == bindparam("payment_id")))
_GET_FOR_UPDATE = Statement(
    select(payments).where(payments.c.payment_id == bindparam("payment_id")).with_for_update()
)
_FOR_ORDER = Statement(select(payments).where(payments.c.order_id == bindparam("order_id")))
# A second Pay for the same order (a retry through the mesh) inserts nothing.
_ADD = insert_ignoring_conflicts(payments, "order_id", returning="payment_id")
# Compare-and-set on the status: a payment changes only from the status it was read in.
_SAVE = Statement(
    update(payments)
    .where(
        payments.c.payment_id == bindparam("key"),
        payments.c.status == bindparam("expected"),
    )
    .values(status=bindparam("status"), update_time=bindparam("update_time"))
)


def _payment(row: Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        amount=row["amount"],
        status=PaymentStatus(row["status"]),
        decline_reason=row["decline_reason"],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
    )


class PaymentRepository(Repository):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        #: The status each payment had when this unit of work read it (for `save`).
        self._read: dict[str, PaymentStatus] = {}

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        row = await self.session.row(_GET_FOR_UPDATE if for_update else _GET, payment_id=payment_id)
        return self._remember(_payment(row)) if row else None

    async def for_order(self, order_id: str) -> Payment | None:
        row = await self.session.row(_FOR_ORDER, order_id=order_id)
        return self._remember(_payment(row)) if row else None

    def _remember(self, payment: Payment) -> Payment:
        self._read[payment.payment_id] = payment.status
        return payment

    async def add(self, payment: Payment) -> bool:
        """Insert a new payment; False (nothing written) if its order has one already."""
        row = await self.session.row(
            _ADD,
            payment_id=payment.payment_id,
            order_id=payment.order_id,
            customer_id=payment.customer_id,
            amount=payment.amount,
            status=payment.status.value,
            decline_reason=payment.decline_reason,
            create_time=payment.create_time,
            update_time=payment.update_time,
        )
        if row is None:
            return False
        self._remember(payment)
        self._saved(payment)
        return True

    async def save(self, payment: Payment) -> None:
        """Write a changed payment read in this unit of work; raises ConcurrentUpdateError if
        another writer changed it since."""
        expected = self._read[payment.payment_id]
        changed = await self.session.execute(
            _SAVE,
            key=payment.payment_id,
            expected=expected.value,
            status=payment.status.value,
            update_time=payment.update_time,
        )
        if changed != 1:
            raise ConcurrentUpdateError(f"payment {payment.payment_id!r} changed concurrently")
        self._remember(payment)
        self._saved(payment)


class PaymentUnitOfWork(UnitOfWork):
    payments: PaymentRepository

    def repositories(self, session: Session) -> Sequence[Repository]:
        self.payments = PaymentRepository(session)
        return (self.payments,)
