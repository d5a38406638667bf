"""One chaos run, start to end: the stack, the load and the faults, settling, the check.

    result = run_chaos(ChaosOptions(duration=90, clients=8))
    result.verdict.ok, result.folder        # history.jsonl, report.json, timeline.png, logs

The stack is the local one on free ports (tests/support/stack.py), two replicas of each
service by default (one SQLite file per service, shared by its replicas). With PostgreSQL
(`postgres=True`, or by default whenever a server answers) promotion and store run on fresh
databases of their own, reached through a TCP proxy each that the postgres-down fault cuts;
the checker reads those databases directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from chaos import report
from chaos.access import nats_access
from chaos.checker import Verdict, check
from chaos.clients import ClientSettings, Load
from chaos.faults import FaultKind, FaultRecord, Injector, Planned, plan, run_schedule
from chaos.gateway import Gateway
from chaos.history import HistoryWriter, Operation
from chaos.observe import Observer, Quiet, Sources
from chaos.signin import credentials_for_stack
from chaos.state import EndState
from services.kit.config import SERVICE_NAMES
from stack.runs import git_state, results_folder, stack_folder
from stack.supervisor import LocalStack
from tests.support.stack import running_stack, stack_on_free_ports
from tests.support.tcp_proxy import TcpProxy

Say = Callable[[str], None]

#: The services that run on PostgreSQL when it is there (the fault cuts their links).
POSTGRES_SERVICES = ("promotion", "store")
#: How often the settling loop asks whether the system is quiet.
SETTLE_POLL_SECONDS = 1.0
#: After a check that found violations in a quiet system, the next one waits this long.
RECHECK_SECONDS = 15.0
PROGRESS_SECONDS_TTY, PROGRESS_SECONDS_PLAIN = 1.0, 10.0


class ChaosSetupError(RuntimeError):
    """The run could not be set up (no PostgreSQL although asked for, a stack not ready)."""


@dataclass
class ChaosOptions:
    clients: int = 24
    #: Seconds of load; it runs on past the last fault by `tail` at least.
    duration: float = 300.0
    cancel_share: float = 0.3
    faults: tuple[FaultKind, ...] = tuple(FaultKind)
    #: An explicit schedule instead of rounds of `faults` in a seeded order.
    schedule: list[Planned] | None = None
    hold: float = 8.0
    gap: float = 8.0
    warmup: float = 10.0
    tail: float = 20.0
    seed: int = 1
    #: None: PostgreSQL for promotion and store if a server answers, else SQLite only.
    postgres: bool | None = None
    replicas: int = 2
    out: Path | None = None
    operation_deadline: float = 30.0
    think_time: float = 0.0
    settle_timeout: float = 180.0
    keep_data: bool = False


@dataclass
class Timings:
    stack_start: float = 0.0
    #: Seconds since the load started (the history's clock).
    load_stopped: float = 0.0
    load_ended: float = 0.0
    last_fault_end: float | None = None
    settled: float | None = None
    checks: int = 0


@dataclass
class ChaosResult:
    folder: Path
    verdict: Verdict
    report: dict[str, Any]
    history: list[Operation]
    faults: list[FaultRecord]
    state: EndState = field(repr=False, default_factory=EndState)

    @property
    def exit_status(self) -> int:
        return 0 if self.verdict.ok else 1


# --- the stack ----------------------------------------------------------------------------


def postgres_available() -> tuple[bool, str]:
    # Only PostgreSQL runs need the tests' helper (and through it pytest).
    from tests.support.postgres import postgres_user

    user, why = postgres_user()
    return user is not None, why


@dataclass
class Databases:
    """Per service: the URL it runs on (through the proxy) and the one the checker reads."""

    service_urls: dict[str, str] = field(default_factory=dict)
    direct_urls: dict[str, str] = field(default_factory=dict)
    proxies: dict[str, TcpProxy] = field(default_factory=dict)


@contextlib.contextmanager
def postgres_databases(use: bool) -> Iterator[Databases]:
    """Fresh databases for promotion and store behind a TCP proxy each (dropped afterwards)."""
    found = Databases()
    if not use:
        yield found
        return
    from tests.support.postgres import fresh_database

    with contextlib.ExitStack() as resources:
        for service in POSTGRES_SERVICES:
            url = resources.enter_context(fresh_database(f"chaos_{service}"))
            database = make_url(url)
            assert database.host is not None and database.port is not None
            proxy = resources.enter_context(TcpProxy(database.host, database.port))
            found.direct_urls[service] = url
            found.service_urls[service] = database.set(port=proxy.port).render_as_string(
                hide_password=False
            )
            found.proxies[service] = proxy
        yield found


def sources_for(stack: LocalStack, databases: Databases) -> Sources:
    urls = {s: f"sqlite:///{stack.run_dir / 'data' / f'{s}.db'}" for s in SERVICE_NAMES}
    urls.update(databases.direct_urls)
    return Sources(stack.gateway, nats_access(stack), urls)


def start_stack(resources: contextlib.ExitStack, stack: LocalStack) -> float:
    started = time.monotonic()
    quiet = io.StringIO()  # `up` prints the endpoints of a developer's stack: not ours
    try:
        with contextlib.redirect_stdout(quiet):
            resources.enter_context(running_stack(stack))
    except AssertionError as error:
        raise ChaosSetupError(f"{error}; logs in {stack.logs}") from None
    return time.monotonic() - started


# --- the run ------------------------------------------------------------------------------


def run_chaos(options: ChaosOptions, say: Say = print) -> ChaosResult:
    folder = results_folder("chaos", options.out)
    use_postgres = options.postgres
    if use_postgres is not False:
        available, why = postgres_available()
        if use_postgres and not available:
            raise ChaosSetupError(f"--postgres, but PostgreSQL is not reachable: {why}")
        use_postgres = available
    kinds = tuple(k for k in options.faults if use_postgres or k is not FaultKind.POSTGRES_DOWN)
    commit, dirty = git_state()
    meta: dict[str, Any] = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "tree_dirty": dirty,
        "cores": os.cpu_count() or 0,
        "replicas": options.replicas,
        "database": "sqlite"
        + (f"; {', '.join(POSTGRES_SERVICES)} on PostgreSQL" if use_postgres else ""),
        "options": {k: report.plain(v) for k, v in vars(options).items()},
        "fault_kinds": [k.value for k in kinds],
        "folder": str(folder),
    }
    say(
        f"make chaos: {options.clients} clients, {options.duration:g}s, {options.replicas} "
        f"replica(s), {meta['database']}, faults {', '.join(meta['fault_kinds']) or 'none'}, "
        f"seed {options.seed}; results in {folder}"
    )
    history = HistoryWriter(folder / "history.jsonl")
    timings = Timings()
    stack: LocalStack | None = None
    try:
        with contextlib.ExitStack() as resources:
            databases = resources.enter_context(postgres_databases(bool(use_postgres)))
            stack = stack_on_free_ports(
                stack_folder(folder, "chaos"),
                replicas=options.replicas,
                service_env={
                    s: {"PHONESELLER_DATABASE_URL": url}
                    for s, url in databases.service_urls.items()
                },
            )
            timings.stack_start = start_stack(resources, stack)
            say(f"stack up in {timings.stack_start:.1f}s (gateway {stack.gateway})")
            sources = sources_for(stack, databases)
            faults, poison, state, verdict = asyncio.run(
                drive(stack, sources, databases, options, kinds, history, timings, say)
            )
            say("stopping the stack …")
    finally:
        history.close()
        if stack is not None:
            logs = folder / "logs"
            if stack.logs.exists() and not stack.logs.is_relative_to(folder):
                shutil.copytree(stack.logs, logs, dirs_exist_ok=True)
    summary = report.build(meta, history.operations, faults, state, verdict, timings, poison)
    report.write(summary, history.operations, faults, timings, folder)
    say("\n" + report.table(summary))
    if stack is not None and verdict.ok and not options.keep_data:
        if stack.run_dir.is_relative_to(folder):
            for part in ("data", "jetstream"):
                shutil.rmtree(stack.run_dir / part, ignore_errors=True)
        else:  # a stack folder of its own in /tmp (a long --out): its logs are copied
            shutil.rmtree(stack.run_dir, ignore_errors=True)
    return ChaosResult(folder, verdict, summary, history.operations, faults, state)


async def drive(
    stack: LocalStack,
    sources: Sources,
    databases: Databases,
    options: ChaosOptions,
    kinds: tuple[FaultKind, ...],
    history: HistoryWriter,
    timings: Timings,
    say: Say,
) -> tuple[list[FaultRecord], dict[str, frozenset[str]], EndState, Verdict]:
    """Load and faults, then settle and check. Every fault is healed on the way out."""
    started = time.monotonic()

    def clock() -> float:
        return time.monotonic() - started

    rng = random.Random(options.seed)
    credentials = credentials_for_stack(stack)
    gateway = Gateway(stack.gateway)
    settings = ClientSettings(
        clients=options.clients,
        cancel_share=options.cancel_share,
        operation_deadline=options.operation_deadline,
        think_time=options.think_time,
    )
    run_key = f"x{rng.getrandbits(24):06x}"
    load = Load(gateway, credentials, history, settings, clock, seed=options.seed, run_key=run_key)
    injector = Injector(stack, clock, rng, databases.proxies, say=say)
    schedule = options.schedule or plan(kinds, options.hold, rounds=1000, rng=rng)
    stopping = asyncio.Event()
    progress = asyncio.create_task(show_progress(load, injector, clock))
    load.start()
    faulting = asyncio.create_task(
        run_schedule(
            injector,
            schedule if kinds or options.schedule else [],
            start=options.warmup,
            gap=options.gap,
            until=options.duration - options.tail,
            stopping=stopping,
        )
    )
    try:
        await asyncio.sleep(max(options.duration - clock(), 0))
        await faulting  # past `until` it ends by itself once every kind had its turn
        last = max((r.end for r in injector.records), default=None)
        timings.last_fault_end = last
        await asyncio.sleep(max((last or 0) + options.tail - clock(), 0))
        timings.load_stopped = clock()
        say(f"[{clock():6.1f}s] load stopping: clients end the operation they are in")
        await load.stop()
        timings.load_ended = clock()
    except BaseException:
        stopping.set()
        await load.abandon()
        raise
    finally:
        stopping.set()
        faulting.cancel()
        await asyncio.gather(faulting, return_exceptions=True)
        await injector.heal_all()
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
        history.flush()
        await gateway.close()
    say(f"[{clock():6.1f}s] load stopped; waiting for the system to settle")
    observer = Observer(sources, credentials)
    try:
        state, verdict = await settle(
            observer, history.operations, injector, options, timings, clock, say
        )
    finally:
        await observer.close()
    return injector.records, injector.poison, state, verdict


async def settle(
    observer: Observer,
    operations: list[Operation],
    injector: Injector,
    options: ChaosOptions,
    timings: Timings,
    clock: Callable[[], float],
    say: Say,
) -> tuple[EndState, Verdict]:
    """Wait until the system looks quiet, then read and check it; again while it violates
    an invariant, until `settle_timeout`. The first clean check marks convergence."""
    deadline = clock() + options.settle_timeout
    last_said = next_check = 0.0
    while True:
        probed_at = clock()
        quiet: Quiet = await observer.quiet()
        late = clock() > deadline
        if (quiet.settled and clock() >= next_check) or late:
            state = await observer.read(operations)
            verdict = check(operations, state, poison=injector.poison)
            timings.checks += 1
            if verdict.ok:
                timings.settled = probed_at
                say(f"[{clock():6.1f}s] settled; checked in {clock() - probed_at:.1f}s")
                return state, verdict
            if late:
                say(f"[{clock():6.1f}s] not settled within {options.settle_timeout:g}s")
                return state, verdict
            # Quiet but wrong is rarely a lag; a whole read costs the machine, so not at once.
            next_check = clock() + RECHECK_SECONDS
            say(f"[{clock():6.1f}s] quiet, but {verdict.violations} violation(s); checking again")
        elif clock() - last_said > 10:
            last_said = clock()
            say(f"[{clock():6.1f}s] settling: {quiet.describe()}")
        await asyncio.sleep(SETTLE_POLL_SECONDS)


async def show_progress(load: Load, injector: Injector, clock: Callable[[], float]) -> None:
    """One status line: rewritten in place on a terminal, else printed every 10 s."""
    tty = sys.stderr.isatty()
    every = PROGRESS_SECONDS_TTY if tty else PROGRESS_SECONDS_PLAIN
    previous, previous_at = 0, clock()
    try:
        while True:
            await asyncio.sleep(every)
            load.history.flush()
            now, ended = clock(), len(load.history.operations)
            rate = (ended - previous) / max(now - previous_at, 1e-9)
            previous, previous_at = ended, now
            active = [r for r in injector.records if r.recovered is None and not r.problem]
            line = report.progress_line(now, rate, load.tally, active[-1] if active else None)
            if tty:
                sys.stderr.write("\r\033[K" + line[:150])
            else:
                print(line, file=sys.stderr, flush=True)
    finally:
        if tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
