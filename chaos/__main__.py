"""`make chaos` (`python -m chaos`): the whole system under load and faults, then the check.

Starts the local system on free ports (two replicas of each service; promotion and store on
PostgreSQL when a server answers), drives it through the gateway with careful clients that
record every operation, runs the fault schedule (kill -9 of a replica, of Envoy, of
nats-server; a slow and a failing promotion through the mesh; NATS stopped; PostgreSQL cut;
a poison event), lets the system settle and checks the history against the end state.

Prints the report and writes history.jsonl, report.json, report.txt, timeline.png and the
stack's logs to .run/chaos/<UTC time>/. Exit status 1 when an invariant is violated, 2 when
the run could not be set up, 130 when interrupted. docs/chaos.md explains the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from chaos.faults import FaultKind, parse_schedule
from chaos.run import ChaosOptions, ChaosSetupError, run_chaos

#: The default load: what the 2-core machine this was built on sustained without faults
#: (docs/chaos.md, "How much load").
DEFAULT_CLIENTS = 24


def fault_kinds(text: str) -> tuple[FaultKind, ...]:
    if text.strip() in ("", "none"):
        return ()
    if text.strip() == "all":
        return tuple(FaultKind)
    try:
        return tuple(FaultKind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as error:
        known = ", ".join(k.value for k in FaultKind)
        raise argparse.ArgumentTypeError(f"{error}; the kinds are {known}") from None


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("expected a share between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = ChaosOptions()
    parser = argparse.ArgumentParser(
        prog="make chaos ARGS=…",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--clients", type=int, default=DEFAULT_CLIENTS, help="careful clients (%(default)s)")
    add("--duration", type=float, default=defaults.duration, help="seconds of load (%(default)s)")
    add(
        "--cancel-share",
        type=share,
        default=defaults.cancel_share,
        help="paid orders a client cancels (%(default)s)",
    )
    add(
        "--faults",
        type=fault_kinds,
        default=defaults.faults,
        help="kinds to inject, comma-separated, `all` or `none` (all: "
        + ", ".join(k.value for k in FaultKind)
        + ")",
    )
    add(
        "--schedule",
        help="an explicit schedule instead: kind[@start][+hold],… e.g. "
        "'kill-envoy@20,promotion-slow+10' (seconds)",
    )
    add("--hold", type=float, default=defaults.hold, help="seconds a fault holds (%(default)s)")
    add(
        "--gap",
        type=float,
        default=defaults.gap,
        help="seconds between a fault's recovery and the next (%(default)s)",
    )
    add("--warmup", type=float, default=defaults.warmup, help="seconds before the first fault")
    add(
        "--tail",
        type=float,
        default=defaults.tail,
        help="seconds of load at least after the last fault (%(default)s)",
    )
    add(
        "--operation-deadline",
        type=float,
        default=defaults.operation_deadline,
        help="seconds a client retries one operation before it counts as unknown (%(default)s)",
    )
    add(
        "--think-time",
        type=float,
        default=defaults.think_time,
        help="seconds a client pauses between operations (%(default)s: a closed loop)",
    )
    add(
        "--settle-timeout",
        type=float,
        default=defaults.settle_timeout,
        help="longest wait for the system to settle and check clean (%(default)s)",
    )
    add("--seed", type=int, default=defaults.seed, help="seeds clients and faults (%(default)s)")
    add(
        "--postgres",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="promotion and store on PostgreSQL (default: when a server answers at "
        "PHONESELLER_TEST_POSTGRES, else 127.0.0.1:5432)",
    )
    add(
        "--replicas",
        type=int,
        default=int(os.environ.get("PHONESELLER_LOCAL_REPLICAS", "2")),
        help="replicas of each service (PHONESELLER_LOCAL_REPLICAS, else %(default)s)",
    )
    add("--out", type=Path, help="results folder (default: .run/chaos/<UTC time>/)")
    add("--keep-data", action="store_true", help="keep databases and JetStream after a clean run")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> ChaosOptions:
    return ChaosOptions(
        clients=args.clients,
        duration=args.duration,
        cancel_share=args.cancel_share,
        faults=args.faults,
        schedule=parse_schedule(args.schedule, args.hold) if args.schedule else None,
        hold=args.hold,
        gap=args.gap,
        warmup=args.warmup,
        tail=args.tail,
        seed=args.seed,
        postgres=args.postgres,
        replicas=args.replicas,
        out=args.out,
        operation_deadline=args.operation_deadline,
        think_time=args.think_time,
        settle_timeout=args.settle_timeout,
        keep_data=args.keep_data,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: faults healed, the stack stopped


def say(line: str) -> None:
    """Print a line above the progress line (which lives on stderr)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as error:
        print(f"--schedule: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_chaos(options, say)
    except ChaosSetupError as error:
        print(f"make chaos: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: faults healed, the stack stopped", file=sys.stderr)
        return 130
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
