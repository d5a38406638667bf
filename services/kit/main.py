"""`phoneseller-server SERVICE`: start one of the five services."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

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
    return asyncio.run(serve(load_definition(settings.service), settings))


if __name__ == "__main__":
    sys.exit(main())
