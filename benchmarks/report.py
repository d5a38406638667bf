"""The saga benchmark's output: markdown tables (padded, so they read in a terminal and paste
into an issue as they are), the JSON of every figure, and a PNG plot."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only (must precede pyplot)

import matplotlib.pyplot as plt

from benchmarks.figures import (
    CpuFigures,
    EchoFigures,
    ErrorRow,
    MinuteFigures,
    Percentiles,
    RunFigures,
    SoakFigures,
    StepFigures,
)
from benchmarks.traffic import Sweep

DASH = "–"


# --- numbers ------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """Milliseconds to about three significant figures, as the histogram keeps them."""
    if value is None or math.isnan(value):
        return DASH
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def size(count: int) -> str:
    """Bytes in MiB (KiB when small)."""
    if count < 1 << 20:
        return f"{count / 1024:.0f} KiB"
    return f"{count / (1 << 20):,.1f} MiB"


def spread(p: Percentiles, *, full: bool = True) -> str:
    """p50/p90/p99/max (or p50/p99) in ms."""
    values = (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms) if full else (p.p50_ms, p.p99_ms)
    return "/".join(ms(v) for v in values) if p.count else DASH


#: A cell of figures (right-aligned): digits and their punctuation, maybe a size unit.
FIGURE = re.compile(r"[\d.,/()+%×–\s-]*( [KM]iB)?")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns: figures right-aligned, words left-aligned."""
    columns = list(zip(headers, *rows, strict=True))
    widths = [max(len(cell) for cell in column) for column in columns]
    right = [
        bool(rows) and all(FIGURE.fullmatch(cell) for cell in column[1:]) for column in columns
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if is_right else cell.ljust(width)
            for cell, width, is_right in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if is_right else ":" + "-" * (w + 1)
            for w, is_right in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


# --- tables -------------------------------------------------------------------------------


def ladder_table(steps: Sequence[StepFigures]) -> str:
    headers = [
        "clients",
        "orders/s",
        "sagas/s",
        "PlaceOrder p50/p90/p99/max ms",
        "CancelOrder p50/p90/p99/max ms",
        "saga p50/p99 ms (n)",
        "unsettled",
        "diverged",
        "errors",
        "CPU ms/saga",
        "× echo",
    ]
    rows = [
        [
            str(s.clients),
            rate(s.orders_per_second),
            rate(s.sagas_per_second),
            spread(s.place),
            spread(s.cancel),
            f"{spread(s.saga, full=False)} ({s.saga.count})",
            str(s.sweep.unsettled + s.sweep.missing),
            str(s.sweep.diverged),
            f"{s.error_count:,}",
            ms(s.cpu_ms_per_saga_total),
            f"{s.echo_ratio:,.0f}" if s.echo_ratio else DASH,
        ]
        for s in steps
    ]
    return markdown_table(headers, rows)


@dataclass(frozen=True)
class CpuColumn:
    """One column of the CPU table: a figure per process, the total, the bench client and the
    machine's other processes."""

    title: str
    processes: dict[str, float | None]
    total: float | None
    client: float | None
    other: float | None


def _per(seconds: float, count: float, unit: float) -> float | None:
    return seconds * unit / count if count else None


def cpu_columns(run: RunFigures) -> list[CpuColumn]:
    """ms per completed saga per step, µs per echo call, ms per second of the idle stack."""
    columns = [
        CpuColumn(
            f"{s.clients} clients",
            s.cpu_ms_per_saga,
            s.cpu_ms_per_saga_total,
            _per(s.cpu.client_seconds, s.sweep.completed, 1e3),
            _per(s.cpu.other_seconds, s.sweep.completed, 1e3),
        )
        for s in run.steps
    ]
    if run.echo:
        echo = run.echo
        columns.append(
            CpuColumn(
                "echo µs/call",
                echo.cpu.per(echo.calls, 1e6),
                echo.cpu_us_per_call_all_processes,
                _per(echo.cpu.client_seconds, echo.calls, 1e6),
                _per(echo.cpu.other_seconds, echo.calls, 1e6),
            )
        )
    if run.idle:
        idle = run.idle
        columns.append(
            CpuColumn(
                "idle ms/s",
                {n: _per(s, idle.wall_seconds, 1e3) for n, s in idle.seconds.items()},
                _per(idle.total_seconds, idle.wall_seconds, 1e3),
                _per(idle.client_seconds, idle.wall_seconds, 1e3),
                _per(idle.other_seconds, idle.wall_seconds, 1e3),
            )
        )
    return columns


def cpu_table(run: RunFigures) -> str:
    columns = cpu_columns(run)
    names = list(columns[0].processes) if columns else []
    rows = [[name, *(ms(c.processes.get(name)) for c in columns)] for name in names]
    rows.append(["**total**", *(ms(c.total) for c in columns)])
    rows.append(["(bench client)", *(ms(c.client) for c in columns)])
    rows.append(["(other processes)", *(ms(c.other) for c in columns)])
    return markdown_table(["process", *(c.title for c in columns)], rows)


def idle_line(idle: CpuFigures) -> str:
    busiest = sorted(idle.seconds.items(), key=lambda item: -item[1])[:3]
    return (
        f"idle stack: {idle.total_seconds * 1e3 / idle.wall_seconds:.0f} ms CPU per second ("
        + ", ".join(f"{name} {s * 1e3 / idle.wall_seconds:.0f}" for name, s in busiest)
        + f"); {machine(idle)}"
    )


def errors_table(labelled: Sequence[tuple[str, Sequence[ErrorRow]]]) -> str:
    rows = [
        [label, e.method, e.code, e.reason, f"{e.count:,}", e.example[:70]]
        for label, errors in labelled
        for e in errors
    ]
    if not rows:
        return "no errors"
    return markdown_table(["step", "call", "code", "reason", "count", "first message"], rows)


def echo_line(echo: EchoFigures) -> str:
    return (
        f"echo (grpc.health.v1.Health/Check through the gateway, {echo.clients} in flight, "
        f"{echo.seconds:.0f} s): {rate(echo.calls_per_second)} calls/s, "
        f"p50/p99 {ms(echo.latency.p50_ms)}/{ms(echo.latency.p99_ms)} ms, "
        f"CPU {ms(echo.cpu_us_per_call)} µs/call ({' + '.join(echo.answering)}; "
        f"{ms(echo.cpu_us_per_call_all_processes)} µs/call over all processes), "
        f"{sum(e.count for e in echo.errors):,} errors; {machine(echo.cpu)}"
    )


def step_line(step: StepFigures) -> str:
    """One step's headline, printed as soon as it is measured."""
    ratio = f", {step.echo_ratio:,.0f}× echo" if step.echo_ratio else ""
    unsettled = step.sweep.unsettled + step.sweep.missing
    return (
        f"{step.clients:>3} clients: {rate(step.orders_per_second)} orders/s, "
        f"{rate(step.sagas_per_second)} sagas/s; PlaceOrder p50/p99 "
        f"{ms(step.place.p50_ms)}/{ms(step.place.p99_ms)} ms; saga p50/p99 "
        f"{ms(step.saga.p50_ms)}/{ms(step.saga.p99_ms)} ms; {step.error_count:,} errors; "
        f"CPU {ms(step.cpu_ms_per_saga_total)} ms/saga{ratio}; drained in "
        f"{step.drain_seconds:.1f}s, {unsettled:,} unsettled, {step.sweep.diverged:,} diverged; "
        f"{machine(step.cpu)}"
        + (f"; RESTARTED: {', '.join(step.cpu.restarted)}" if step.cpu.restarted else "")
    )


def machine(cpu: CpuFigures) -> str:
    """How busy the shared machine was, and how much of that was not ours."""
    other = cpu.other_seconds / max(cpu.wall_seconds, 1e-9)
    return f"machine {cpu.busy_cores:.2f} of {cpu.cores} cores busy ({other:.2f} not ours)"


def minute_line(m: MinuteFigures) -> str:
    """A soak minute as it ends (its sagas are counted after the soak)."""
    databases = m.footprint["databases"]
    per_database = " · ".join(
        f"{service} {size(d['bytes'])} "
        + "/".join(
            DASH if d["rows"].get(t) is None else f"{d['rows'][t]:,}"
            for t in ("outbox", "outbox_unpublished", "inbox", "dead_letters")
        )
        for service, d in databases.items()
    )
    return (
        f"minute {m.minute}: {rate(m.orders_per_second)} orders/s, PlaceOrder p50/p99 "
        f"{ms(m.place.p50_ms)}/{ms(m.place.p99_ms)} ms, saga p50/p99 "
        f"{ms(m.saga.p50_ms)}/{ms(m.saga.p99_ms)} ms, {m.error_count:,} errors, "
        f"CPU {ms(m.cpu_ms_per_paid_order)} ms/order, JetStream "
        f"{size(m.footprint['jetstream_bytes'])}, {machine(m.cpu)}"
        + (f", RESTARTED: {', '.join(m.cpu.restarted)}" if m.cpu.restarted else "")
        + f"\n  size outbox/unpublished/inbox/dead_letters: {per_database}"
    )


def soak_table(soak: SoakFigures) -> str:
    headers = [
        "minute",
        "orders/s",
        "sagas/s",
        "PlaceOrder p50/p99 ms",
        "saga p50/p99 ms (n)",
        "unsettled",
        "diverged",
        "errors",
        "CPU ms/order",
        "databases",
        "JetStream",
        "outbox (unpub.)",
        "inbox",
        "dead letters",
    ]
    return markdown_table(headers, [_soak_row(m) for m in soak.minutes])


def _soak_row(m: MinuteFigures) -> list[str]:
    footprint = m.footprint
    rows = {
        table: sum((d["rows"].get(table) or 0) for d in footprint["databases"].values())
        for table in ("outbox", "outbox_unpublished", "inbox", "dead_letters")
    }
    return [
        str(m.minute),
        rate(m.orders_per_second),
        rate(m.sagas_per_second),
        spread(m.place, full=False),
        f"{spread(m.saga, full=False)} ({m.saga.count})",
        str(m.sweep.unsettled + m.sweep.missing),
        str(m.sweep.diverged),
        f"{m.error_count:,}",
        ms(m.cpu_ms_per_paid_order),
        size(footprint["database_bytes"]),
        size(footprint["jetstream_bytes"]),
        f"{rows['outbox']:,} ({rows['outbox_unpublished']:,})",
        f"{rows['inbox']:,}",
        f"{rows['dead_letters']:,}",
    ]


def footprint_table(footprint: dict[str, object]) -> str:
    """Size and kit rows per service database."""
    databases = footprint.get("databases")
    if not isinstance(databases, dict):
        return ""
    rows = []
    for service, database in databases.items():
        counts = database["rows"]
        rows.append(
            [
                service,
                size(database["bytes"]),
                *(
                    DASH if counts.get(t) is None else f"{counts[t]:,}"
                    for t in ("outbox", "outbox_unpublished", "inbox", "dead_letters")
                ),
            ]
        )
    headers = ["database", "size", "outbox", "unpublished", "inbox", "dead letters"]
    return markdown_table(headers, rows)


#: Other work on the machine, in cores, above which a run says its figures are pessimistic.
NOISY_CORES = 0.25


def noise_warning(run: RunFigures) -> str:
    """Say so when other processes took a noticeable share of the machine's cores."""
    measured = [("idle", run.idle)] if run.idle else []
    measured += [("echo", run.echo.cpu)] if run.echo else []
    measured += [(f"{s.clients} clients", s.cpu) for s in run.steps]
    measured += [(f"minute {m.minute}", m.cpu) for m in run.soak.minutes] if run.soak else []
    noisy = [
        f"{label} {cpu.other_seconds / cpu.wall_seconds:.2f}"
        for label, cpu in measured
        if cpu.wall_seconds and cpu.other_seconds / cpu.wall_seconds > NOISY_CORES
    ]
    if not noisy:
        return ""
    return (
        "NOTE: other processes on this shared machine took cores during the run, so rates "
        f"and latencies are pessimistic (cores not ours: {', '.join(noisy)})"
    )


def stuck_lines(labelled: Sequence[tuple[str, Sweep]]) -> str:
    """The sagas that had not settled by the end of the drain, as the view showed them."""
    lines = [
        f"- {label}: {description}" for label, sweep in labelled for description in sweep.stuck
    ]
    if not lines:
        return ""
    return "diverged or not settled after the drain (first few):\n" + "\n".join(lines)


def soak_verdict(soak: SoakFigures) -> str:
    verdict = "within" if soak.within_10_percent else "NOT within"
    return (
        f"last minute {rate(soak.last_paid_per_second)} paid orders/s vs first "
        f"{rate(soak.first_paid_per_second)}: {soak.change:+.1%}, {verdict} 10 % of the first"
    )


def machine_drift(run: RunFigures) -> str:
    """The soak's trend beside the machine's: CPU per paid order against CPU per reference
    call, each from before (first minute) to after (last minute)."""
    soak, before, after = run.soak, run.echo, run.echo_after
    if not (soak and soak.minutes and before and after):
        return ""
    if not (before.cpu_us_per_call and after.cpu_us_per_call):
        return ""
    first, last = soak.minutes[0].cpu_ms_per_paid_order, soak.minutes[-1].cpu_ms_per_paid_order
    if not (first and last):
        return ""
    machine = after.cpu_us_per_call / before.cpu_us_per_call - 1
    ours = last / first - 1
    net = (1 + ours) / (1 + machine) - 1
    return (
        f"machine drift: the reference call cost {before.cpu_us_per_call:,.0f} µs of CPU before "
        f"the soak and {after.cpu_us_per_call:,.0f} after ({machine:+.1%}); CPU per paid order "
        f"went {first:.2f} -> {last:.2f} ms ({ours:+.1%}): {net:+.1%} net of the machine"
    )


def summary(run: RunFigures) -> str:
    """Every table of the run, as markdown."""
    title = (
        f"### make bench · {run.database} · {run.replicas} replica(s) · commit {run.commit}"
        f"{' + uncommitted changes' if run.tree_dirty else ''} · {run.cores} cores · "
        f"{run.started_utc}"
    )
    parts = [title]
    if run.steps:
        parts += [ladder_table(run.steps)]
    if run.echo:
        parts += [echo_line(run.echo)]
    if run.steps:
        parts += [
            "CPU by process: ms per completed saga at each client count, µs per echo call, "
            "ms per second of the idle stack; (other processes) is the rest of the shared "
            "machine meanwhile, in the same unit:",
            cpu_table(run),
        ]
        parts += [
            "errors:",
            errors_table([(f"{s.clients} clients", s.errors) for s in run.steps]),
        ]
        parts += [stuck_lines([(f"{s.clients} clients", s.sweep) for s in run.steps])]
        restarted = sorted({name for s in run.steps for name in s.cpu.restarted})
        if restarted:
            parts.append(f"RESTARTED during the run (their CPU is wrong): {', '.join(restarted)}")
    if run.soak:
        parts += [
            f"soak: {run.soak.clients} clients, {len(run.soak.minutes)} minute(s); sizes and "
            "rows at the end of each minute, summed over the services:",
            soak_table(run.soak),
            soak_verdict(run.soak),
            machine_drift(run),
            "errors:",
            errors_table([(f"minute {m.minute}", m.errors) for m in run.soak.minutes]),
            stuck_lines([(f"minute {m.minute}", m.sweep) for m in run.soak.minutes]),
        ]
    if run.footprint:
        parts += [
            f"at the end: JetStream store {size(int(run.footprint['jetstream_bytes']))}",
            footprint_table(run.footprint),
        ]
    parts.append(noise_warning(run))
    parts.append(
        f"whole run {run.total_seconds:.0f} s (stack start {run.stack_start_seconds:.0f} s)"
    )
    return "\n\n".join(part for part in parts if part)


# --- files --------------------------------------------------------------------------------


def write_json(run: RunFigures, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(run), indent=2, default=str) + "\n")


