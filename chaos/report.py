"""The report of a run: figures as JSON, the same as a table for the terminal, and a PNG
timeline of throughput and latency per second with the faults marked on it."""

from __future__ import annotations

import enum
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only (must precede pyplot)

import matplotlib.pyplot as plt

from chaos.checker import Verdict
from chaos.faults import FaultKind, FaultRecord
from chaos.history import Kind, Operation, Outcome
from chaos.state import EndState

if TYPE_CHECKING:
    from chaos.clients import Tally
    from chaos.run import Timings

#: The breaker counts of a mesh fault, in the faults table's order.
BREAKER_ORDER = ("refused", "ejected", "retried")
#: Violations shown per invariant on the terminal (report.json has every one).
EXAMPLES_SHOWN = 5
FAULT_COLOURS = {
    FaultKind.KILL_REPLICA: "tab:red",
    FaultKind.KILL_ENVOY: "tab:purple",
    FaultKind.KILL_NATS: "tab:brown",
    FaultKind.PROMOTION_SLOW: "tab:orange",
    FaultKind.PROMOTION_FAILING: "gold",
    FaultKind.NATS_DOWN: "tab:cyan",
    FaultKind.POSTGRES_DOWN: "tab:blue",
    FaultKind.POISON: "tab:gray",
}


