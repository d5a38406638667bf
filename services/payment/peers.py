"""The services the payment calls, over gRPC through the mesh: promotion."""

from __future__ import annotations

import logging

import grpc
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb
from phoneseller.promotion.v1 import promotion_service_pb2_grpc as promotion_grpc

from services.kit import clients, errors, metrics
from services.payment.domain import Payment

log = logging.getLogger(__name__)

#: A safety net when no mesh is in between; the mesh's route timeout (610 ms) is the policy.
CLAWBACK_DEADLINE_SECONDS = 2.0


class PromotionClient:
    """`PromotionPort` over gRPC."""

    def __init__(self, stub: promotion_grpc.PromotionServiceStub) -> None:
        self.stub = stub

    async def claw_back(self, payment: Payment, request_id: str) -> None:
        try:
            await self.stub.ClawBackPoints(
                promotion_pb.ClawBackPointsRequest(
                    order_id=payment.order_id,
                    customer_id=payment.customer_id,
                    request_id=request_id,
                ),
                timeout=CLAWBACK_DEADLINE_SECONDS,
                metadata=clients.outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                # The points system answered, and retrying will not change its mind.
                raise errors.failed_precondition(
                    "CLAWBACK_REFUSED",
                    exc.details() or "the points system refused the clawback",
                    f"payments/{payment.payment_id}",
                    {"payment_id": payment.payment_id},
                ) from None
            # The seed's fallback: the points system is down, slow or overloaded (the mesh's
            # circuit breaker answers for it). Nothing is cancelled; come back shortly.
            delay = errors.retry_delay_seconds(errors.from_rpc_error(exc)) or 1.0
            metrics.clawback_refused("PROMOTION_UNAVAILABLE")
            log.warning(
                "clawback failed; payment left as it was",
                extra={
                    "payment_id": payment.payment_id,
                    "upstream": exc.code().name,
                    "upstream_details": exc.details(),
                },
            )
            raise errors.unavailable(
                "PROMOTION_UNAVAILABLE",
                "the points system did not confirm the clawback; the payment is not cancelled, "
                "try again shortly (had the points come back after all, the cancellation "
                "completes by itself)",
                retry_after_seconds=delay,
                metadata={"payment_id": payment.payment_id, "upstream_code": exc.code().name},
            ) from None

    async def clawed_back(self, payment: Payment) -> bool:
        try:
            grant = await self.stub.GetPointGrant(
                promotion_pb.GetPointGrantRequest(order_id=payment.order_id),
                timeout=CLAWBACK_DEADLINE_SECONDS,
                metadata=clients.outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return False  # no grant: no clawback took effect (it would have made one)
            raise errors.unavailable(
                "PROMOTION_UNAVAILABLE",
                "the points system cannot say whether the points were clawed back",
                retry_after_seconds=1.0,
                metadata={"payment_id": payment.payment_id, "upstream_code": exc.code().name},
            ) from None
        return bool(grant.status == promotion_pb.POINT_GRANT_STATUS_REVERSED)
