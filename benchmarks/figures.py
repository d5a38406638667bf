"""The figures a saga benchmark run produces, as plain dataclasses (they become the JSON).

Built from what the client saw (traffic.Phase), what the stack's processes spent
(procstat.CpuUsage) and what the view showed after the drain (traffic.Sweep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from benchmarks.latency import ErrorTally, Latency
from benchmarks.procstat import CpuUsage
from benchmarks.traffic import EchoCalls, Phase, Sweep


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, latency: Latency) -> Percentiles:
        return cls(
            latency.count,
            latency.percentile_ms(50),
            latency.percentile_ms(90),
            latency.percentile_ms(99),
            latency.max_ms(),
        )


@dataclass(frozen=True)
class ErrorRow:
    method: str
    code: str
    reason: str
    count: int
    example: str


def error_rows(errors: ErrorTally) -> list[ErrorRow]:
    return [
        ErrorRow(
            str(r["method"]), str(r["code"]), str(r["reason"]), int(r["count"]), str(r["example"])
        )
        for r in errors.rows()
    ]


@dataclass(frozen=True)
class CpuFigures:
    """CPU seconds per stack process over a measurement, and their total."""

    seconds: dict[str, float]
    total_seconds: float
    #: The benchmark client's own CPU: not part of the total, but it took the same cores.
    client_seconds: float
    #: CPU of the machine's other processes (neither the stack nor the client) meanwhile.
    other_seconds: float
    #: Cores the whole machine kept busy, on average, out of `cores`.
    busy_cores: float
    cores: int
    wall_seconds: float
    #: Processes that died or were restarted during the measurement.
    restarted: list[str]

    @classmethod
    def of(cls, usage: CpuUsage, order: list[str]) -> CpuFigures:
        wall = max(usage.wall_seconds, 1e-9)
        return cls(
            seconds={name: usage.seconds[name] for name in order if name in usage.seconds},
            total_seconds=usage.total,
            client_seconds=usage.client_seconds,
            other_seconds=max(usage.machine_busy_seconds - usage.total - usage.client_seconds, 0),
            busy_cores=usage.machine_busy_seconds / wall,
            cores=os.cpu_count() or 0,
            wall_seconds=usage.wall_seconds,
            restarted=usage.restarted,
        )

    def per(self, count: int, unit: float) -> dict[str, float | None]:
        """Each process's CPU per one of `count` things, in `unit` (1e3: ms, 1e6: µs)."""
        return {name: _per(s, count, unit) for name, s in self.seconds.items()}


def _per(seconds: float, count: int, unit: float) -> float | None:
    return seconds * unit / count if count else None


@dataclass(frozen=True)
class EchoFigures:
    """The reference primitive: Health/Check through the gateway, answered by order."""

    clients: int
    seconds: float
    calls: int
    calls_per_second: float
    latency: Percentiles
    errors: list[ErrorRow]
    cpu: CpuFigures
    #: The processes a call passes: Envoy and the order replicas.
    answering: list[str]
    cpu_us_per_call: float | None
    cpu_us_per_call_all_processes: float | None


def echo_figures(clients: int, calls: EchoCalls, cpu: CpuFigures) -> EchoFigures:
    answering = [name for name in cpu.seconds if name == "envoy" or name.startswith("order-")]
    answering_seconds = sum(cpu.seconds[name] for name in answering)
    return EchoFigures(
        clients=clients,
        seconds=calls.seconds,
        calls=calls.calls,
        calls_per_second=calls.calls / calls.seconds,
        latency=Percentiles.of(calls.latency),
        errors=error_rows(calls.errors),
        cpu=cpu,
        answering=answering,
        cpu_us_per_call=_per(answering_seconds, calls.calls, 1e6),
        cpu_us_per_call_all_processes=_per(cpu.total_seconds, calls.calls, 1e6),
    )


@dataclass(frozen=True)
class StepFigures:
    """One client count of the ladder: its measured window, drained."""

    clients: int
    window_seconds: float
    drain_seconds: float
    #: PlaceOrder calls answered, by the status they answered.
    orders: int
    statuses: dict[str, int]
    paid: int
    #: CancelOrder calls answered CANCELLED.
    cancelled: int
    orders_per_second: float
    paid_per_second: float
    sweep: Sweep
    sagas_per_second: float
    place: Percentiles
    cancel: Percentiles
    #: Sampled sagas: PlaceOrder sent → the view shows the end state.
    saga: Percentiles
    samples: int
    samples_unsettled: int
    samples_diverged: int
    polls_per_second: float
    error_count: int
    errors: list[ErrorRow]
    cpu: CpuFigures
    cpu_ms_per_saga: dict[str, float | None]
    cpu_ms_per_saga_total: float | None
    #: CPU per completed saga over CPU per echo call (Envoy + order).
    echo_ratio: float | None


