"""The whole system as real processes: nats-server and the five services, wired together.

Promotion and store run on PostgreSQL when the server at 127.0.0.1:5432 answers (polyglot
persistence, as in the seed); the others on SQLite. Each service is reachable at its own port;
the mesh issue puts Envoy in between without changing this.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from phoneseller.customer.v1 import customer_service_pb2_grpc
from phoneseller.order.v1 import order_service_pb2_grpc
from phoneseller.payment.v1 import payment_service_pb2_grpc
from phoneseller.promotion.v1 import promotion_service_pb2_grpc
from phoneseller.store.v1 import store_service_pb2_grpc
from sqlalchemy import MetaData, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.nats_server import NatsServer
from tests.support.ports import free_port
from tests.support.postgres import fresh_database, postgres_user
from tests.support.processes import ServiceProcess

SERVICES = ("payment", "promotion", "store", "customer", "order")


@dataclass
class System:
    run_dir: Path
    nats: NatsServer
    database_urls: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=lambda: {s: free_port() for s in SERVICES})
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def service_env(self, service: str) -> dict[str, str]:
        env = {
            "PHONESELLER_PAYMENT_ADDRESS": f"127.0.0.1:{self.ports['payment']}",
            "PHONESELLER_PROMOTION_ADDRESS": f"127.0.0.1:{self.ports['promotion']}",
            "PHONESELLER_PAYMENT_DECLINE_ABOVE": "5000000",
            **self.env,
        }
        if service in self.database_urls:
            env["PHONESELLER_DATABASE_URL"] = self.database_urls[service]
        return env

    def process(self, service: str) -> ServiceProcess:
        if service in self.processes:
            return self.processes[service]
        created = ServiceProcess(
            service,
            self.run_dir,
            self.nats,
            port=self.ports[service],
            env=self.service_env(service),
        )
        self.processes[service] = created
        return created

    def start(self, *services: str) -> None:
        for service in services or SERVICES:
            self.process(service).start(wait=False)
        for service in services or SERVICES:
            self.process(service).wait_serving()

    def stop(self, *services: str) -> None:
        for service in services or SERVICES:
            self.process(service).stop()

    def kill(self, service: str) -> None:
        self.process(service).kill()

    def channel(self, service: str) -> grpc.Channel:
        if service not in self.channels:
            self.channels[service] = grpc.insecure_channel(f"127.0.0.1:{self.ports[service]}")
        return self.channels[service]

    @property
    def orders(self) -> order_service_pb2_grpc.OrderServiceStub:
        return order_service_pb2_grpc.OrderServiceStub(self.channel("order"))

    @property
    def payments(self) -> payment_service_pb2_grpc.PaymentServiceStub:
        return payment_service_pb2_grpc.PaymentServiceStub(self.channel("payment"))

    @property
    def promotion(self) -> promotion_service_pb2_grpc.PromotionServiceStub:
        return promotion_service_pb2_grpc.PromotionServiceStub(self.channel("promotion"))

    @property
    def store(self) -> store_service_pb2_grpc.StoreServiceStub:
        return store_service_pb2_grpc.StoreServiceStub(self.channel("store"))

    @property
    def customers(self) -> customer_service_pb2_grpc.CustomerServiceStub:
        return customer_service_pb2_grpc.CustomerServiceStub(self.channel("customer"))

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()
        for service in SERVICES:
            with contextlib.suppress(Exception):
                self.process(service).stop()


@contextlib.contextmanager
def running_system(run_dir: Path, env: dict[str, str] | None = None) -> Iterator[System]:
    """Start everything; promotion and store on PostgreSQL when it answers."""
    nats = NatsServer(run_dir / "jetstream").start()
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        if postgres_user()[0] is not None:
            for service in ("promotion", "store"):
                urls[service] = stack.enter_context(fresh_database(f"e2e_{service}"))
        else:
            print("WARNING: PostgreSQL not reachable; promotion and store run on SQLite")
        system = System(run_dir, nats, urls, env=dict(env or {}))
        try:
            system.start()
            yield system
        finally:
            system.close()
            nats.stop()


def _sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            name: int(connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
            for name in names
        }


async def _postgres_counts(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            metadata = MetaData()
            await connection.run_sync(metadata.reflect)
            return {
                name: int(
                    (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                )
                for name, table in metadata.tables.items()
            }
    finally:
        await engine.dispose()


def table_counts(system: System) -> dict[str, dict[str, int]]:
    """Rows per table in every service's database: proof that a refused call wrote nothing."""
    result = {}
    for service in SERVICES:
        url = system.database_urls.get(service)
        result[service] = (
            asyncio.run(_postgres_counts(url))
            if url
            else _sqlite_counts(system.run_dir / "data" / f"{service}.db")
        )
    return result
