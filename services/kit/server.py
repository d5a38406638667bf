"""One way to run any service: gRPC server, health, reflection, database, event flow, drain.

A service describes itself with a `ServiceDefinition` (its gRPC services, tables, and how to
build its servicers, unit of work and event handler from the `Runtime`); `serve` does the rest
the same way for all five, in the steps of grpc's graceful-shutdown example: build, start,
wait for a signal, drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from phoneseller.customer.v1 import customer_service_pb2
from phoneseller.order.v1 import order_service_pb2
from phoneseller.payment.v1 import payment_service_pb2
from phoneseller.promotion.v1 import promotion_service_pb2
from phoneseller.store.v1 import store_service_pb2
from sqlalchemy import MetaData

from services.kit import context, errors, identity, logs, metrics, tables, tracing
from services.kit.bus import EventBus, StreamRetention
from services.kit.config import Settings
from services.kit.consumer import BatchHandler, ConsumerSettings, EventConsumer, Handler
from services.kit.db import Database, DatabaseUnavailableError
from services.kit.events import EventTypes
from services.kit.health import Health
from services.kit.interceptors import WrappingInterceptor
from services.kit.metrics_server import Gauges, MetricsServer
from services.kit.outbox import OutboxRelay
from services.kit.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Every phoneseller service answers reflection for all of them, so that `grpcurl list`
#: through the gateway shows the whole API whichever replica it reaches.
PHONESELLER_API = tuple(
    service.full_name
    for module in (
        order_service_pb2,
        payment_service_pb2,
        promotion_service_pb2,
        store_service_pb2,
        customer_service_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
)


@dataclass
class Runtime:
    """What a service's parts are built from."""

    settings: Settings
    database: Database
    bus: EventBus
    health: Health


@dataclass
class ServiceParts:
    """What a service adds to the common runtime."""

    #: Adds the service's servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    #: A new unit of work of the service (its repositories on one transaction).
    unit_of_work: Callable[[], UnitOfWork]
    #: The events this service consumes and its handler for them, if it consumes any.
    consumes: tuple[EventTypes, Handler | BatchHandler] | None = None
    #: Long-running tasks started once the database is open (e.g. store's auto-ship).
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    #: Called at shutdown after the server stopped (e.g. closing outgoing channels).
    close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    grpc_services: tuple[str, ...]
    metadata: MetaData
    build: Callable[[Runtime], ServiceParts]

    @classmethod
    def of(
        cls,
        name: str,
        service_module: ModuleType,
        metadata: MetaData,
        build: Callable[[Runtime], ServiceParts],
    ) -> ServiceDefinition:
        """The definition of a service whose gRPC services are those of `service_module`."""
        services = service_module.DESCRIPTOR.services_by_name.values()
        return cls(name, tuple(s.full_name for s in services), metadata, build)


