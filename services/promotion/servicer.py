"""PromotionService over gRPC: validate, call a use case, convert to proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from phoneseller.promotion.v1 import promotion_service_pb2 as pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as pb_grpc

from services.kit import identity
from services.kit.clock import timestamp
from services.kit.validation import Violations
from services.promotion import usecases
from services.promotion.domain import EntryKind, GrantStatus, LedgerEntry, PointGrant
from services.promotion.repository import PromotionUnitOfWork

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


class PromotionServicer(pb_grpc.PromotionServiceServicer):
    def __init__(self, unit_of_work: Callable[[], PromotionUnitOfWork]) -> None:
        self.unit_of_work = unit_of_work

    async def ClawBackPoints(
        self, request: pb.ClawBackPointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PointGrant:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.identifier("customer_id", request.customer_id)
        check.identifier("request_id", request.request_id, required=False)
        check.check()
        grant = await usecases.claw_back_points(
            self.unit_of_work(), request.order_id, request.customer_id
        )
        return to_proto(grant)

    async def GetPointGrant(
        self, request: pb.GetPointGrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.PointGrant:
        check = Violations()
        check.identifier("order_id", request.order_id)
        check.check()
        return to_proto(await usecases.point_grant(self.unit_of_work(), request.order_id))

    async def GetPointBalance(
        self, request: pb.GetPointBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.PointBalance:
        caller = identity.current()
        check = Violations()
        check.identifier("customer_id", request.customer_id)
        check.check()
        caller.require_reading(request.customer_id, "the point balance")
        found = await usecases.point_balance(self.unit_of_work(), request.customer_id)
        return pb.PointBalance(
            customer_id=found.customer_id,
            balance=found.balance,
            entries=[entry_to_proto(entry) for entry in found.entries],
        )
