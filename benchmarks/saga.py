"""`make bench`: the saga through the gateway, at a ladder of client counts, beside the cost of
a plain unary call through the same gateway.

Starts the whole system (nats-server, every service replica, Envoy) on free ports as the tests
do, drives it only through the gateway, and stops it at the end, also on Ctrl-C or an error.

Each step of the ladder (default 1, 8, 32, 64 clients) runs a closed loop (benchmarks/traffic):
every client places an order (a unique request_id, a customer from a pool of `--customers`, an
amount below the payment's decline limit) and, when it came back PAID, cancels it at once with
probability `--cancel-share`. A step is a warm-up, a drain, the measured window, and a drain:

- **orders/s**: PlaceOrder calls answered OK in the window, per second of the window.
- **completed sagas/s**: orders answered PAID in the window whose saga had settled in the
  customer view by the end of the drain after it, per second of the window. Settled means the
  view (CustomerService/GetCustomerHistory, read for every customer the window used) shows
  the order PAID with its PromoCompleted (points_granted > 0) for a kept order, or CANCELLED
  with PayCancelled, OrderCancelled and points_reversed == points_granted > 0 for an order
  CancelOrder answered CANCELLED. A failed cancel is not retried: refused, it leaves a kept
  order; UNAVAILABLE (or a bare status), either end, whole (the payment finishes a cancel
  whose points came back after all).
- **diverged**: sagas that ended where nobody sent them: CancelOrder was refused with an
  ErrorInfo (the contract: nothing was changed), yet the view shows the points clawed back or
  the order cancelled. Not completed; listed with what the view showed, like the
  **unsettled** ones (not at a whole end by the end of the drain, e.g. points clawed back
  while the order stays PAID).
- **PlaceOrder / CancelOrder p50/p90/p99/max**: calls answered OK, from an HDR histogram.
- **saga p50/p99**: on a sample (`--sample-share`, default 5 %) of paid orders, each with a
  customer of its own: from sending PlaceOrder to the view showing the end state, polled
  after 20 % of the saga's age so far (20-500 ms), so the estimate is within ±10 % and the
  watch costs a handful of one-order reads per sampled saga.
- **errors**: failed calls by method, gRPC code and the ErrorInfo reason in
  grpc-status-details-bin ("-": none, e.g. an error Envoy made itself).
- **CPU ms/saga**: utime + stime (from /proc/<pid>/stat) of every stack process — each
  replica, Envoy, nats-server, supervisord (which writes every process's log) and, with
  `--postgres`, the PostgreSQL processes serving the run (benchmarks/procstat) — from the
  start of the window to the end of its drain, divided by the completed sagas. The warm-up is
  drained first, so the window starts with no saga in flight and the CPU is the window's own.
  It includes the watch's polls (customer view and Envoy): a small share, see polls/s in
  results.json.
- **× echo**: CPU per completed saga over CPU per call of the reference primitive:
  grpc.health.v1.Health/Check through the same gateway (routed to the order service), with the
  same closed loop at `--echo-clients` in flight, counting Envoy and the order replicas.

Before any traffic, the idle stack's CPU per second shows what its polling loops and health
checks cost on their own. The benchmark's client runs on the same machine and takes CPU from
the stack; its own CPU is reported beside the stack's, not in the total.

`--soak` instead runs the highest client count for `--soak-minutes` without a pause and
reports each minute: its rates, latencies and CPU per paid order, the size of every database
and of the JetStream store, and the rows of every service's outbox, inbox and dead_letters;
and whether the last minute's paid orders/s are within 10 % of the first's.

Figures go to one folder (default .run/bench/<UTC time>/): results.json, saga.png, summary.md
and the stack's logs. Benchmarks print figures; they never assert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import report
from benchmarks.figures import (
    CpuFigures,
    EchoFigures,
    MinuteFigures,
    RunFigures,
    SoakFigures,
    StepFigures,
    echo_figures,
    minute_figures,
    soak_figures,
    step_figures,
)
from benchmarks.footprint import Footprint, postgres_footprint, sqlite_footprint
from benchmarks.procstat import CpuMeter, cpu_between
from benchmarks.traffic import EchoLoad, Phase, SagaLoad, Sweep
from client.signin import DevSignIn
from services.kit.config import SERVICE_NAMES
from stack.runs import git_state, results_folder, stack_folder
from stack.supervisor import LocalStack, otel_environment
from tests.support.stack import running_stack, stack_on_free_ports

SOAK_MINUTE_SECONDS = 60.0
PLAIN_PROGRESS_SECONDS = 10.0

FootprintProbe = Callable[[], Awaitable[Footprint]]


# --- options ------------------------------------------------------------------------------


def client_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive integers such as 1,8,32,64")
    return counts


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("expected a share between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make bench ARGS=…",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--clients",
        type=client_counts,
        default=[1, 8, 32, 64],
        help="the ladder, in flight (%(default)s)",
    )
    add("--duration", type=float, default=15.0, help="measured seconds per step (%(default)s)")
    add("--warmup", type=float, default=2.0, help="warm-up seconds per step (%(default)s)")
    add(
        "--drain-timeout",
        type=float,
        default=15.0,
        help="longest wait for sagas to settle (%(default)s)",
    )
    add(
        "--cancel-share",
        type=share,
        default=0.3,
        help="paid orders cancelled at once (%(default)s)",
    )
    add(
        "--sample-share",
        type=share,
        default=0.05,
        help="paid orders watched to the end (%(default)s)",
    )
    add("--customers", type=int, default=2_000, help="customer pool per step (%(default)s)")
    add(
        "--idle-seconds",
        type=float,
        default=4.0,
        help="the stack's CPU with no traffic (%(default)s)",
    )
    add("--echo-clients", type=int, default=32, help="Health/Check calls in flight (%(default)s)")
    add(
        "--echo-seconds",
        type=float,
        default=5.0,
        help="measured seconds of Health/Check (%(default)s)",
    )
    add("--replicas", type=int, default=1, help="replicas of each service (%(default)s)")
    add("--postgres", action="store_true", help="every service on a fresh PostgreSQL database")
    add("--soak", action="store_true", help="the highest client count for --soak-minutes")
    add("--soak-minutes", type=int, default=10, help="length of --soak (%(default)s)")
    add(
        "--seed",
        type=int,
        default=1,
        help="seeds amounts, cancels, samples and customers (%(default)s)",
    )
    add("--out", type=Path, help="results folder (default: .run/bench/<UTC time>/)")
    add("--keep-data", action="store_true", help="keep the databases and JetStream store")
    return parser.parse_args(argv)


DEFINITIONS = {
    "orders_per_second": "PlaceOrder calls answered OK in the window / window seconds",
    "sagas_per_second": (
        "orders answered PAID in the window whose saga settled in the customer view by the "
        "end of the drain (kept: PAID + PromoCompleted; cancelled: CANCELLED + PayCancelled + "
        "OrderCancelled, points_reversed == points_granted > 0) / window seconds"
    ),
    "diverged": (
        "CancelOrder refused with an ErrorInfo (nothing changed), yet the view shows the "
        "points clawed back or the order cancelled"
    ),
    "saga": "sampled sagas: PlaceOrder sent -> the view shows the end state (±10 %)",
    "cpu_ms_per_saga": (
        "utime+stime of each stack process from window start to drain end / completed sagas"
    ),
    "echo_ratio": "CPU per completed saga / CPU (Envoy + order) per Health/Check call",
}


# --- the stack ----------------------------------------------------------------------------


class PostgresUnavailableError(RuntimeError):
    """--postgres, but no PostgreSQL server answered."""


@contextlib.contextmanager
def service_databases(postgres: bool) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database per service (dropped afterwards), or none for SQLite."""
    if not postgres:
        yield {}
        return
    # Only --postgres needs the tests' helpers (and through them pytest).
    import pytest

    from tests.support.postgres import fresh_database

    with contextlib.ExitStack() as databases:
        try:
            urls = {
                service: databases.enter_context(fresh_database(f"bench_{service}"))
                for service in SERVICE_NAMES
            }
        except pytest.skip.Exception as skipped:  # how the helper says "no server"
            raise PostgresUnavailableError(str(skipped)) from None
        yield urls


