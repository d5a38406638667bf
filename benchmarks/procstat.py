"""CPU seconds of every process of the local stack, read from /proc/<pid>/stat.

The processes are the ones supervisord runs (nats-server, Envoy, each service replica) and
supervisord itself, which carries every process's stdout into its log file and so pays for
the services' logging. A process's figure is utime + stime, plus cutime + cstime for any
children it waited for. A process that supervisord restarted between two snapshots has a new
start time; its figure is then wrong and the step names it, rather than silently mixing two
processes.

With PostgreSQL the server is part of the system too, though supervisord does not run it:
"postgres backends" are the server processes working for the run's databases (their command
line names the database), "postgres server" the postmaster and its helpers (checkpointer,
WAL writer, …), which work for every database on the server but mostly for ours while we run.
Backends come and go with connections (a pool opens extra ones under load and closes them
again), so they are found again at every snapshot; the CPU of one that ended in between
reaches the postmaster's children's times, which "postgres server" therefore includes — with
that of any other database's backends that ended meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.kit.config import SERVICE_NAMES
from stack.supervisor import LocalStack
from tests.support.stack import program_pid

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The processes that are not services, in the order the reports list them.
INFRASTRUCTURE = ("envoy", "nats", "supervisord")
POSTGRES_BACKENDS = "postgres backends"
POSTGRES_SERVER = "postgres server"


@dataclass(frozen=True)
class ProcessCpu:
    """One reading of one process: who it was (pid, start time) and its CPU seconds so far."""

    pid: int
    start_ticks: int
    seconds: float

    @property
    def identity(self) -> tuple[int, int]:
        return self.pid, self.start_ticks


def read_process_cpu(pid: int) -> ProcessCpu | None:
    """The process's CPU seconds (with its waited-for children's), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            line = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = line.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14-17, starttime is field 22.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcessCpu(pid, int(fields[19]), (utime + stime + cutime + cstime) / CLOCK_TICKS)


def read_machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, every process) since boot.

    The machine is shared: what it spent beyond the stack and the client is other work that
    competed for the same cores during the measurement.
    """
    with open("/proc/stat") as stat:
        # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def _command_lines() -> Iterable[tuple[int, str, int]]:
    """(pid, command line, parent pid) of every process we may read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry.name), command.strip(), parent


def postgres_processes(databases: Sequence[str]) -> dict[str, list[int]]:
    """The pids of the backends serving `databases`, and of the server's own processes."""
    processes = list(_command_lines())
    helpers = {pid: parent for pid, command, parent in processes if command.startswith("postgres:")}
    postmasters = set(helpers.values())
    backends = [
        pid
        for pid, command, _ in processes
        if pid in helpers and any(name in command for name in databases)
    ]
    server = sorted(postmasters) + [
        pid
        for pid, command, _ in processes
        if pid in helpers and pid not in backends and not _serves_a_database(command)
    ]
    return {POSTGRES_BACKENDS: backends, POSTGRES_SERVER: server}


def _serves_a_database(command: str) -> bool:
    """A backend's title is `postgres: [cluster:] user database host(port) state`; helpers'
    are one or two words (`checkpointer`, `background writer`, `walwriter`, …)."""
    return "(" in command or "[local]" in command or "autovacuum worker" in command


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of each stack process, of this benchmark process and of the whole machine,
    at one moment."""

    processes: dict[str, ProcessCpu | None]
    #: Groups of processes that come and go (PostgreSQL's), by pid.
    groups: dict[str, dict[int, ProcessCpu]]
    client_seconds: float
    machine_busy_seconds: float
    taken_at: float


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds spent between two snapshots."""

    seconds: dict[str, float]
    #: Processes that died or were restarted in between: their figure is not to be trusted.
    restarted: list[str]
    #: What the benchmark's own client used: it shares the machine's cores with the stack.
    client_seconds: float
    #: What every process on the machine used, the stack and the client included.
    machine_busy_seconds: float
    wall_seconds: float

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class CpuMeter:
    """Finds the stack's processes through supervisorctl once, then reads /proc."""

    stack: LocalStack
    #: The run's PostgreSQL databases (none: SQLite, no server to count).
    postgres_databases: Sequence[str] = ()
    pids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.pids = self._find_pids()

    def _find_pids(self) -> dict[str, int]:
        pids = {}
        for service in SERVICE_NAMES:
            for replica in range(self.stack.replicas):
                pids[self.stack.replica_name(service, replica)] = program_pid(
                    self.stack, self.stack.program(service, replica)
                )
        pids["envoy"] = program_pid(self.stack, "envoy")
        pids["nats"] = program_pid(self.stack, "nats")
        out = self.stack.supervisorctl("pid").stdout.strip()  # no program: supervisord's own
        pids["supervisord"] = int(out) if out.isdigit() else 0
        return pids

    @property
    def names(self) -> list[str]:
        """Services first (by replica), then the infrastructure, then PostgreSQL's groups."""
        groups = [POSTGRES_BACKENDS, POSTGRES_SERVER] if self.postgres_databases else []
        return [*self.pids, *groups]

    def snapshot(self) -> CpuSnapshot:
        groups: dict[str, dict[int, ProcessCpu]] = {}
        if self.postgres_databases:
            for group, pids in postgres_processes(self.postgres_databases).items():
                readings = (read_process_cpu(pid) for pid in pids)
                groups[group] = {r.pid: r for r in readings if r is not None}
        return CpuSnapshot(
            {name: read_process_cpu(pid) for name, pid in self.pids.items()},
            groups,
            time.process_time(),
            read_machine_busy(),
            time.monotonic(),
        )

    def refresh(self) -> list[str]:
        """Ask supervisorctl again for the pids of processes that are gone; names them."""
        gone = [name for name, pid in self.pids.items() if read_process_cpu(pid) is None]
        if gone:
            self.pids = self._find_pids()
        return gone


def _spent(first: ProcessCpu | None, last: ProcessCpu) -> float:
    """A group member's CPU in between: all of it if it started in between."""
    if first is None or first.identity != last.identity:
        return last.seconds
    return last.seconds - first.seconds


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> CpuUsage:
    seconds: dict[str, float] = {}
    restarted: list[str] = []
    for name, first in before.processes.items():
        last = after.processes.get(name)
        if first is None or last is None or first.identity != last.identity:
            restarted.append(name)
            seconds[name] = last.seconds if last is not None else 0.0
        else:
            seconds[name] = last.seconds - first.seconds
    for group, readings in after.groups.items():
        earlier = before.groups.get(group, {})
        seconds[group] = sum(_spent(earlier.get(pid), last) for pid, last in readings.items())
    return CpuUsage(
        seconds,
        restarted,
        after.client_seconds - before.client_seconds,
        after.machine_busy_seconds - before.machine_busy_seconds,
        after.taken_at - before.taken_at,
    )
