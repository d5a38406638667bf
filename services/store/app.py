"""How the store service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.store.v1 import store_service_pb2, store_service_pb2_grpc

from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.store.autoship import AutoShipper
from services.store.handlers import CONSUMED, handle
from services.store.repository import metadata
from services.store.servicer import StoreServicer


def build(runtime: Runtime) -> ServiceParts:
    servicer = StoreServicer(runtime.database)

    def register(server: grpc.aio.Server) -> None:
        store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server)

    parts = ServiceParts(register=register, consumes=(CONSUMED, handle))
    delay = runtime.settings.store_auto_ship_delay_seconds
    if delay > 0:
        shipper = AutoShipper(runtime.database, delay)

        async def auto_ship() -> None:
            await shipper.run()

        parts.background.append(auto_ship)
    return parts


definition = ServiceDefinition(
    name="store",
    grpc_services=tuple(
        s.full_name for s in store_service_pb2.DESCRIPTOR.services_by_name.values()
    ),
    metadata=metadata,
    build=build,
)