def new_stack(out: Path, replicas: int, urls: dict[str, str]) -> LocalStack:
    """A stack on free ports (tests/support/ports never hands out a port twice)."""
    return stack_on_free_ports(
        stack_folder(out, "bench"),
        replicas=replicas,
        service_env={s: {"PHONESELLER_DATABASE_URL": url} for s, url in urls.items()},
        # Tracing as `make up` does it: on when the environment names an OTLP endpoint, e.g.
        # `python -m tests.support.otlp --port 4317` beside the run (docs/observability.md).
        otel_env=otel_environment(),
    )


def start_stack(resources: contextlib.ExitStack, stack: LocalStack) -> float:
    """`up` the stack (stopped when `resources` closes); returns how long it took."""
    started = time.monotonic()
    quiet = io.StringIO()  # `up` prints the endpoints of a developer's stack: not ours
    try:
        with contextlib.redirect_stdout(quiet):
            resources.enter_context(running_stack(stack))
    except AssertionError:
        print(quiet.getvalue(), file=sys.stderr)
        raise
    return time.monotonic() - started


def remove_data(stack: LocalStack) -> None:
    """A soak leaves hundreds of MB; the figures are in results.json."""
    for folder in ("data", "jetstream"):
        shutil.rmtree(stack.run_dir / folder, ignore_errors=True)


