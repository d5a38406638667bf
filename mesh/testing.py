"""Helpers for tests that put the real Envoy between real gRPC servers (no pytest import here).

- `FakeBackend`: a grpc.aio server answering any given method paths with raw bytes (no
  generated stubs needed), with grpc.health.v1 and optional reflection; its behaviour (fail,
  answer, custom handler) can be changed while it runs, and it counts calls per method.
- `free_port()`, `local_topology()`: a topology on free 127.0.0.1 ports.
- `MeshHarness`: render + write + start Envoy for a policy and topology, and re-render on
  `set_fault()` (Envoy restart); stops everything on exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from mesh.envoy import RenderOptions, render_envoy_config, write_envoy_config
from mesh.policy import Fault, MeshPolicy
from mesh.process import EnvoyProcess
from mesh.topology import DEFAULT_HOST, Address, HealthCheck, Topology, build_topology

__all__ = [
    "CallResult",
    "FakeBackend",
    "MeshHarness",
    "call_unary",
    "free_port",
    "free_ports",
    "local_topology",
    "wait_until",
]

# A custom handler gets the raw request bytes and the grpc.aio servicer context.
Handler = Callable[[bytes, Any], Awaitable[bytes]]


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, close)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """`count` distinct TCP ports that were free a moment ago (all bound at once, then closed)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def local_topology(
    instances: Mapping[str, Sequence[Address | str]],
    *,
    sidecars: Iterable[str] = ("payment", "promotion"),
    health_check: HealthCheck | None = None,
) -> Topology:
    """A topology for `instances` with the gateway, admin, sidecar and inbound listeners on
    free ports."""
    names = list(sidecars)
    ports = iter(free_ports(2 + len(names) + sum(len(a) for a in instances.values())))
    return build_topology(
        instances,
        gateway_port=next(ports),
        admin_port=next(ports),
        sidecar_ports={name: next(ports) for name in names},
        inbound_ports={name: [next(ports) for _ in addrs] for name, addrs in instances.items()},
        health_check=health_check,
    )


class FakeBackend:
    """A real gRPC server for the given method paths ("/pkg.Service/Method"), bytes in/out.

    By default every call answers `response` (empty message). Set `fail_with` to a
    grpc.StatusCode to fail every call (a trailers-only response, which Envoy's gRPC retry
    conditions see), `delay` to answer slowly, or `handlers[path]` for custom behaviour.
    """

    def __init__(
        self,
        name: str,
        methods: Iterable[str],
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        reflection_services: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.methods = list(methods)
        self.host = host
        self.port = port
        self.reflection_services = list(reflection_services)
        self.calls: collections.Counter[str] = collections.Counter()
        self.fail_with: grpc.StatusCode | None = None
        self.delay: float = 0.0
        self.response: bytes = b""
        self.handlers: dict[str, Handler] = {}
        self.health = HealthServicer()
        self._server: Any = None
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def address(self) -> Address:
        if not self.port:
            raise RuntimeError(f"{self.name} is not started")
        return Address(self.host, self.port)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def _handler(self, path: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def handle(request: bytes, context: Any) -> bytes:
            self.calls[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                custom = self.handlers.get(path)
                if custom is not None:
                    return await custom(request, context)
                if self.fail_with is not None:
                    await context.abort(self.fail_with, f"{self.name} fails on purpose")
                return self.response
            finally:
                self.in_flight -= 1

        return handle

    async def start(self) -> Address:
        server = grpc.aio.server()
        by_service: dict[str, dict[str, Any]] = collections.defaultdict(dict)
        for path in self.methods:
            service, _, method = path.strip("/").partition("/")
            by_service[service][method] = grpc.unary_unary_rpc_method_handler(self._handler(path))
        server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(s, m) for s, m in by_service.items())
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.reflection_services:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                [*self.reflection_services, reflection.SERVICE_NAME], server
            )
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server
        return self.address

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the overall health ("") as a draining server does."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def __aenter__(self) -> FakeBackend:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class MeshHarness:
    """Render `policy` on `topology`, write it under `workdir` and run Envoy for it.

    async with MeshHarness(policy, topo, tmp_path) as mesh:
        await mesh.wait_healthy("outbound|promotion", 1)
        await mesh.set_fault("promotion", parse_fault({"delay": ...}))
        mesh.admin.cluster_stats("outbound|promotion")
    """

    def __init__(
        self,
        policy: MeshPolicy,
        topology: Topology,
        workdir: str | Path,
        *,
        descriptor_set_path: str | Path | None = None,
        options: RenderOptions | None = None,
        concurrency: int | None = 1,
    ) -> None:
        self.policy = policy
        self.topology = topology
        self.workdir = Path(workdir)
        self.descriptor_set_path = descriptor_set_path
        self.options = options or RenderOptions(
            access_log_path=str(self.workdir / "envoy-access.log")
        )
        self.config_path = self.workdir / "envoy.yaml"
        self.envoy = EnvoyProcess(
            self.config_path,
            topology.admin,
            log_path=self.workdir / "envoy.log",
            concurrency=concurrency,
        )
        self.admin = self.envoy.admin

    def render(self) -> Path:
        config = render_envoy_config(
            self.policy, self.topology, self.descriptor_set_path, options=self.options
        )
        return write_envoy_config(config, self.config_path)

    async def start(self) -> None:
        self.render()
        self.envoy.start()
        await self.envoy.wait_ready_async()

    async def stop(self) -> None:
        await self.envoy.stop_async()

    async def set_fault(self, destination: str, fault: Fault | None) -> None:
        """Replace a destination's fault, re-render and restart Envoy (counters start at 0)."""
        self.policy = self.policy.with_fault(destination, fault)
        self.render()
        await self.envoy.restart_async()

    async def set_options(self, **changes: Any) -> None:
        self.options = replace(self.options, **changes)
        self.render()
        await self.envoy.restart_async()

    async def wait_healthy(self, cluster: str, count: int, *, within: float = 10) -> None:
        await self.admin.wait_healthy_async(cluster, count, within=within)

    def address(self, what: str) -> str:
        """ "gateway" or a sidecar's service name -> "host:port" to dial."""
        if what == "gateway":
            return str(self.topology.gateway)
        return str(self.topology.sidecars[what])

    async def __aenter__(self) -> MeshHarness:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def wait_until(
    what: str, check: Callable[[], bool | Awaitable[bool]], *, within: float = 10
) -> None:
    """Poll a (sync or async) condition until true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class CallResult:
    """The outcome of one unary call: status code, details, seconds taken, response bytes."""

    code: grpc.StatusCode
    details: str
    elapsed: float
    response: bytes | None = None

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)


async def call_unary(
    channel: Any,
    path: str,
    request: bytes = b"",
    *,
    deadline: float | None = 5.0,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> CallResult:
    """Call `path` ("/pkg.Service/Method") on a grpc.aio channel with raw bytes; never raises
    for a gRPC error (the status is in the result)."""
    start = time.monotonic()
    try:
        response = await channel.unary_unary(path)(request, timeout=deadline, metadata=metadata)
    except grpc.aio.AioRpcError as e:
        return CallResult(e.code(), e.details() or "", time.monotonic() - start)
    return CallResult(grpc.StatusCode.OK, "", time.monotonic() - start, response)
