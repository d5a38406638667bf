"""How the payment service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.payment.v1 import payment_service_pb2, payment_service_pb2_grpc
from phoneseller.promotion.v1 import promotion_service_pb2_grpc

from services.kit import clients
from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.payment.domain import DeclineRule
from services.payment.repository import metadata
from services.payment.servicer import PaymentServicer


def build(runtime: Runtime) -> ServiceParts:
    promotion = clients.channel(runtime.settings.promotion_address)
    servicer = PaymentServicer(
        runtime.database,
        DeclineRule(runtime.settings.payment_decline_above),
        promotion_service_pb2_grpc.PromotionServiceStub(promotion),
    )

    def register(server: grpc.aio.Server) -> None:
        payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    return ServiceParts(register=register, close=[promotion.close])


definition = ServiceDefinition(
    name="payment",
    grpc_services=tuple(
        s.full_name for s in payment_service_pb2.DESCRIPTOR.services_by_name.values()
    ),
    metadata=metadata,
    build=build,
)
