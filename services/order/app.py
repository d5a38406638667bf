"""How the order service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc
from phoneseller.payment.v1 import payment_service_pb2_grpc

from services.kit import clients
from services.kit.server import Runtime, ServiceDefinition, ServiceParts
from services.order import handlers
from services.order.peers import PaymentClient
from services.order.repository import OrderUnitOfWork, metadata
from services.order.servicer import OrderServicer


def build(runtime: Runtime) -> ServiceParts:
    channel = clients.channel(runtime.settings.payment_address)
    payment = PaymentClient(payment_service_pb2_grpc.PaymentServiceStub(channel))

    def unit_of_work() -> OrderUnitOfWork:
        return OrderUnitOfWork(runtime.database)

    servicer = OrderServicer(unit_of_work, payment)

    def register(server: grpc.aio.Server) -> None:
        order_service_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)

    return ServiceParts(
        register=register,
        unit_of_work=unit_of_work,
        consumes=(handlers.CONSUMED, handlers.handle),
        close=[channel.close],
    )


definition = ServiceDefinition.of("order", order_service_pb2, metadata, build)
