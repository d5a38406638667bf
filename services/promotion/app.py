"""How the promotion service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.promotion.v1 import promotion_service_pb2, promotion_service_pb2_grpc

from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.promotion.domain import PointsRate
from services.promotion.handlers import CONSUMED, payment_handler
from services.promotion.repository import metadata
from services.promotion.servicer import PromotionServicer


def build(runtime: Runtime) -> ServiceParts:
    servicer = PromotionServicer(runtime.database)

    def register(server: grpc.aio.Server) -> None:
        promotion_service_pb2_grpc.add_PromotionServiceServicer_to_server(servicer, server)

    rate = PointsRate(runtime.settings.points_rate_percent)
    return ServiceParts(register=register, consumes=(CONSUMED, payment_handler(rate)))


definition = ServiceDefinition(
    name="promotion",
    grpc_services=tuple(
        s.full_name for s in promotion_service_pb2.DESCRIPTOR.services_by_name.values()
    ),
    metadata=metadata,
    build=build,
)