class RequestInterceptor(WrappingInterceptor):
    """Binds trace and correlation context and the signed-in caller (services.kit.identity)
    to each call, and turns errors into rich statuses."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def wrap(self, method: str, handler: Any) -> Any:
        if handler is None or handler.unary_unary is None or not method.startswith("/phoneseller."):
            return handler
        behavior = handler.unary_unary
        service = self.service

        async def handle(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            metadata = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
            order_id = getattr(request, "order_id", "") or metadata.get("x-correlation-id", "")
            with context.bound(
                order_id=order_id, parent=metadata.get("traceparent", ""), incoming=metadata
            ):
                log.debug("call started", extra={"method": method})
                try:
                    with identity.bound(metadata):
                        return await behavior(request, ctx)
                except errors.ServiceError as exc:
                    log.info(
                        "call refused",
                        extra={"method": method, "code": exc.code.name, "reason": exc.reason},
                    )
                    status = exc.to_status(service)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except DatabaseUnavailableError as exc:
                    # Transient by nature: the caller (or the mesh) should try again, maybe
                    # on another replica; not an INTERNAL bug.
                    log.warning(
                        "database unreachable", extra={"method": method, "error": str(exc)[:300]}
                    )
                    status = errors.unavailable(
                        "DATABASE_UNAVAILABLE",
                        "the service cannot reach its database now; try again shortly",
                        retry_after_seconds=1.0,
                    ).to_status(service)
                except Exception:
                    log.exception("unexpected error", extra={"method": method})
                    status = errors.internal(service)
                await ctx.abort(
                    errors.status_code(status),
                    status.message,
                    trailing_metadata=errors.trailing_metadata(status),
                )

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def build_runtime(definition: ServiceDefinition, settings: Settings, health: Health) -> Runtime:
    database = Database(settings.database_url, tables.metadata, definition.metadata)

    async def bus_state(connected: bool) -> None:
        await health.set_eventflow_part("bus", connected)

    bus = EventBus(
        settings.nats_url,
        nkey_file=settings.nats_nkey_file,
        stream_replicas=settings.stream_replicas,
        retention=StreamRetention(settings.stream_max_age_seconds, settings.stream_max_bytes),
        name=settings.service,
        on_state_change=bus_state,
    )
    return Runtime(settings, database, bus, health)


def build_server(definition: ServiceDefinition, runtime: Runtime, parts: ServiceParts) -> Any:
    server = grpc.aio.server(
        # Tracing's (only when it is on) outermost, so its span covers the rest.
        interceptors=[
            *tracing.server_interceptors(),
            metrics.RpcMetricsInterceptor(),
            RequestInterceptor(runtime.settings.service),
        ],
        # Refuse to share a port: two processes on one port would split traffic silently.
        options=[("grpc.so_reuseport", 0)],
    )
    parts.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health.servicer, server)
    reflection.enable_server_reflection(
        (
            *PHONESELLER_API,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    server.add_insecure_port(runtime.settings.grpc_address)
    return server


async def start_event_flow(runtime: Runtime, parts: ServiceParts) -> list[asyncio.Task[None]]:
    """Open the database (then SERVING), connect NATS, start the relay, consumer and jobs."""
    await runtime.database.open()
    await runtime.health.set_ready()

    async def relay_health(healthy: bool) -> None:
        await runtime.health.set_eventflow_part("relay", healthy)

    tasks = [
        asyncio.create_task(runtime.bus.connect(), name="bus"),
        asyncio.create_task(
            OutboxRelay(runtime.database, runtime.bus, on_health=relay_health).run(),
            name="outbox-relay",
        ),
    ]
    if parts.consumes is not None:
        event_types, handler = parts.consumes
        consumer = EventConsumer(
            runtime.settings.service,
            runtime.bus,
            event_types,
            handler,
            parts.unit_of_work,
            ConsumerSettings(inbox_retention_seconds=runtime.settings.inbox_retention_seconds),
        )
        tasks.append(asyncio.create_task(consumer.run(), name="consumer"))
    tasks += [asyncio.create_task(job(), name=job.__name__) for job in parts.background]
    return tasks


async def drain(
    runtime: Runtime,
    server: Any,
    parts: ServiceParts,
    starting: asyncio.Task[list[asyncio.Task[None]]],
) -> None:
    """NOT_SERVING, keep answering while callers notice, finish in-flight calls, stop."""
    settings = runtime.settings
    log.info(
        "shutting down: NOT_SERVING, draining",
        extra={
            "drain_seconds": settings.shutdown_drain_seconds,
            "grace_seconds": settings.shutdown_grace_seconds,
        },
    )
    await runtime.health.enter_graceful_shutdown()
    # Let load balancers see NOT_SERVING and stop sending new calls before we refuse them.
    await asyncio.sleep(settings.shutdown_drain_seconds)
    await server.stop(settings.shutdown_grace_seconds)
    tasks: list[asyncio.Task[None]] = []
    if starting.done() and not starting.cancelled() and starting.exception() is None:
        tasks = starting.result()
    else:
        starting.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(starting, *tasks, return_exceptions=True)
    for close in parts.close:
        await close()
    await runtime.bus.close()
    await runtime.database.close()


async def serve(
    definition: ServiceDefinition, settings: Settings, stop: asyncio.Event | None = None
) -> int:
    """Run a service until SIGTERM/SIGINT (or `stop`), then drain and return the exit code."""
    logs.configure(settings.service, settings.log_level)
    tracing.configure(settings.service)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    health = Health(definition.grpc_services)
    await health.start()
    runtime = build_runtime(definition, settings, health)
    parts = definition.build(runtime)
    server = build_server(definition, runtime, parts)
    await server.start()
    log.info(
        "listening",
        extra={
            "address": settings.grpc_address,
            "database": runtime.database.backend,
            "nats_url": settings.nats_url,
        },
    )
    metrics_server = await start_metrics(runtime, parts)
    starting = asyncio.create_task(start_event_flow(runtime, parts))
    await stop.wait()
    await drain(runtime, server, parts, starting)
    if metrics_server is not None:
        await metrics_server.close()
    log.info("stopped")
    tracing.shutdown()
    return 0


async def start_metrics(runtime: Runtime, parts: ServiceParts) -> MetricsServer | None:
    """Serve Prometheus metrics on the metrics port (none if it is 0 or taken: a service
    answers its calls whether or not it can be watched)."""
    settings = runtime.settings
    if not settings.metrics_port:
        return None
    consumer = settings.service if parts.consumes is not None else None
    server = MetricsServer(
        settings.grpc_host, settings.metrics_port, Gauges(runtime.database, runtime.bus, consumer)
    )
    try:
        await server.start()
    except OSError as exc:
        log.error(
            "no metrics endpoint: cannot listen",
            extra={"metrics_port": settings.metrics_port, "error": str(exc)},
        )
        return None
    log.info(
        "metrics", extra={"url": f"http://{settings.grpc_host}:{settings.metrics_port}/metrics"}
    )
    return server
