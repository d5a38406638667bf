"""How the customer view service is assembled from the kit."""

from __future__ import annotations

import grpc
from phoneseller.customer.v1 import customer_service_pb2, customer_service_pb2_grpc

from services.customer.domain import EVENT_TYPES
from services.customer.projector import project_batch
from services.customer.repository import metadata
from services.customer.servicer import CustomerServicer
from services.kit.server import Runtime, ServiceDefinition, ServiceParts


def build(runtime: Runtime) -> ServiceParts:
    servicer = CustomerServicer(runtime.database)

    def register(server: grpc.aio.Server) -> None:
        customer_service_pb2_grpc.add_CustomerServiceServicer_to_server(servicer, server)

    return ServiceParts(register=register, consumes=(EVENT_TYPES, project_batch))


definition = ServiceDefinition(
    name="customer",
    grpc_services=tuple(
        s.full_name for s in customer_service_pb2.DESCRIPTOR.services_by_name.values()
    ),
    metadata=metadata,
    build=build,
)
