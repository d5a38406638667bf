"""How the promotion service is assembled from the kit."""

from __future__ import annotations

import functools

import grpc
from phoneseller.promotion.v1 import promotion_service_pb2, promotion_service_pb2_grpc

from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.promotion import handlers
from services.promotion.domain import PointsRate
from services.promotion.repository import PromotionUnitOfWork, metadata
from services.promotion.servicer import PromotionServicer


def build(runtime: Runtime) -> ServiceParts:
    def unit_of_work() -> PromotionUnitOfWork:
        return PromotionUnitOfWork(runtime.database)

    servicer = PromotionServicer(unit_of_work)

    def register(server: grpc.aio.Server) -> None:
        promotion_service_pb2_grpc.add_PromotionServiceServicer_to_server(servicer, server)

    rate = PointsRate(runtime.settings.points_rate_percent)
    return ServiceParts(
        register=register,
        unit_of_work=unit_of_work,
        consumes=(handlers.CONSUMED, functools.partial(handlers.handle, rate=rate)),
    )


definition = ServiceDefinition.of("promotion", promotion_service_pb2, metadata, build)