def plain(value: Any) -> Any:
    """A value as JSON holds it (paths and enums as text, sequences as lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: plain(v) for k, v in vars(value).items()}
    return value


def percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(math.ceil(share * len(ordered)) - 1, len(ordered) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- the figures --------------------------------------------------------------------------


def build(
    meta: dict[str, Any],
    history: Sequence[Operation],
    faults: Sequence[FaultRecord],
    state: EndState,
    verdict: Verdict,
    timings: Timings,
    poison: Mapping[str, frozenset[str]],
) -> dict[str, Any]:
    load_seconds = max(timings.load_ended, 1e-9)
    operations: dict[str, dict[str, Any]] = {}
    for kind in Kind:
        mine = [op for op in history if op.kind is kind]
        latencies = [op.latency for op in mine if op.outcome is Outcome.OK and op.latency]
        outcomes = Counter(op.outcome.value for op in mine)
        operations[kind.value] = {
            "invoked": len(mine),
            **{o.value: outcomes[o.value] for o in Outcome},
            "retried": sum(1 for op in mine if op.attempts),
            "p50_ms": ms(percentile(latencies, 0.5)),
            "p99_ms": ms(percentile(latencies, 0.99)),
            "max_ms": ms(max(latencies, default=None)),
        }
    attempts: Counter[tuple[str, str, str]] = Counter(
        (op.kind.value, a.code, a.reason) for op in history for a in op.attempts
    )
    visible: Counter[tuple[str, str, str, str]] = Counter(
        (op.kind.value, op.outcome.value, op.code, op.reason)
        for op in history
        if op.outcome is not Outcome.OK
    )
    by_kind: dict[str, list[FaultRecord]] = defaultdict(list)
    for record in faults:
        by_kind[record.kind.value].append(record)
    settled, last_fault = timings.settled, timings.last_fault_end
    return {
        **meta,
        "stack_start_seconds": round(timings.stack_start, 1),
        "load_seconds": round(timings.load_stopped, 1),
        "orders_per_second": round(operations["place"]["ok"] / load_seconds, 1),
        "operations": operations,
        "orders": dict(Counter(o.status for o in state.orders.values()).most_common()),
        "faults": {
            kind: {
                "count": len(records),
                "held_seconds": round(sum((r.healed or r.started) - r.started for r in records), 1),
                "longest_recovery_seconds": round(max(r.end - r.started for r in records), 1),
                "problems": [r.problem for r in records if r.problem],
                # What the breakers in front of promotion did while a mesh fault held.
                "breaker": dict(sum((Counter(r.breaker) for r in records), Counter())),
            }
            for kind, records in sorted(by_kind.items())
        },
        "fault_log": [r.to_json() for r in faults],
        "poison_events": {k: sorted(v) for k, v in poison.items()},
        "failed_attempts": [
            {"operation": k, "code": c, "reason": r, "count": n}
            for (k, c, r), n in attempts.most_common()
        ],
        "client_visible_failures": [
            {"operation": k, "outcome": o, "code": c, "reason": r, "count": n}
            for (k, o, c, r), n in visible.most_common()
        ],
        "invariants": verdict.as_json(),
        "violations": verdict.violations,
        "convergence": {
            "last_fault_ended_at": timings.last_fault_end,
            "load_stopped_at": round(timings.load_stopped, 1),
            "settled_at": None if settled is None else round(settled, 1),
            "seconds_after_last_fault": None
            if settled is None or last_fault is None
            else round(settled - last_fault, 1),
            "seconds_after_load_stopped": None
            if settled is None
            else round(settled - timings.load_stopped, 1),
            "checks": timings.checks,
        },
        "timeline": per_second(history),
    }


def per_second(history: Sequence[Operation]) -> list[dict[str, Any]]:
    """Per second of the load: calls answered, failed attempts, latency of the answered."""
    ok: dict[int, Counter[str]] = defaultdict(Counter)
    latencies: dict[int, list[float]] = defaultdict(list)
    failed: Counter[int] = Counter()
    for op in history:
        for attempt in op.attempts:
            failed[int(attempt.at)] += 1
        if op.outcome is Outcome.OK and op.completed is not None and op.latency is not None:
            second = int(op.completed)
            ok[second][op.kind.value] += 1
            if op.kind is not Kind.BALANCE:
                latencies[second].append(op.latency)
    end = max([*ok, *failed], default=-1) + 1
    return [
        {
            "second": s,
            "place": ok[s]["place"],
            "cancel": ok[s]["cancel"],
            "failed_attempts": failed[s],
            "p50_ms": ms(percentile(latencies[s], 0.5)),
            "p99_ms": ms(percentile(latencies[s], 0.99)),
            "max_ms": ms(max(latencies[s], default=None)),
        }
        for s in range(end)
    ]


# --- the terminal -------------------------------------------------------------------------


def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Mapping):  # breaker counts: "" where no breaker was watched
        return "/".join(number(value.get(k, 0)) for k in BREAKER_ORDER) if value else ""
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def grid(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    """A padded table: the first `left` columns aligned left, the rest right."""
    cells = [list(header), *([number(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


#: (header, key) of the operations table; key None is the operation's name.
OPERATION_COLUMNS = (
    ("operation", None),
    ("invoked", "invoked"),
    ("ok", "ok"),
    ("failed", "failed"),
    ("unknown", "unknown"),
    ("retried", "retried"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
)
FAULT_COLUMNS = (
    ("fault", None),
    ("injected", "count"),
    ("held s (all)", "held_seconds"),
    ("longest recovery s", "longest_recovery_seconds"),
    ("breakers: refused/ejected/retried", "breaker"),
)


def keyed(columns: Sequence[tuple[str, str | None]], items: Mapping[str, Any]) -> str:
    """A table of a mapping of name → figures, with the columns given."""
    return grid(
        [header for header, _ in columns],
        [[name if key is None else row[key] for _, key in columns] for name, row in items.items()],
    )


def counted(title: str, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    if not rows:
        return f"{title}: none"
    body = grid([*fields, "count"], [[r[f] for f in [*fields, "count"]] for r in rows], len(fields))
    return f"{title}:\n{body}"


def table(report: dict[str, Any]) -> str:
    options = report["options"]
    parts = [
        f"make chaos · {report['replicas']} replica(s) · {report['database']} · "
        f"{options['clients']} clients · {report['load_seconds']:g}s of load · seed "
        f"{options['seed']} · commit {report['commit']}"
        f"{' (+ uncommitted changes)' if report['tree_dirty'] else ''} · {report['cores']} cores",
        keyed(OPERATION_COLUMNS, report["operations"]),
        "orders at the end: "
        + (" · ".join(f"{status} {number(n)}" for status, n in report["orders"].items()) or "none")
        + f"\nthroughput: {number(report['orders_per_second'])} orders/s answered over the load",
        keyed(FAULT_COLUMNS, report["faults"]) if report["faults"] else "faults: none injected",
    ]
    problems = [p for f in report["faults"].values() for p in f["problems"]]
    if problems:
        parts.append("faults that did not go as planned:\n" + "\n".join(f"  {p}" for p in problems))
    parts.append(
        counted(
            "failed attempts (each retried, or the operation's last)",
            report["failed_attempts"],
            ("operation", "code", "reason"),
        )
    )
    parts.append(
        counted(
            "client-visible failures (after the client's retries)",
            report["client_visible_failures"],
            ("operation", "outcome", "code", "reason"),
        )
    )
    invariants = report["invariants"]
    parts.append(
        grid(
            ["invariant", "checked", "violations"],
            [[i["invariant"], i["checked"], i["violations"]] for i in invariants],
        )
    )
    for invariant in invariants:
        if invariant["violations"]:
            shown = invariant["examples"][:EXAMPLES_SHOWN]
            parts.append(
                f"VIOLATED: {invariant['invariant']} ({invariant['violations']}), e.g.:\n"
                + "\n".join(f"  {v['subject']}: {v['message']}" for v in shown)
            )
    parts.append(convergence_line(report["convergence"]))
    verdict = (
        "OK: no invariant violated"
        if not report["violations"]
        else f"FAILED: {report['violations']} violation(s)"
    )
    parts.append(f"{verdict}\nresults: {report['folder']}")
    return "\n\n".join(parts)


def convergence_line(c: Mapping[str, Any]) -> str:
    if c["settled_at"] is None:
        return f"convergence: none — the checks still failed after {c['checks']} attempt(s)"
    after_fault = c["seconds_after_last_fault"]
    return (
        f"convergence: settled and checked clean {c['seconds_after_load_stopped']:g}s after the "
        f"load stopped"
        + (f", {after_fault:g}s after the last fault ended" if after_fault is not None else "")
    )


def progress_line(now: float, rate: float, tally: Tally, fault: FaultRecord | None) -> str:
    counts = " · ".join(
        f"{kind.value} " + "/".join(number(tally.ended[kind, outcome]) for outcome in Outcome)
        for kind in Kind
    )
    current = f" · fault: {fault.kind.value} {fault.target}" if fault else ""
    return (
        f"[{now:6.1f}s] {rate:5.1f} ops/s · {counts} (ok/failed/unknown) · "
        f"{number(tally.failed_attempts)} failed attempts{current}"
    )


# --- the files ----------------------------------------------------------------------------


def write(
    report: dict[str, Any],
    history: Sequence[Operation],
    faults: Sequence[FaultRecord],
    timings: Timings,
    folder: Path,
) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.txt").write_text(table(report) + "\n")
    plot_timeline(report, faults, timings, folder / "timeline.png")


def plot_timeline(
    report: Mapping[str, Any], faults: Sequence[FaultRecord], timings: Timings, path: Path
) -> None:
    seconds = report["timeline"]
    x = [s["second"] + 0.5 for s in seconds]
    figure, (throughput, latency, failures) = plt.subplots(
        3, 1, figsize=(14, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    figure.suptitle(
        f"make chaos · {report['replicas']} replica(s) · {report['database']} · "
        f"{report['options']['clients']} clients · commit {report['commit']} · "
        f"{report['violations']} violation(s)"
    )
    throughput.plot(x, [s["place"] for s in seconds], label="PlaceOrder answered/s", lw=1)
    throughput.plot(x, [s["cancel"] for s in seconds], label="CancelOrder answered/s", lw=1)
    throughput.set(ylabel="per second", ylim=(0, None))
    for key, style in (("p50_ms", "-"), ("p99_ms", "--"), ("max_ms", ":")):
        values = [math.nan if s[key] is None else s[key] for s in seconds]
        latency.plot(
            x, values, style, lw=1, label=f"{key.removesuffix('_ms')} (answered, retries included)"
        )
    latency.set(ylabel="ms", yscale="log")
    failures.bar(x, [s["failed_attempts"] for s in seconds], width=1.0, label="failed attempts/s")
    failures.set(ylabel="per second", xlabel="seconds since the load started")
    shown: set[FaultKind] = set()
    for record in faults:
        colour = FAULT_COLOURS[record.kind]
        end = max(record.end, record.started + 0.5)
        for axes in (throughput, latency, failures):
            axes.axvspan(
                record.started,
                end,
                color=colour,
                alpha=0.25,
                label=record.kind.value if axes is failures and record.kind not in shown else None,
            )
        shown.add(record.kind)
        throughput.annotate(
            record.kind.value,
            (record.started, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            fontsize="x-small",
        )
    for axes in (throughput, latency, failures):
        axes.axvline(timings.load_stopped, color="black", lw=0.8, ls="--")
        axes.grid(alpha=0.3)
    throughput.legend(fontsize="small", loc="lower left")
    latency.legend(fontsize="small", loc="upper left")
    failures.legend(fontsize="x-small", loc="upper left", ncol=5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
