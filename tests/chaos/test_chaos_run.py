"""The short `make chaos` of `make test`: the real stack, every fault kind once, zero violations.

The same run as `make chaos` (chaos/run.py), only shorter and lighter: two replicas of each
service, promotion and store on PostgreSQL behind the TCP proxy, careful clients signed in
through the gateway, and the schedule of every fault kind: kill -9 of a replica, of Envoy and
of nats-server; promotion slow and failing through the mesh; NATS stopped; PostgreSQL cut; a
poison event. Then the checker holds the history against the end state. When this test
fails, report.txt, history.jsonl, timeline.png and the stack's logs are in the test's folder
(pytest prints it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chaos.faults import FaultKind
from chaos.history import Kind, Outcome
from chaos.run import ChaosOptions, run_chaos
from tests.support.postgres import require_postgres

pytestmark = pytest.mark.slow

#: Short holds and gaps: each kind once, in about 60–90 s of load on 2 busy cores. The load
#: runs on until every kind has had its turn (run_schedule), so a slow machine stretches the
#: run rather than dropping a fault.
CI_OPTIONS = ChaosOptions(
    clients=6,
    duration=60.0,
    hold=3.0,
    gap=2.0,
    warmup=3.0,
    tail=5.0,
    operation_deadline=30.0,
    settle_timeout=150.0,
    postgres=True,
)


# Set-up (~15 s), the load (~60–90 s), settling and the check (~10–30 s), `down` (~10 s).
@pytest.mark.timeout(420)
def test_a_short_chaos_run_violates_no_invariant_and_injects_every_fault(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require_postgres(request)  # postgres-down is one of the kinds: CI has the server
    result = run_chaos(dataclasses.replace(CI_OPTIONS, out=tmp_path / "chaos"), print)
    summary = result.report
    table = (result.folder / "report.txt").read_text()
    assert result.verdict.ok, table

    injected = {r.kind for r in result.faults}
    assert injected == set(FaultKind), table
    problems = [f"{r.kind.value}: {r.problem}" for r in result.faults if r.problem]
    assert not problems, table
    # Every fault healed and the system recovered from it (a time for each).
    assert all(r.recovered is not None for r in result.faults), summary["fault_log"]
    # The mesh faults reached the calls: attempts failed while they held, and were retried.
    assert summary["failed_attempts"], table

    # Orders were placed and cancelled, and each acknowledged one was checked.
    placed = [op for op in result.history if op.kind is Kind.PLACE and op.outcome is Outcome.OK]
    cancelled = [op for op in result.history if op.kind is Kind.CANCEL and op.outcome is Outcome.OK]
    assert placed and cancelled, table
    checked = {i["key"]: i["checked"] for i in summary["invariants"]}
    assert checked["acknowledged"] >= len(placed), summary["invariants"]
    assert summary["convergence"]["settled_at"] is not None, table

    # The report's three forms are there: the table, the JSON, the timeline.
    assert json.loads((result.folder / "report.json").read_text())["violations"] == 0
    assert (result.folder / "timeline.png").stat().st_size > 0
    assert len((result.folder / "history.jsonl").read_text().splitlines()) == len(result.history)
