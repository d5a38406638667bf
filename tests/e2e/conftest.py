"""One running system per e2e module; tests use their own customers so they don't interfere."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.system import System, running_system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("system")) as running:
        yield running


@pytest.fixture
def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On a failure, attach what the system looked like: consumers, stream, log tails."""
    report = yield
    running = getattr(item, "funcargs", {}).get("system")
    if report.when == "call" and report.failed and isinstance(running, System):
        report.sections.append(("system state", describe(running)))
    return report


def describe(running: System) -> str:
    import asyncio

    async def consumers() -> list[str]:
        client = await running.nats.connect()
        try:
            js = client.jetstream()
            info = await js.stream_info("PHONESELLER")
            lines = [f"stream: {info.state.messages} messages, last seq {info.state.last_seq}"]
            for c in await js.consumers_info("PHONESELLER"):
                delivered = c.delivered.stream_seq if c.delivered else 0
                acked = c.ack_floor.stream_seq if c.ack_floor else 0
                lines.append(
                    f"consumer {c.name}: delivered {delivered}, ack floor {acked}, "
                    f"pending {c.num_pending}, ack pending {c.num_ack_pending}, "
                    f"redelivered {c.num_redelivered}"
                )
            return lines
        finally:
            await client.close()

    try:
        lines = asyncio.run(consumers())
    except Exception as exc:
        lines = [f"(nats state unavailable: {exc!r})"]
    for name, process in running.processes.items():
        tail = [
            line for line in process.log_tail(6000).splitlines() if '"call started"' not in line
        ][-8:]
        lines.append(f"--- {name} log tail ---")
        lines.extend(tail)
    return "\n".join(lines)
