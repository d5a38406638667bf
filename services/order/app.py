"""How the order service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc
from phoneseller.payment.v1 import payment_service_pb2_grpc

from services.kit import clients
from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.order import handlers
from services.order.repository import metadata
from services.order.servicer import OrderServicer


def build(runtime: Runtime) -> ServiceParts:
    payment = clients.channel(runtime.settings.payment_address)
    servicer = OrderServicer(runtime.database, payment_service_pb2_grpc.PaymentServiceStub(payment))

    def register(server: grpc.aio.Server) -> None:
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)

    return ServiceParts(
        register=register, consumes=(handlers.EVENT_TYPES, handlers.handle), close=[payment.close]
    )


definition = ServiceDefinition(
    name="order",
    grpc_services=tuple(
        s.full_name for s in order_service_pb2.DESCRIPTOR.services_by_name.values()
    ),
    metadata=metadata,
    build=build,
)
