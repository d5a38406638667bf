"""Operator commands that run one part of the kit on its own.

`python -m services.kit.tools relay --service NAME --database-url URL --nats-url URL` runs an
outbox relay for a service's database outside the service process (e.g. to drain an outbox
while the service is down). Tests use it to kill and restart the relay on its own. It publishes
as that service's NATS user: `--nats-nkey-file` (default $PHONESELLER_NATS_NKEY_FILE) is the
service's seed, since NATS lets only that service publish its events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from services.kit import logs, tables
from services.kit.bus import EventBus
from services.kit.db import Database
from services.kit.outbox import OutboxRelay

log = logging.getLogger(__name__)


async def run_relay(database_url: str, nats_url: str, service: str, nkey_file: str = "") -> int:
    database = Database(database_url, tables.metadata)
    await database.open()
    bus = EventBus(nats_url, name=f"{service}-relay", user=service, nkey_file=nkey_file)
    relay = OutboxRelay(database, bus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(bus.connect()), asyncio.create_task(relay.run())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    log.info(
        "relay stopped",
        extra={"published": relay.published, "duplicates_refused": relay.duplicates},
    )
    await bus.close()
    await database.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.kit.tools", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="publish a database's outbox to JetStream")
    relay.add_argument("--service", required=True, help="whose outbox: its NATS user")
    relay.add_argument("--database-url", required=True)
    relay.add_argument("--nats-url", required=True)
    relay.add_argument("--nats-nkey-file", default=os.environ.get("PHONESELLER_NATS_NKEY_FILE", ""))
    relay.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure("relay", args.log_level)
    return asyncio.run(
        run_relay(args.database_url, args.nats_url, args.service, args.nats_nkey_file)
    )


if __name__ == "__main__":
    sys.exit(main())