def step_figures(
    clients: int,
    phase: Phase,
    sweep: Sweep,
    cpu: CpuFigures,
    drain_seconds: float,
    echo: EchoFigures | None,
) -> StepFigures:
    window = phase.seconds
    completed = sweep.completed
    per_saga = _per(cpu.total_seconds, completed, 1e3)
    echo_ms = echo.cpu_us_per_call / 1e3 if echo and echo.cpu_us_per_call else None
    return StepFigures(
        clients=clients,
        window_seconds=window,
        drain_seconds=drain_seconds,
        orders=phase.placed,
        statuses=dict(phase.statuses),
        paid=len(phase.sagas),
        cancelled=phase.cancelled,
        orders_per_second=phase.placed / window,
        paid_per_second=len(phase.sagas) / window,
        sweep=sweep,
        sagas_per_second=completed / window,
        place=Percentiles.of(phase.place),
        cancel=Percentiles.of(phase.cancel),
        saga=Percentiles.of(phase.saga),
        samples=phase.samples,
        samples_unsettled=phase.samples_unsettled,
        samples_diverged=phase.samples_diverged,
        polls_per_second=phase.polls / window,
        error_count=phase.errors.total,
        errors=error_rows(phase.errors),
        cpu=cpu,
        cpu_ms_per_saga=cpu.per(completed, 1e3),
        cpu_ms_per_saga_total=per_saga,
        echo_ratio=per_saga / echo_ms if per_saga is not None and echo_ms else None,
    )


@dataclass(frozen=True)
class MinuteFigures:
    """One minute of the soak (no drain in between: the load never stops)."""

    minute: int
    seconds: float
    orders: int
    paid: int
    orders_per_second: float
    paid_per_second: float
    #: Of this minute's paid orders, those settled in the view by the end of the soak's drain.
    completed: int
    sweep: Sweep
    sagas_per_second: float
    place: Percentiles
    cancel: Percentiles
    #: Sampled sagas that the view was seen to settle during this minute.
    saga: Percentiles
    error_count: int
    errors: list[ErrorRow]
    cpu: CpuFigures
    cpu_ms_per_paid_order: float | None
    footprint: dict[str, Any]


def minute_figures(
    minute: int, phase: Phase, sweep: Sweep, cpu: CpuFigures, footprint: dict[str, Any]
) -> MinuteFigures:
    window = phase.seconds
    return MinuteFigures(
        minute=minute,
        seconds=window,
        orders=phase.placed,
        paid=len(phase.sagas),
        orders_per_second=phase.placed / window,
        paid_per_second=len(phase.sagas) / window,
        completed=sweep.completed,
        sweep=sweep,
        sagas_per_second=sweep.completed / window,
        place=Percentiles.of(phase.place),
        cancel=Percentiles.of(phase.cancel),
        saga=Percentiles.of(phase.saga),
        error_count=phase.errors.total,
        errors=error_rows(phase.errors),
        cpu=cpu,
        cpu_ms_per_paid_order=_per(cpu.total_seconds, len(phase.sagas), 1e3),
        footprint=footprint,
    )


@dataclass(frozen=True)
class SoakFigures:
    clients: int
    minutes: list[MinuteFigures]
    drain_seconds: float
    first_paid_per_second: float
    last_paid_per_second: float
    #: last / first − 1: how the paid rate moved from the first minute to the last.
    change: float
    within_10_percent: bool


def soak_figures(clients: int, minutes: list[MinuteFigures], drain_seconds: float) -> SoakFigures:
    first, last = minutes[0].paid_per_second, minutes[-1].paid_per_second
    change = last / first - 1 if first else float("nan")
    return SoakFigures(clients, minutes, drain_seconds, first, last, change, abs(change) <= 0.10)


@dataclass
class RunFigures:
    """Everything one `make bench` run measured, and what it ran against."""

    started_utc: str
    commit: str
    #: Uncommitted changes under services/, mesh/ or stack/ when the run started.
    tree_dirty: bool
    database: str
    replicas: int
    cores: int
    options: dict[str, Any]
    definitions: dict[str, str]
    stack_start_seconds: float = 0.0
    #: The stack with no traffic at all: what each process spends on its own (CPU ms/s).
    idle: CpuFigures | None = None
    echo: EchoFigures | None = None
    steps: list[StepFigures] = field(default_factory=list)
    soak: SoakFigures | None = None
    #: The reference call again after the soak: the machine's own drift over the soak (a
    #: shared machine slows down and speeds up; the soak's trend is only ours net of it).
    echo_after: EchoFigures | None = None
    footprint: dict[str, Any] = field(default_factory=dict)
    total_seconds: float = 0.0
