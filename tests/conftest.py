"""Fixtures shared by every test folder: a real nats-server per test that wants one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats_server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port, stopped after the test."""
    server = NatsServer(tmp_path / "jetstream").start()
    yield server
    server.stop()