#: The latency plot's lines: label, the figure it shows, matplotlib's line style.
LATENCY_SERIES: list[tuple[str, Callable[[StepFigures], float | None], str]] = [
    ("PlaceOrder p50", lambda s: s.place.p50_ms, "o-"),
    ("PlaceOrder p99", lambda s: s.place.p99_ms, "o:"),
    ("CancelOrder p50", lambda s: s.cancel.p50_ms, "^-"),
    ("CancelOrder p99", lambda s: s.cancel.p99_ms, "^:"),
    ("saga p50 (sample)", lambda s: s.saga.p50_ms, "s-"),
    ("saga p99 (sample)", lambda s: s.saga.p99_ms, "s:"),
]


def plot_ladder(run: RunFigures, path: Path) -> None:
    """Throughput, latency and CPU per saga against the number of clients."""
    steps = run.steps
    x = [s.clients for s in steps]
    figure, (throughput, latency, cpu) = plt.subplots(1, 3, figsize=(16, 4.8))
    figure.suptitle(f"make bench · {run.database} · {run.replicas} replica(s) · {run.commit}")

    throughput.plot(x, [s.orders_per_second for s in steps], "o-", label="orders/s")
    throughput.plot(x, [s.sagas_per_second for s in steps], "s--", label="completed sagas/s")
    throughput.set(title="throughput", xlabel="clients (in flight)", ylabel="per second")
    throughput.set_ylim(bottom=0)

    for label, pick, style in LATENCY_SERIES:
        values = [pick(s) for s in steps]
        latency.plot(x, [math.nan if v is None else v for v in values], style, label=label)
    latency.set(title="latency", xlabel="clients (in flight)", ylabel="ms", yscale="log")

    names = list(steps[0].cpu.seconds) if steps else []
    bottom = [0.0] * len(steps)
    positions = range(len(steps))
    for name in names:
        heights = [s.cpu_ms_per_saga.get(name) or 0.0 for s in steps]
        cpu.bar(positions, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    cpu.set_xticks(list(positions), [str(c) for c in x])
    cpu.set(title="CPU per completed saga", xlabel="clients (in flight)", ylabel="ms")

    for axes in (throughput, latency):
        axes.set_xscale("log", base=2)
        axes.set_xticks(x, [str(c) for c in x])
    for axes in (throughput, latency, cpu):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_soak(run: RunFigures, path: Path) -> None:
    """Throughput and what the stack keeps on disk, per minute of the soak."""
    assert run.soak is not None
    minutes = run.soak.minutes
    x = [m.minute for m in minutes]
    figure, (throughput, disk) = plt.subplots(1, 2, figsize=(12, 4.8))
    figure.suptitle(
        f"make bench --soak · {run.database} · {run.soak.clients} clients · {run.commit}"
    )
    throughput.plot(x, [m.orders_per_second for m in minutes], "o-", label="orders/s")
    throughput.plot(x, [m.sagas_per_second for m in minutes], "s--", label="completed sagas/s")
    throughput.set(title="throughput", xlabel="minute", ylabel="per second", ylim=(0, None))
    mib = 1 << 20
    disk.plot(x, [m.footprint["database_bytes"] / mib for m in minutes], "o-", label="databases")
    disk.plot(x, [m.footprint["jetstream_bytes"] / mib for m in minutes], "s-", label="JetStream")
    disk.set(title="on disk", xlabel="minute", ylabel="MiB")
    for axes in (throughput, disk):
        axes.set_xticks(x)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
