"""`python -m stack run|up|down|status` — the whole system on one machine."""

from __future__ import annotations

import argparse
import sys

from stack import supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start everything in the foreground; Ctrl-C stops it")
    commands.add_parser("up", help="start everything in the background and wait until ready")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="show each process and its health")
    args = parser.parse_args(argv)
    stack = supervisor.LocalStack.from_env()
    handlers = {"run": stack.run, "up": stack.up, "down": stack.down, "status": stack.status}
    return handlers[args.command]()


if __name__ == "__main__":
    sys.exit(main())
