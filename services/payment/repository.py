"""Payments in the service's database (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import as_utc
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


def _payment(row: RowMapping) -> Payment:
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


class PaymentRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def get(self, payment_id: str) -> Payment | None:
        row = (
            (
                await self.connection.execute(
                    select(payments).where(payments.c.payment_id == payment_id)
                )
            )
            .mappings()
            .first()
        )
        return _payment(row) if row else None

    async def for_order(self, order_id: str) -> Payment | None:
        row = (
            (await self.connection.execute(select(payments).where(payments.c.order_id == order_id)))
            .mappings()
            .first()
        )
        return _payment(row) if row else None

    async def add(self, payment: Payment) -> None:
        await self.connection.execute(
            insert(payments).values(
                payment_id=payment.payment_id,
                order_id=payment.order_id,
                customer_id=payment.customer_id,
                amount=payment.amount,
                status=payment.status.value,
                decline_reason=payment.decline_reason,
                create_time=payment.create_time,
                update_time=payment.update_time,
            )
        )

    async def save_status(self, payment: Payment, expected: PaymentStatus) -> bool:
        """Compare-and-set the status; False if another call changed it first."""
        result = await self.connection.execute(
            update(payments)
            .where(payments.c.payment_id == payment.payment_id, payments.c.status == expected.value)
            .values(status=payment.status.value, update_time=payment.update_time)
        )
        return result.rowcount == 1
