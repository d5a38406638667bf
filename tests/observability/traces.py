"""Reading traces back from what the OTLP receiver got: trees, parents, who took part."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from tests.support.otlp import ReceivedSpan


def by_trace(spans: Iterable[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    traces: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return dict(traces)


def traces_of_order(spans: Iterable[ReceivedSpan], order_id: str) -> dict[str, list[ReceivedSpan]]:
    """The traces in which some span names the order (the event spans carry its id)."""
    traces = by_trace(spans)
    return {
        trace_id: members
        for trace_id, members in traces.items()
        if any(s.attributes.get("phoneseller.order_id") == order_id for s in members)
    }


def orphans(trace: Sequence[ReceivedSpan]) -> list[ReceivedSpan]:
    """Spans whose parent is not in the trace (the root, with no parent, is not one)."""
    ids = {span.span_id for span in trace}
    return [span for span in trace if span.parent_span_id and span.parent_span_id not in ids]


def roots(trace: Sequence[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in trace if not span.parent_span_id]


def label(span: ReceivedSpan) -> str:
    return f"{span.service}: {span.name} [{span.kind}]"


def tree(trace: Sequence[ReceivedSpan], *, skip_statements: bool = True) -> str:
    """The trace as an indented tree, children in start order (database statements left out
    by default, or the tree is mostly SELECTs)."""
    children: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in trace:
        children[span.parent_span_id].append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_ns)
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        kids = children.get(span.span_id, [])
        statements = [
            k for k in kids if "db.system.name" in k.attributes or "db.system" in k.attributes
        ]
        suffix = f"  (+{len(statements)} SQL)" if skip_statements and statements else ""
        lines.append("  " * depth + label(span) + suffix)
        for kid in kids:
            if skip_statements and kid in statements:
                continue
            walk(kid, depth + 1)

    for root in sorted(roots(trace), key=lambda s: s.start_ns):
        walk(root, 0)
    return "\n".join(lines)
