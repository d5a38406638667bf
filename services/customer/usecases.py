"""The view's use case: a customer's history. The view is written only by events
(services/customer/handlers.py); in-process tests: tests/unit/test_customer_usecases.py."""

from __future__ import annotations

from services.customer.domain import CustomerHistory
from services.customer.repository import CustomerUnitOfWork


async def customer_history(uow: CustomerUnitOfWork, customer_id: str) -> CustomerHistory:
    """Every order of the customer as the view has seen it, newest first.

    A customer the view has not seen is not an error: the view is eventually consistent and
    keeps no list of customers, so "unknown" and "not seen yet" look the same here.
    """
    async with uow.reading():
        return await uow.views.history(customer_id)