# --- progress -----------------------------------------------------------------------------


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else every 10 s."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._status: Callable[[], str] = lambda: ""
        self._label = ""
        self._since = time.monotonic()
        self._started = time.monotonic()
        self._shown = False

    def show(self, label: str, status: Callable[[], str]) -> None:
        self._label, self._status, self._since = label, status, time.monotonic()

    def say(self, line: str) -> None:
        """Print a line of results above the status line."""
        self.clear()
        print(line, flush=True)

    def clear(self) -> None:
        if self._tty and self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False

    def _line(self) -> str:
        now = time.monotonic()
        return (
            f"[{now - self._started:4.0f}s] {self._label} {now - self._since:5.1f}s  "
            f"{self._status()}"
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.clear()

    async def _loop(self) -> None:
        while True:
            if self._tty:
                sys.stderr.write("\r\033[K" + self._line()[:150])
                self._shown = True
                await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(PLAIN_PROGRESS_SECONDS)
                print(self._line(), file=sys.stderr, flush=True)


def phase_status(load: SagaLoad, phase: Phase) -> Callable[[], str]:
    return lambda: (
        f"orders {phase.placed:,}  paid {len(phase.sagas):,}  errors {phase.errors.total:,}"
        f"  watching {load.watching}"
    )


# --- measuring ----------------------------------------------------------------------------


async def measure_idle(meter: CpuMeter, seconds: float, progress: Progress) -> CpuFigures:
    """The stack with no traffic: its polling loops and health checks, per second."""
    progress.show("idle", lambda: "no traffic: the stack's own CPU")
    before = meter.snapshot()
    await asyncio.sleep(seconds)
    idle = CpuFigures.of(cpu_between(before, meter.snapshot()), meter.names)
    progress.say(report.idle_line(idle))
    return idle


async def measure_echo(
    stack: LocalStack, meter: CpuMeter, args: argparse.Namespace, progress: Progress
) -> EchoFigures:
    echo = EchoLoad(stack.gateway)
    try:
        progress.show("echo warm-up", lambda: f"calls {echo.calls.calls:,}")
        await echo.run(args.echo_clients, 1.0)
        progress.show("echo", lambda: f"calls {echo.calls.calls:,}")
        before = meter.snapshot()
        calls = await echo.run(args.echo_clients, args.echo_seconds)
        usage = cpu_between(before, meter.snapshot())
    finally:
        await echo.close()
    figures = echo_figures(args.echo_clients, calls, CpuFigures.of(usage, meter.names))
    progress.say(report.echo_line(figures))
    return figures


async def measure_step(
    load: SagaLoad,
    meter: CpuMeter,
    clients: int,
    args: argparse.Namespace,
    progress: Progress,
    echo: EchoFigures | None,
) -> StepFigures:
    label = f"{clients} clients"
    warm = load.new_phase(f"c{clients}w")
    progress.show(f"{label} warm-up", phase_status(load, warm))
    await load.run(clients, args.warmup, warm)
    await load.drain(warm, args.drain_timeout)

    phase = load.new_phase(f"c{clients}")
    before = meter.snapshot()
    progress.show(f"{label} measure", phase_status(load, phase))
    await load.run(clients, args.duration, phase)
    progress.show(f"{label} drain", phase_status(load, phase))
    drained = await load.drain(phase, args.drain_timeout)
    usage = cpu_between(before, meter.snapshot())
    progress.show(f"{label} sweep", lambda: f"reading {len(phase.customers_used):,} histories")
    sweep = await load.sweep(phase)
    meter.refresh()
    step = step_figures(clients, phase, sweep, CpuFigures.of(usage, meter.names), drained, echo)
    progress.say(report.step_line(step))
    return step


async def measure_soak(
    load: SagaLoad,
    meter: CpuMeter,
    probe: FootprintProbe,
    args: argparse.Namespace,
    progress: Progress,
) -> SoakFigures:
    clients = max(args.clients)
    progress.say(f"soak: {clients} clients for {args.soak_minutes} minute(s)")
    phases: list[Phase] = []
    cpus: list[CpuFigures] = []
    footprints: list[dict[str, Any]] = []
    phase = load.new_phase("m1")
    before = meter.snapshot()
    load.start(clients, phase)
    for minute in range(1, args.soak_minutes + 1):
        progress.show(f"soak minute {minute}", phase_status(load, phase))
        await asyncio.sleep(max(phase.started_at + SOAK_MINUTE_SECONDS - time.perf_counter(), 0))
        phases.append(phase)
        if minute < args.soak_minutes:
            phase = load.new_phase(f"m{minute + 1}")
            load.switch(phase)
        else:
            await load.stop()
        after = meter.snapshot()
        cpus.append(CpuFigures.of(cpu_between(before, after), meter.names))
        before = after
        footprints.append((await probe()).as_json())
        live = minute_figures(minute, phases[-1], Sweep.not_yet(), cpus[-1], footprints[-1])
        progress.say(report.minute_line(live))
    progress.show("soak drain", phase_status(load, phases[-1]))
    drained = await load.drain(phases[-1], args.drain_timeout)
    minutes: list[MinuteFigures] = []
    for minute, (past, cpu, footprint) in enumerate(zip(phases, cpus, footprints, strict=True)):
        progress.show(f"soak sweep {minute + 1}", lambda: "reading histories")
        sweep = await load.sweep(past)
        minutes.append(minute_figures(minute + 1, past, sweep, cpu, footprint))
    return soak_figures(clients, minutes, drained)


def footprint_probe(stack: LocalStack, urls: dict[str, str]) -> FootprintProbe:
    if urls:
        return lambda: postgres_footprint(urls, stack.run_dir)
    return lambda: sqlite_footprint(stack.run_dir)


async def measure(
    args: argparse.Namespace, stack: LocalStack, urls: dict[str, str], run: RunFigures
) -> None:
    """Every measurement of the run, into `run` as it goes (so Ctrl-C keeps what was done)."""
    meter = CpuMeter(stack, [url.rsplit("/", 1)[-1] for url in urls.values()])
    probe = footprint_probe(stack, urls)
    progress = Progress()
    load = SagaLoad(
        stack.gateway,
        sign_in=DevSignIn(stack.issuer),
        cancel_share=args.cancel_share,
        sample_share=args.sample_share,
        customers=args.customers,
        seed=args.seed,
    )
    try:
        async with progress.running():
            run.idle = await measure_idle(meter, args.idle_seconds, progress)
            if args.soak:
                run.echo = await measure_echo(stack, meter, args, progress)
                run.soak = await measure_soak(load, meter, probe, args, progress)
                run.echo_after = await measure_echo(stack, meter, args, progress)
            else:
                run.echo = await measure_echo(stack, meter, args, progress)
                for clients in args.clients:
                    run.steps.append(
                        await measure_step(load, meter, clients, args, progress, run.echo)
                    )
            run.footprint = (await probe()).as_json()
    finally:
        await load.close()


# --- the run ------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: the stack is stopped on the way out


def new_run(args: argparse.Namespace) -> RunFigures:
    commit, dirty = git_state("services", "mesh", "stack")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return RunFigures(
        started_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=commit,
        tree_dirty=dirty,
        database="postgresql" if args.postgres else "sqlite",
        replicas=args.replicas,
        cores=os.cpu_count() or 0,
        options=options,
        definitions=DEFINITIONS,
    )


def write_results(run: RunFigures, out: Path) -> None:
    report.write_json(run, out / "results.json")
    summary = report.summary(run)
    (out / "summary.md").write_text(summary + "\n")
    if run.steps:
        report.plot_ladder(run, out / "saga.png")
    if run.soak and run.soak.minutes:
        report.plot_soak(run, out / "soak.png")
    print("\n" + summary)
    print(f"\nresults: {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_folder("bench", args.out)
    signal.signal(signal.SIGTERM, _terminate)
    run = new_run(args)
    started = time.monotonic()
    print(
        f"make bench: {run.database}, {args.replicas} replica(s) per service, commit "
        f"{run.commit}{' (+ uncommitted changes)' if run.tree_dirty else ''}, "
        f"{run.cores} cores; results in {out}",
        flush=True,
    )
    status = 0
    stack: LocalStack | None = None
    try:
        with contextlib.ExitStack() as resources:
            urls = resources.enter_context(service_databases(args.postgres))
            stack = new_stack(out, args.replicas, urls)
            run.stack_start_seconds = start_stack(resources, stack)
            print(f"stack up in {run.stack_start_seconds:.1f}s (gateway {stack.gateway})")
            asyncio.run(measure(args, stack, urls, run))
            print("stopping the stack …", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the stack is stopped; figures so far follow", file=sys.stderr)
        status = 130
    except AssertionError as error:
        print(f"{error}; logs in {stack.logs if stack else out}", file=sys.stderr)
        return 1
    except PostgresUnavailableError as error:
        print(f"--postgres: {error}", file=sys.stderr)
        return 1
    finally:
        if stack is not None and not args.keep_data:
            remove_data(stack)
    run.total_seconds = time.monotonic() - started
    write_results(run, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
