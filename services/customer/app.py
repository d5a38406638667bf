"""How the customer view service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.customer.v1 import customer_service_pb2, customer_service_pb2_grpc

from services.customer import handlers
from services.customer.repository import CustomerUnitOfWork, metadata
from services.customer.servicer import CustomerServicer
from services.kit.server import Runtime, ServiceDefinition, ServiceParts


def build(runtime: Runtime) -> ServiceParts:
    def unit_of_work() -> CustomerUnitOfWork:
        return CustomerUnitOfWork(runtime.database)

    servicer = CustomerServicer(unit_of_work)

    def register(server: grpc.aio.Server) -> None:
        customer_service_pb2_grpc.add_CustomerServiceServicer_to_server(servicer, server)

    return ServiceParts(
        register=register,
        unit_of_work=unit_of_work,
        consumes=(handlers.CONSUMED, handlers.handle),
    )


definition = ServiceDefinition.of("customer", customer_service_pb2, metadata, build)
