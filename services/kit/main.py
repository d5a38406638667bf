"""`phoneseller-server SERVICE`: start one of the five services."""

from __future__ import annotations

import argparse
import importlib
import sys

import uvloop

from services.kit.config import SERVICE_NAMES, ConfigError, Settings
from services.kit.server import ServiceDefinition, serve


def load_definition(service: str) -> ServiceDefinition:
    module = importlib.import_module(f"services.{service}.app")
    definition: ServiceDefinition = module.definition
    return definition


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phoneseller-server", description=__doc__)
    parser.add_argument(
        "service",
        choices=SERVICE_NAMES,
        nargs="?",
        help="which service to run (default: $PHONESELLER_SERVICE)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args.service)
    except ConfigError as exc:
        print(f"phoneseller-server: {exc}", file=sys.stderr)
        return 2
    # uvloop: the same asyncio API on libuv; the services spend most of their time in the event
    # loop (gRPC, NATS, database turns), and uvloop's is cheaper (docs/architecture.md).
    return uvloop.run(serve(load_definition(settings.service), settings))


if __name__ == "__main__":
    sys.exit(main())
