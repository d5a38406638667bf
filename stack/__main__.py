"""`python -m stack run|up|down|status` — the whole system on one machine."""

from __future__ import annotations

import argparse
import json
import sys

from stack import supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start everything in the foreground; Ctrl-C stops it")
    commands.add_parser("up", help="start everything in the background and wait until ready")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="show each process and its health")
    fault = commands.add_parser("fault", help="inject a fault on a destination (Envoy restarts)")
    fault.add_argument("service", help="the destination, e.g. promotion")
    fault.add_argument(
        "fault",
        nargs="?",
        default="",
        help='Istio HTTPFaultInjection as JSON, e.g. \'{"delay": {"fixedDelay": '
        '"1s", "percentage": {"value": 100}}}\'; omit to remove the fault',
    )
    args = parser.parse_args(argv)
    stack = supervisor.LocalStack.from_env()
    if args.command == "fault":
        stack.set_fault(args.service, json.loads(args.fault) if args.fault else None)
        print(f"fault on {args.service}: {args.fault or 'none'}")
        return 0
    handlers = {"run": stack.run, "up": stack.up, "down": stack.down, "status": stack.status}
    return handlers[args.command]()


if __name__ == "__main__":
    sys.exit(main())
