"""The faults, and the schedule that injects them one after the other while the load runs.

- kill-replica: `kill -9` of a random service replica; healed when supervisord runs a new
  one, recovered when it is SERVING and Envoy counts it healthy;
- kill-envoy, kill-nats: `kill -9` of Envoy (the gateway and every sidecar) or of
  nats-server; healed when supervisord runs a new one, recovered when every Envoy cluster has
  its hosts healthy again / NATS accepts connections;
- promotion-slow, promotion-failing: a 1 s delay on every call to promotion, or every call
  aborted UNAVAILABLE, by the mesh's fault injection (Envoy restarts with it, and again
  without it); the breakers in front of promotion then refuse, eject and retry for real, and
  the fault's record keeps Envoy's counters of it;
- nats-down: nats-server stopped (the outboxes must hold) and started again;
- postgres-down: the links of promotion and store to PostgreSQL cut (the TCP proxy), restored;
- poison: an undecodable PayCompleted published to JetStream; every consumer of the type
  must park it in its dead letters and go on.

A fault holds for `hold` seconds (the kills hold for as long as recovery takes); the next one
starts `gap` seconds after the previous has recovered, so each fault meets a system that had
got over the one before and the timeline shows each recovery on its own. Every blocking step
(supervisorctl, the admin API, the proxy) runs in a worker thread: the clients share this
event loop.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import re
import signal
import time
import uuid
import xmlrpc.client
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from phoneseller.payment.v1 import events_pb2 as payment_events
from supervisor.xmlrpc import SupervisorTransport

from chaos.access import connect_nats, nats_access
from mesh.envoy import cluster_name
from mesh.policy import load_policy
from mesh.process import AdminClient
from mesh.topology import Address
from services.kit.config import SERVICE_NAMES
from services.kit.events import CUSTOMER_ID, EVENT_TYPE, MSG_ID, ORDER_ID, subject_for
from stack.supervisor import VALUES, LocalStack
from tests.support.tcp_proxy import TcpProxy

Clock = Callable[[], float]
Say = Callable[[str], None]


class FaultKind(enum.StrEnum):
    KILL_REPLICA = "kill-replica"
    KILL_ENVOY = "kill-envoy"
    KILL_NATS = "kill-nats"
    PROMOTION_SLOW = "promotion-slow"
    PROMOTION_FAILING = "promotion-failing"
    NATS_DOWN = "nats-down"
    POSTGRES_DOWN = "postgres-down"
    POISON = "poison"


#: The mesh faults (Istio HTTPFaultInjection, rendered on promotion's inbound listeners).
SLOW = {"delay": {"fixedDelay": "1s", "percentage": {"value": 100}}}
FAILING = {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}
MESH_FAULTS_SAID = {
    FaultKind.PROMOTION_SLOW: "every call delayed 1s",
    FaultKind.PROMOTION_FAILING: "every call aborted UNAVAILABLE",
}
#: The poison: a PayCompleted whose payload is not protobuf; every consumer of PayCompleted
#: must park it at once and go on.
POISON_TYPE = payment_events.PayCompleted.DESCRIPTOR.full_name
POISON_PAYLOAD = b"\xff\xff\xff\xff not a PayCompleted"
#: Envoy's counters that show a breaker at work (summed over promotion's outbound clusters).
BREAKER_STATS = {
    "refused": ("upstream_rq_pending_overflow", "upstream_rq_active_overflow"),
    "ejected": ("outlier_detection.ejections_enforced_total",),
    "retried": ("upstream_rq_retry",),
}
#: How long recovery may take before the fault is reported as not healed.
RECOVERY_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Planned:
    kind: FaultKind
    hold: float
    #: Seconds since the load started; None: `gap` after the previous fault recovered.
    at: float | None = None


_PLANNED = re.compile(r"^(?P<kind>[a-z-]+)(?:@(?P<at>[\d.]+))?(?:\+(?P<hold>[\d.]+))?$")


def parse_schedule(text: str, default_hold: float) -> list[Planned]:
    """`kill-envoy@20,promotion-slow@40+10,nats-down+5`: kind, earliest start, hold."""
    planned = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _PLANNED.match(part)
        if match is None:
            raise ValueError(f"{part!r}: expected kind[@start][+hold], e.g. nats-down@30+8")
        at, hold = match["at"], match["hold"]
        planned.append(
            Planned(
                FaultKind(match["kind"]),
                float(hold) if hold else default_hold,
                float(at) if at else None,
            )
        )
    return planned


def plan(kinds: Sequence[FaultKind], hold: float, rounds: int, rng: random.Random) -> list[Planned]:
    """`rounds` rounds, each of every kind once in a seeded random order."""
    schedule: list[Planned] = []
    for _ in range(rounds):
        order = list(kinds)
        rng.shuffle(order)
        schedule += [Planned(kind, hold) for kind in order]
    return schedule


@dataclass
class FaultRecord:
    kind: FaultKind
    target: str
    started: float
    healed: float | None = None
    recovered: float | None = None
    detail: str = ""
    #: Envoy's breaker counters at the end of a mesh fault (BREAKER_STATS), else empty.
    breaker: dict[str, int] = field(default_factory=dict)
    #: What went wrong with the fault itself (e.g. a process that did not come back).
    problem: str = ""

    @property
    def end(self) -> float:
        return self.recovered or self.healed or self.started

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data


@dataclass
class Injector:
    """Injects faults into one running stack and heals them; keeps the record of each."""

    stack: LocalStack
    clock: Clock
    rng: random.Random
    #: The TCP proxies between PostgreSQL and the services on it (empty without --postgres).
    proxies: Mapping[str, TcpProxy] = field(default_factory=dict)
    say: Say = print
    records: list[FaultRecord] = field(default_factory=list)
    #: Poison event ids, each with the services that must park it.
    poison: dict[str, frozenset[str]] = field(default_factory=dict)
    _mesh_fault: bool = False
    _nats_stopped: bool = False

    async def inject(self, planned: Planned) -> FaultRecord:
        faults: dict[FaultKind, Callable[[FaultRecord, float], Awaitable[None]]] = {
            FaultKind.KILL_REPLICA: self._kill_replica,
            FaultKind.KILL_ENVOY: self._kill_program,
            FaultKind.KILL_NATS: self._kill_program,
            FaultKind.PROMOTION_SLOW: self._mesh,
            FaultKind.PROMOTION_FAILING: self._mesh,
            FaultKind.NATS_DOWN: self._nats_down,
            FaultKind.POSTGRES_DOWN: self._postgres_down,
            FaultKind.POISON: self._poison,
        }
        record = FaultRecord(planned.kind, target="", started=self.clock())
        self.records.append(record)
        self.say(f"[{record.started:6.1f}s] fault {record.kind.value} begins")
        try:
            await faults[planned.kind](record, planned.hold)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            record.problem = record.problem or f"{type(exc).__name__}: {exc}"
        finally:
            if record.healed is None:
                record.healed = self.clock()
        line = f"fault {record.kind.value} {record.target}: {record.detail}".rstrip(": ")
        if record.breaker:
            line += " (breakers: " + ", ".join(f"{k} {v}" for k, v in record.breaker.items()) + ")"
        took = f"recovered {record.end - record.started:.1f}s after it began"
        self.say(f"[{self.clock():6.1f}s] {line}; {record.problem or took}")
        return record

    async def heal_all(self) -> None:
        """Remove whatever fault is still in place (after an interruption, an error)."""
        if self._mesh_fault:
            await asyncio.to_thread(self.stack.set_fault, "promotion", None)
            self._mesh_fault = False
        if self._nats_stopped:
            await asyncio.to_thread(self.stack.supervisorctl, "start", "nats")
            self._nats_stopped = False
        for proxy in self.proxies.values():
            await asyncio.to_thread(proxy.restore)

    # --- the faults ------------------------------------------------------------------

    async def _kill_replica(self, record: FaultRecord, hold: float) -> None:
        service = self.rng.choice(SERVICE_NAMES)
        replica = self.rng.randrange(self.stack.replicas)
        program = self.stack.program(service, replica)
        record.target = self.stack.replica_name(service, replica)
        await self._kill(record, program)
        name = record.target

        async def replica_serving() -> bool:
            # The stack's own probe: it speaks to a replica however the stack secures it.
            health = await asyncio.to_thread(self.stack.health)
            return health.get(name, False)

        await self._recover(record, replica_serving, "SERVING")
        await self._recover(record, self._mesh_healthy, "healthy in Envoy")

    async def _kill_program(self, record: FaultRecord, hold: float) -> None:
        program = "envoy" if record.kind is FaultKind.KILL_ENVOY else "nats"
        record.target = program
        await self._kill(record, program)
        if program == "nats":
            await self._recover(record, self._nats_up, "accepting connections")
        else:
            await self._recover(record, self._mesh_healthy, "every cluster healthy")

    async def _kill(self, record: FaultRecord, program: str) -> None:
        old = await asyncio.to_thread(supervisor_pid, self.stack, program)
        if not old:
            raise RuntimeError(f"{program} is not running")
        os.kill(old, signal.SIGKILL)
        record.started = self.clock()
        record.detail = f"pid {old}"

        async def restarted() -> bool:
            pid = await asyncio.to_thread(supervisor_pid, self.stack, program)
            if pid in (0, old):
                return False
            record.detail = f"pid {old} → {pid}"
            return True

        await self._recover(record, restarted, "restarted by supervisord", healing=True)

    async def _mesh(self, record: FaultRecord, hold: float) -> None:
        fault = SLOW if record.kind is FaultKind.PROMOTION_SLOW else FAILING
        what = MESH_FAULTS_SAID[record.kind]
        record.target, record.detail = "promotion", f"{what} for {hold:g}s"
        self._mesh_fault = True
        await asyncio.to_thread(self.stack.set_fault, "promotion", fault)
        await self._hold(hold)
        # Read before the fault is lifted: lifting it restarts Envoy, and its counters.
        try:
            record.breaker = await asyncio.to_thread(breaker_counts, self.stack)
        except Exception as exc:  # an admin API that did not answer: say so, go on
            record.breaker = {}
            record.detail += f" (breaker counters unread: {type(exc).__name__})"
        await asyncio.to_thread(self.stack.set_fault, "promotion", None)
        self._mesh_fault = False
        record.healed = self.clock()
        await self._recover(record, self._mesh_healthy, "every cluster healthy")

    async def _nats_down(self, record: FaultRecord, hold: float) -> None:
        record.target, record.detail = "nats", f"stopped for {hold:g}s"
        self._nats_stopped = True
        await asyncio.to_thread(self.stack.supervisorctl, "stop", "nats")
        await self._hold(hold)
        await asyncio.to_thread(self.stack.supervisorctl, "start", "nats")
        self._nats_stopped = False
        record.healed = self.clock()
        await self._recover(record, self._nats_up, "accepting connections")

    async def _postgres_down(self, record: FaultRecord, hold: float) -> None:
        if not self.proxies:
            raise RuntimeError("no service runs on PostgreSQL (--postgres)")
        record.target = "+".join(sorted(self.proxies))
        record.detail = f"links to PostgreSQL cut for {hold:g}s"
        for proxy in self.proxies.values():
            await asyncio.to_thread(proxy.cut)
        await self._hold(hold)
        for proxy in self.proxies.values():
            await asyncio.to_thread(proxy.restore)
        record.healed = record.recovered = self.clock()

    async def _poison(self, record: FaultRecord, hold: float) -> None:
        event_id = f"poison-{uuid.uuid4()}"
        record.target, record.detail = "jetstream", f"{POISON_TYPE} {event_id}"
        client = await connect_nats(nats_access(self.stack))
        try:
            await client.jetstream().publish(
                subject_for(POISON_TYPE),
                POISON_PAYLOAD,
                headers={
                    MSG_ID: event_id,
                    EVENT_TYPE: POISON_TYPE,
                    ORDER_ID: event_id,
                    CUSTOMER_ID: "chaos-poison",
                },
            )
        finally:
            await client.close()
        self.poison[event_id] = consumers_of(POISON_TYPE)
        record.healed = record.recovered = self.clock()

    # --- waiting -----------------------------------------------------------------------

    async def _hold(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _recover(
        self,
        record: FaultRecord,
        probe: Callable[[], Awaitable[bool]],
        what: str,
        *,
        healing: bool = False,
    ) -> None:
        """Wait for `probe`; note when it held (healed or recovered), or that it did not."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if await probe():
                    if healing:
                        record.healed = self.clock()
                    else:
                        record.recovered = self.clock()
                    return
            except Exception:  # not back yet
                pass
            await asyncio.sleep(POLL_SECONDS)
        record.problem = f"not {what} within {RECOVERY_TIMEOUT_SECONDS:.0f}s"
        raise TimeoutError(record.problem)

    async def _nats_up(self) -> bool:
        client = await connect_nats(nats_access(self.stack))
        await client.close()
        return True

    async def _mesh_healthy(self) -> bool:
        return not await asyncio.to_thread(unhealthy_clusters, self.stack)


