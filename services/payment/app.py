"""How the payment service is assembled from the kit. Payment consumes no events: order and
promotion call it, and it publishes PayCompleted, PayDeclined and PayCancelled."""

from __future__ import annotations

import grpc
from phoneseller.payment.v1 import payment_service_pb2, payment_service_pb2_grpc
from phoneseller.promotion.v1 import promotion_service_pb2_grpc

from services.kit import clients
from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.payment.domain import DeclineRule
from services.payment.finisher import CancellationFinisher
from services.payment.peers import PromotionClient
from services.payment.repository import PaymentUnitOfWork, metadata
from services.payment.servicer import PaymentServicer


def build(runtime: Runtime) -> ServiceParts:
    channel = clients.channel(runtime.settings.promotion_address)
    promotion = PromotionClient(promotion_service_pb2_grpc.PromotionServiceStub(channel))

    def unit_of_work() -> PaymentUnitOfWork:
        return PaymentUnitOfWork(runtime.database)

    servicer = PaymentServicer(
        unit_of_work, DeclineRule(runtime.settings.payment_decline_above), promotion
    )

    def register(server: grpc.aio.Server) -> None:
        payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    finisher = CancellationFinisher(unit_of_work, promotion)

    async def finish_cancellations() -> None:
        await finisher.run()

    return ServiceParts(
        register=register,
        unit_of_work=unit_of_work,
        background=[finish_cancellations],
        close=[channel.close],
    )


definition = ServiceDefinition.of("payment", payment_service_pb2, metadata, build)
