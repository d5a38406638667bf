"""The local stack (supervisord + Envoy + services) on free ports in a test's folder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from mesh.process import AdminClient
from mesh.topology import DEFAULT_SIDECAR_PORTS, Address
from services.kit.config import SERVICE_NAMES
from stack.supervisor import LocalStack
from tests.support.ports import free_port


def stack_on_free_ports(
    run_dir: Path,
    *,
    replicas: int = 1,
    service_env: dict[str, dict[str, str]] | None = None,
    replica_env: dict[str, dict[str, str]] | None = None,
    otel_env: dict[str, str] | None = None,
) -> LocalStack:
    """A LocalStack whose every port is free, so tests never meet a developer's `make up`.

    `otel_env`: the `OTEL_*` variables of every service (default: none, tracing off, whatever
    the environment of the tests says)."""
    return LocalStack(
        run_dir=run_dir,
        nats_port=free_port(),
        gateway_port=free_port(),
        admin_port=free_port(),
        instance_ports={s: [free_port() for _ in range(replicas)] for s in SERVICE_NAMES},
        inbound_ports={s: [free_port() for _ in range(replicas)] for s in SERVICE_NAMES},
        sidecar_ports={name: free_port() for name in DEFAULT_SIDECAR_PORTS},
        replicas=replicas,
        service_env=dict(service_env or {}),
        replica_env=dict(replica_env or {}),
        metrics_ports={s: [free_port() for _ in range(replicas)] for s in SERVICE_NAMES},
        otel_env=dict(otel_env or {}),
        # Envoy's health check needs a round to see a draining replica (docs/mesh.md).
        ready_timeout=120,
    )


@contextlib.contextmanager
def running_stack(stack: LocalStack) -> Iterator[LocalStack]:
    """`up` in the background; `down` afterwards, whatever happened."""
    try:
        assert stack.up() == 0, "the local stack did not become ready"
        yield stack
    finally:
        stack.down()


def admin(stack: LocalStack) -> AdminClient:
    return AdminClient(Address("127.0.0.1", stack.admin_port))


def gateway_channel(stack: LocalStack) -> grpc.Channel:
    return grpc.insecure_channel(stack.gateway)


def program_pid(stack: LocalStack, program: str) -> int:
    """The pid supervisord reports for a program (0 when it is not running)."""
    out = stack.supervisorctl("pid", program).stdout.strip()
    return int(out) if out.isdigit() else 0