def supervisor_pid(stack: LocalStack, program: str) -> int:
    """The pid supervisord reports for a program (0 when it is not running).

    Over supervisord's XML-RPC socket: `supervisorctl pid` starts a Python interpreter each
    time, which costs the machine more than a poll should.
    """
    transport = SupervisorTransport(None, None, f"unix://{stack.socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        info: Any = proxy.supervisor.getProcessInfo(program)
    finally:
        transport.close()
    return int(info.get("pid") or 0)


def clawback_cluster() -> str:
    """Payment's sidecar cluster the clawback takes: its route's subset, with its own breaker
    (the chart's values, as the mesh renders them)."""
    route = load_policy(VALUES)["promotion"].route_for("ClawBackPoints")
    return cluster_name("promotion", "outbound", route.subset if route else None)


def mesh_clusters() -> list[str]:
    """The Envoy clusters calls pass: the gateway's, and the sidecars' (the clawback's own)."""
    return [cluster_name(s, "gateway") for s in SERVICE_NAMES] + [
        cluster_name("payment", "outbound"),
        cluster_name("promotion", "outbound"),
        clawback_cluster(),
    ]


def breaker_counts(stack: LocalStack) -> dict[str, int]:
    """What the breakers in front of promotion did since Envoy started (blocking): calls
    refused by a circuit breaker (overflow), hosts ejected, retries."""
    admin = AdminClient(Address("127.0.0.1", stack.admin_port), timeout=2)
    counts: dict[str, int] = {}
    for cluster in (clawback_cluster(), cluster_name("promotion", "outbound")):
        stats = admin.cluster_stats(cluster)
        for counter, stat in BREAKER_STATS.items():
            counts[counter] = counts.get(counter, 0) + sum(v for k, v in stats.items() if k in stat)
    return counts


def unhealthy_clusters(stack: LocalStack) -> list[str]:
    """The clusters where Envoy does not count every replica healthy (blocking)."""
    admin = AdminClient(Address("127.0.0.1", stack.admin_port), timeout=1)
    if not admin.ready():
        return ["envoy"]
    return [c for c in mesh_clusters() if len(admin.healthy_hosts(c)) != stack.replicas]


def consumers_of(event_type: str) -> frozenset[str]:
    """The services whose consumer takes this event type (services/*/handlers.py)."""
    from services.customer import handlers as customer
    from services.order import handlers as order
    from services.promotion import handlers as promotion
    from services.store import handlers as store

    consumed = {
        "order": order.CONSUMED,
        "promotion": promotion.CONSUMED,
        "store": store.CONSUMED,
        "customer": customer.CONSUMED,
    }
    return frozenset(name for name, types in consumed.items() if event_type in types)


async def run_schedule(
    injector: Injector,
    schedule: Sequence[Planned],
    *,
    start: float,
    gap: float,
    until: float,
    stopping: asyncio.Event,
) -> None:
    """Inject `schedule` in order: the first at `start`, each next `gap` seconds after the
    previous recovered (or at its own `at`). Past `until`, only kinds not yet injected are,
    so that every kind of the schedule gets its turn even on a slow machine."""
    clock = injector.clock
    ready_at = start
    for planned in schedule:
        begin = max(ready_at, planned.at or 0.0)
        done = {r.kind for r in injector.records}
        if begin > until and planned.kind in done:
            continue
        await wait_or_stop(stopping, begin - clock())
        if stopping.is_set():
            return
        record = await injector.inject(planned)
        ready_at = max(record.end, clock()) + gap


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        try:
            async with asyncio.timeout(seconds):
                await stopping.wait()
        except TimeoutError:
            pass
