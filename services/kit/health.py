"""`grpc.health.v1` entries and what makes each one SERVING.

- `""` and each `phoneseller.<ctx>.v1.<Service>`: readiness — the database is open and the
  service answers its RPCs. A NATS outage does not touch it (the outbox holds the events).
- `phoneseller.liveness`: SERVING from start to shutdown. It is answered by the same event loop
  as every RPC, so it only fails when that loop is wedged — never because a dependency is down.
- `phoneseller.eventflow`: NATS connected and the outbox relay publishing. For dashboards and
  logs, never for a probe.
"""

from __future__ import annotations

import logging

from grpc_health.v1 import health
from grpc_health.v1.health_pb2 import HealthCheckResponse

log = logging.getLogger(__name__)

OVERALL = ""
LIVENESS = "phoneseller.liveness"
EVENTFLOW = "phoneseller.eventflow"

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


class Health:
    """Owns the health servicer and derives each entry from the parts' states."""

    def __init__(self, service_names: tuple[str, ...]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.service_names = service_names
        self._eventflow_parts: dict[str, bool] = {}
        self.ready = False

    async def start(self) -> None:
        for name in (OVERALL, *self.service_names):
            await self.servicer.set(name, NOT_SERVING)
        await self.servicer.set(LIVENESS, SERVING)
        await self.servicer.set(EVENTFLOW, NOT_SERVING)

    async def set_ready(self) -> None:
        self.ready = True
        for name in (OVERALL, *self.service_names):
            await self.servicer.set(name, SERVING)
        log.info("ready: SERVING")

    async def set_eventflow_part(self, part: str, healthy: bool) -> None:
        """Record one part of the event flow (bus, relay, consumer); SERVING when all are."""
        before = self._eventflow_parts and all(self._eventflow_parts.values())
        self._eventflow_parts[part] = healthy
        now = all(self._eventflow_parts.values())
        await self.servicer.set(EVENTFLOW, SERVING if now else NOT_SERVING)
        if bool(before) != now:
            log.log(
                logging.INFO if now else logging.WARNING,
                "event flow SERVING" if now else "event flow NOT_SERVING",
                extra={"parts": dict(self._eventflow_parts)},
            )

    async def enter_graceful_shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
