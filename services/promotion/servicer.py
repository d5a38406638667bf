"""PromotionService over gRPC: ClawBackPoints (internal, from payment) and GetPointBalance."""

from __future__ import annotations

import logging

import grpc
from phoneseller.promotion.v1 import promotion_service_pb2 as pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as pb_grpc
from sqlalchemy.exc import IntegrityError

from services.kit import errors
from services.kit.clock import timestamp
from services.kit.db import Database
from services.kit.validation import Violations
from services.promotion.domain import EntryKind, GrantStatus, LedgerEntry, PointGrant, balance
from services.promotion.repository import PromotionRepository

log = logging.getLogger(__name__)

#: Tries of a write that lost a race with another writer of the same grant.
WRITE_ATTEMPTS = 3

_STATUS = {
    GrantStatus.GRANTED: pb.POINT_GRANT_STATUS_GRANTED,
    GrantStatus.REVERSED: pb.POINT_GRANT_STATUS_REVERSED,
}

_KIND = {
    EntryKind.GRANT: pb.LEDGER_ENTRY_KIND_GRANT,
    EntryKind.REVERSAL: pb.LEDGER_ENTRY_KIND_REVERSAL,
}


def to_proto(grant: PointGrant) -> pb.PointGrant:
    return pb.PointGrant(
        order_id=grant.order_id,
        customer_id=grant.customer_id,
        points_granted=grant.points_granted,
        points_reversed=grant.points_reversed,
        status=_STATUS[grant.status],
    )


def entry_to_proto(entry: LedgerEntry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=entry.entry_id,
        order_id=entry.order_id,
        kind=_KIND[entry.kind],
        points=entry.points,
        create_time=timestamp(entry.create_time),
    )


class _RacedError(Exception):
    """Another writer changed the grant between our read and our write."""


class PromotionServicer(pb_grpc.PromotionServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    async def ClawBackPoints(
        self, request: pb.ClawBackPointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PointGrant:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("customer_id", request.customer_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        for _ in range(WRITE_ATTEMPTS):
            try:
                return to_proto(await self._claw_back(request))
            except (IntegrityError, _RacedError) as exc:
                # A concurrent clawback or grant for the same order won; look again.
                log.debug("clawback raced; retrying", extra={"error": type(exc).__name__})
        raise errors.unavailable(
            "CONCURRENT_UPDATE",
            f"the points of order {request.order_id!r} are changing right now; try again",
            retry_after_seconds=0.1,
            metadata={"order_id": request.order_id},
        )

    async def _claw_back(self, request: pb.ClawBackPointsRequest) -> PointGrant:
        async with self.database.unit_of_work() as uow:
            grants = PromotionRepository(uow.connection)
            grant = await grants.get(request.order_id, for_update=True)
            if grant is None:
                # The cancel raced ahead of the payment's event: reverse first, grant later.
                result = PointGrant.reversed_before_payment(request.order_id, request.customer_id)
                await grants.add(result)
            else:
                if grant.customer_id != request.customer_id:
                    raise errors.failed_precondition(
                        "POINT_GRANT_OTHER_CUSTOMER",
                        f"the points of order {request.order_id!r} belong to another customer",
                        f"orders/{request.order_id}",
                        {"order_id": request.order_id},
                    )
                result = grant.clawed_back()
                if result is grant:
                    return grant  # reversed already: nothing more to do
                if not await grants.save(result, expected=grant):
                    raise _RacedError
            uow.emit(*result.events)
            await uow.commit()
        log.info(
            "points clawed back",
            extra={
                "customer_id": result.customer_id,
                "points_reversed": result.points_reversed,
                "before_grant": not result.paid,
            },
        )
        return result

    async def GetPointBalance(
        self, request: pb.GetPointBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.PointBalance:
        check = Violations()
        check.identifier("customer_id", request.customer_id)
        check.check()
        async with self.database.unit_of_work(read_only=True) as uow:
            entries = await PromotionRepository(uow.connection).entries(request.customer_id)
        return pb.PointBalance(
            customer_id=request.customer_id,
            balance=balance(entries),
            entries=[entry_to_proto(entry) for entry in entries],
        )
