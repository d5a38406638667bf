"""How the store service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.store.v1 import store_service_pb2, store_service_pb2_grpc

from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.store import handlers
from services.store.autoship import AutoShipper
from services.store.repository import StoreUnitOfWork, metadata
from services.store.servicer import StoreServicer


def build(runtime: Runtime) -> ServiceParts:
    def unit_of_work() -> StoreUnitOfWork:
        return StoreUnitOfWork(runtime.database)

    servicer = StoreServicer(unit_of_work)

    def register(server: grpc.aio.Server) -> None:
        store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server)

    parts = ServiceParts(
        register=register,
        unit_of_work=unit_of_work,
        consumes=(handlers.CONSUMED, handlers.handle),
    )
    delay = runtime.settings.store_auto_ship_delay_seconds
    if delay > 0:
        shipper = AutoShipper(unit_of_work, delay)

        async def auto_ship() -> None:
            await shipper.run()

        parts.background.append(auto_ship)
    return parts


definition = ServiceDefinition.of("store", store_service_pb2, metadata, build)
