"""The view's use case and handler in-process, on an in-memory database."""

from __future__ import annotations

from services.customer.domain import OrderStatus
from services.customer.handlers import handle
from services.customer.repository import CustomerUnitOfWork, metadata
from services.customer.usecases import customer_history
from services.kit.events import envelope_for
from tests.support.in_memory import in_memory_database
from tests.support.saga_events import saga


async def test_the_history_shows_what_the_handler_projected() -> None:
    async with in_memory_database(metadata) as database:
        events = saga("cancel", customer_id="alice")
        async with CustomerUnitOfWork(database) as uow:
            await handle(uow, [(event, envelope_for(event)) for event in events])
            await uow.commit()
        history = await customer_history(CustomerUnitOfWork(database), "alice")
        assert [order.status for order in history.orders] == [OrderStatus.CANCELLED]
        assert history.orders[0].points_granted == history.orders[0].points_reversed > 0
        assert history.point_balance == 0
        assert (await customer_history(CustomerUnitOfWork(database), "bob")).orders == ()
