"""`phoneseller demo`: the seed's story, played against the running system step by step.

Order → paid → points (10 %) on the order and in the view → cancel → points clawed back,
payment cancelled, the view shows it → promotion down → an order still succeeds, a cancel
fails fast with UNAVAILABLE and a RetryInfo delay → promotion back → the points appear and the
retried cancel succeeds.

Asynchronous steps are awaited by polling with a deadline, never by fixed sleeps. A failed
step says what it expected and what it saw, and the demo ends with exit code 1. Stopping and
starting promotion is a `PromotionControl`: supervisorctl for the local stack, or any callable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO, TypeVar

import grpc
from phoneseller.customer.v1 import customer_service_pb2 as customer_pb
from phoneseller.order.v1 import order_service_pb2 as order_pb
from phoneseller.payment.v1 import payment_service_pb2 as payment_pb
from phoneseller.promotion.v1 import promotion_service_pb2 as promotion_pb

from client import tables
from client.api import ApiError, PhoneSeller, new_request_id

T = TypeVar("T")

Action = Literal["stop", "start"]
#: Stops or starts the promotion service; returns once the action is done (or raises).
PromotionControl = Callable[[Action], None]

#: A cancel that fails "fast" answers within this many seconds.
FAST_FAILURE_SECONDS = 3.0


class ControlError(RuntimeError):
    """The promotion service could not be stopped or started."""


def supervisorctl_path() -> str:
    """The supervisorctl next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "supervisorctl"
    if beside.exists():
        return str(beside)
    found = shutil.which("supervisorctl")
    if found is None:
        raise ControlError("supervisorctl not found; install the project with its runtime extra")
    return found


def _supervisorctl(config: Path, *args: str) -> tuple[int, str]:
    try:
        result = subprocess.run(
            [supervisorctl_path(), "-c", str(config), *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ControlError(f"supervisorctl {' '.join(args)} took over 90 s") from None
    return result.returncode, (result.stdout + result.stderr).strip()


def supervisor_programs(config: Path, service: str) -> list[str]:
    """The supervisord programs of `service`: `promotion`, or its replicas `promotion-0`, …"""
    code, output = _supervisorctl(config, "avail")
    names = [line.split()[0] for line in output.splitlines() if line.strip()]
    pattern = re.compile(rf"(?:[^:\s]+:)?{re.escape(service)}(?:-\d+)?")
    programs = [name for name in names if pattern.fullmatch(name)]
    if code != 0 or not programs:
        raise ControlError(f"no {service} program in {config}: {output or f'exit {code}'}")
    return programs


def supervisor_control(run_dir: Path, service: str = "promotion") -> PromotionControl:
    """Stop/start every replica of `service` in the local stack with
    `supervisorctl -c RUN_DIR/supervisord.conf stop|start PROGRAM…` (`python -m stack` writes
    that file). Returns once supervisord reports them stopped/started."""
    config = run_dir / "supervisord.conf"

    def control(action: Action) -> None:
        if not config.exists():
            raise ControlError(f"{config} not found: is the local stack up (`make up`)?")
        programs = supervisor_programs(config, service)
        code, output = _supervisorctl(config, action, *programs)
        harmless = "not running" if action == "stop" else "already started"
        lines = output.splitlines()
        refused = [line for line in lines if "ERROR" in line and harmless not in line]
        if refused or (code != 0 and not any(harmless in line for line in lines)):
            raise ControlError(f"supervisorctl {action} {' '.join(programs)} failed: {output}")

    return control


class StepError(Exception):
    """A demo step did not see what it expected."""

    def __init__(self, expected: str, observed: str) -> None:
        super().__init__(f"expected {expected}; observed {observed}")
        self.expected = expected
        self.observed = observed


@dataclass
class StepResult:
    number: int
    title: str
    ok: bool
    seconds: float
    expected: str = ""
    observed: str = ""


@dataclass
class Demo:
    """The story for one (fresh) customer. `run()` returns True when every step passed."""

    api: PhoneSeller
    out: TextIO
    promotion: PromotionControl | None = None
    customer: str = field(default_factory=lambda: f"demo-{uuid.uuid4().hex[:8]}")
    item: str = "Galaxy S25"
    unit_price: int = 1_250_000
    quantity: int = 1
    points_rate_percent: int = 10
    #: How long an asynchronous step may take.
    timeout: float = 30.0
    #: How often an asynchronous step looks again.
    interval: float = 0.1
    results: list[StepResult] = field(default_factory=list)
    _promotion_stopped: bool = field(default=False, init=False, repr=False)

    @property
    def amount(self) -> int:
        return self.unit_price * self.quantity

    @property
    def expected_points(self) -> int:
        return self.amount * self.points_rate_percent // 100

    # -- running steps ------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, action: Callable[[], T]) -> T:
        number = len(self.results) + 1
        self.say(f"\n== {number}. {title}")
        started = time.monotonic()
        try:
            value = action()
        except StepError as failure:
            self._record(number, title, started, failure.expected, failure.observed)
            raise
        except ApiError as error:
            observed = f"the call failed: {error}"
            self._record(number, title, started, "the call to succeed", observed)
            self.say(tables.error_table(error))
            raise StepError("the call to succeed", observed) from error
        except ControlError as error:
            self._record(number, title, started, "promotion to stop/start", str(error))
            raise StepError("promotion to stop/start", str(error)) from error
        elapsed = time.monotonic() - started
        self.results.append(StepResult(number, title, True, elapsed))
        self.say(f"-> ok ({tables.seconds(elapsed)})")
        return value

    def _record(
        self, number: int, title: str, started: float, expected: str, observed: str
    ) -> None:
        elapsed = time.monotonic() - started
        self.results.append(StepResult(number, title, False, elapsed, expected, observed))
        self.say(f"-> FAILED after {tables.seconds(elapsed)}")
        self.say(f"   expected: {expected}")
        self.say(f"   observed: {observed}")

    def poll(
        self,
        fetch: Callable[[], T],
        done: Callable[[T], bool],
        expected: str,
        describe: Callable[[T], str],
    ) -> T:
        """Fetch until `done` (returned) or the deadline (StepError with the last sight)."""
        deadline = time.monotonic() + self.timeout
        observed = "nothing yet"
        while True:
            try:
                value = fetch()
                if done(value):
                    return value
                observed = describe(value)
            except ApiError as error:
                observed = f"the call failed: {error}"
            if time.monotonic() >= deadline:
                raise StepError(f"{expected} within {self.timeout:g} s", observed)
            time.sleep(self.interval)

    # -- the story ----------------------------------------------------------------------------

    def run(self) -> bool:
        self.say(
            tables.key_values(
                [
                    ("customer", self.customer),
                    ("order", f"{self.quantity} x {self.item} at {tables.money(self.unit_price)}"),
                    (
                        "points expected",
                        f"{self.points_rate_percent} % = {tables.points(self.expected_points)}",
                    ),
                ]
            )
        )
        try:
            self.happy_path()
            if self.promotion is None:
                self.say("\n(promotion outage skipped: no promotion control)")
            else:
                self.outage(self.promotion)
        except StepError:
            return self._summary(False)
        finally:
            if self._promotion_stopped and self.promotion is not None:
                self.say("\nstarting promotion again")
                try:
                    self.promotion("start")
                except ControlError as error:
                    self.say(f"could not start promotion again: {error}")
        return self._summary(True)

    def happy_path(self) -> order_pb.Order:
        points = self.expected_points
        order = self.step("Place an order: it is paid at once", self.place)
        self.step(
            f"Points appear on the order ({self.points_rate_percent} % of the amount)",
            lambda: self.wait_order(order.order_id, payback_points=points),
        )
        self.step(
            "The customer view shows the paid order and its points",
            lambda: self.wait_view(
                order.order_id, balance=points, status="PAID", points_granted=points
            ),
        )
        cancel_id = new_request_id()
        self.step("Cancel the order", lambda: self.cancel_now(order.order_id, cancel_id))
        self.step(
            "Points clawed back and payment cancelled", lambda: self.clawed_back(order, points)
        )
        self.step(
            "The customer view shows the cancel",
            lambda: self.wait_view(
                order.order_id,
                balance=0,
                status="CANCELLED",
                payment_status="CANCELLED",
                points_reversed=points,
            ),
        )
        return order

    def outage(self, control: PromotionControl) -> None:
        points = self.expected_points
        self.step("Promotion goes down", lambda: self.promotion_down(control))
        order = self.step("An order still succeeds (points will come later)", self.place)
        cancel_id = new_request_id()
        self.step(
            "Cancelling it fails fast and asks to retry later",
            lambda: self.cancel_refused(order, cancel_id),
        )
        self.step("Promotion comes back", lambda: self.promotion_up(control))
        self.step(
            "The points of the order placed during the outage appear",
            lambda: self.wait_order(order.order_id, payback_points=points),
        )
        self.step(
            "The retried cancel (same request id) succeeds",
            lambda: self.cancel_retried(order.order_id, cancel_id),
        )
        self.step(
            "The customer view shows it cancelled, the balance back to 0",
            lambda: self.wait_view(
                order.order_id,
                balance=0,
                status="CANCELLED",
                payment_status="CANCELLED",
                points_reversed=points,
            ),
        )

    # -- steps --------------------------------------------------------------------------------

    def place(self) -> order_pb.Order:
        request_id = new_request_id()
        order = self.api.place_order(
            self.customer, self.item, self.quantity, self.unit_price, request_id
        )
        self.say(tables.order_table(order, request_id))
        if order.status != order_pb.ORDER_STATUS_PAID or order.amount != self.amount:
            raise StepError(
                f"status PAID and amount {tables.money(self.amount)}",
                f"status {tables.order_status(order.status)}, amount {tables.money(order.amount)}",
            )
        return order

    def wait_order(self, order_id: str, payback_points: int) -> order_pb.Order:
        order = self.poll(
            lambda: self.api.get_order(order_id, self.customer),
            lambda o: o.payback_points == payback_points,
            f"{tables.points(payback_points)} payback points on the order",
            lambda o: (
                f"{tables.points(o.payback_points)} points, status {tables.order_status(o.status)}"
            ),
        )
        self.say(tables.order_table(order))
        return order

    def wait_view(
        self, order_id: str, balance: int, **expected: object
    ) -> customer_pb.CustomerHistory:
        def entry(history: customer_pb.CustomerHistory) -> customer_pb.OrderHistory | None:
            return next((e for e in history.orders if e.order_id == order_id), None)

        def seen(history: customer_pb.CustomerHistory) -> dict[str, object]:
            found = entry(history)
            if found is None:
                return {"order": "not in the view"}
            values: dict[str, object] = {
                "status": tables.order_status(found.status),
                "payment_status": tables.payment_status(found.payment_status),
                "points_granted": found.points_granted,
                "points_reversed": found.points_reversed,
            }
            return {name: values[name] for name in expected} | {"balance": history.point_balance}

        wanted = {**expected, "balance": balance}
        history = self.poll(
            lambda: self.api.history(self.customer),
            lambda h: seen(h) == wanted,
            "the view to show " + _pairs(wanted),
            lambda h: _pairs(seen(h)),
        )
        self.say(tables.history_table(history))
        return history

    def cancel_now(self, order_id: str, request_id: str) -> order_pb.Order:
        order = self.api.cancel_order(order_id, request_id, self.customer)
        self.say(tables.order_table(order, request_id))
        if order.status != order_pb.ORDER_STATUS_CANCELLED or order.payback_points != 0:
            raise StepError(
                "status CANCELLED with 0 payback points",
                f"status {tables.order_status(order.status)} with "
                f"{tables.points(order.payback_points)} points",
            )
        return order

    def clawed_back(self, order: order_pb.Order, points: int) -> None:
        # The clawback is synchronous: by the time the cancel answered, it is done.
        balance = self.api.balance(self.customer)
        payment = self.api.get_payment(order.payment_id, self.customer)
        self.say(tables.balance_table(balance))
        self.say()
        self.say(tables.payment_table(payment))
        entries = [(e.kind, e.points) for e in balance.entries if e.order_id == order.order_id]
        wanted = [
            (promotion_pb.LEDGER_ENTRY_KIND_GRANT, points),
            (promotion_pb.LEDGER_ENTRY_KIND_REVERSAL, -points),
        ]
        if entries != wanted or payment.status != payment_pb.PAYMENT_STATUS_CANCELLED:
            raise StepError(
                f"ledger GRANT {tables.signed_points(points)}, "
                f"REVERSAL {tables.signed_points(-points)}; payment CANCELLED",
                "ledger "
                + (
                    ", ".join(
                        f"{tables.ledger_kind(k)} {tables.signed_points(p)}" for k, p in entries
                    )
                    or "empty"
                )
                + f"; payment {tables.payment_status(payment.status)}",
            )

    def promotion_down(self, control: PromotionControl) -> None:
        self._promotion_stopped = True  # from here on, the demo starts it again if it fails
        control("stop")

        def refused() -> ApiError | None:
            try:
                self.api.balance(self.customer)
            except ApiError as error:
                if error.code is grpc.StatusCode.UNAVAILABLE:
                    return error
                raise
            return None

        error = self.poll(
            refused,
            lambda e: e is not None,
            "promotion to answer UNAVAILABLE",
            lambda e: "promotion still answers",
        )
        assert error is not None
        self.say(tables.key_values([("promotion", f"down ({error.code_name})")]))

    def promotion_up(self, control: PromotionControl) -> None:
        control("start")
        self._promotion_stopped = False
        balance = self.poll(
            lambda: self.api.balance(self.customer),
            lambda b: True,
            "promotion to answer again",
            lambda b: "",
        )
        self.say(tables.key_values([("promotion", "up")]))
        self.say(tables.balance_table(balance))

    def cancel_refused(self, order: order_pb.Order, request_id: str) -> None:
        started = time.monotonic()
        try:
            cancelled = self.api.cancel_order(order.order_id, request_id, self.customer)
        except ApiError as error:
            elapsed = time.monotonic() - started
            self.say(tables.error_table(error))
            self.say(tables.key_values([("answered in", tables.seconds(elapsed))]))
            if not error.retryable:
                raise StepError(
                    "UNAVAILABLE with a RetryInfo delay",
                    f"{error}, retry delay {error.retry_delay}",
                ) from None
            if elapsed > FAST_FAILURE_SECONDS:
                raise StepError(
                    f"an answer within {tables.seconds(FAST_FAILURE_SECONDS)}",
                    f"the answer took {tables.seconds(elapsed)}",
                ) from None
        else:
            raise StepError(
                "UNAVAILABLE with a RetryInfo delay",
                f"the cancel succeeded: status {tables.order_status(cancelled.status)}",
            )
        unchanged = self.api.get_order(order.order_id, self.customer)
        payment = self.api.get_payment(order.payment_id, self.customer)
        self.say()
        self.say(
            tables.key_values(
                [
                    ("order status", tables.order_status(unchanged.status)),
                    ("payment status", tables.payment_status(payment.status)),
                    ("request id", request_id),
                ]
            )
        )
        if (
            unchanged.status != order_pb.ORDER_STATUS_PAID
            or payment.status != payment_pb.PAYMENT_STATUS_PAID
        ):
            raise StepError(
                "nothing half-done: order and payment still PAID",
                f"order {tables.order_status(unchanged.status)}, "
                f"payment {tables.payment_status(payment.status)}",
            )

    def cancel_retried(self, order_id: str, request_id: str) -> order_pb.Order:
        """Cancel, honouring the RetryInfo delay of a refusal, until the deadline."""
        deadline = time.monotonic() + self.timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                order = self.api.cancel_order(order_id, request_id, self.customer)
                break
            except ApiError as error:
                delay = error.retry_delay
                if not error.retryable or delay is None:
                    raise
                if time.monotonic() + delay > deadline:
                    raise StepError(
                        f"the cancel to succeed within {self.timeout:g} s", str(error)
                    ) from None
                self.say(f"   attempt {attempts}: {error}; retrying in {tables.seconds(delay)}")
                time.sleep(delay)
        self.say(tables.order_table(order, request_id))
        balance = self.api.balance(self.customer)
        self.say()
        self.say(tables.balance_table(balance))
        if order.status != order_pb.ORDER_STATUS_CANCELLED or balance.balance != 0:
            raise StepError(
                "status CANCELLED and point balance 0",
                f"status {tables.order_status(order.status)}, "
                f"balance {tables.points(balance.balance)}",
            )
        return order

    # -- the end ------------------------------------------------------------------------------

    def _summary(self, ok: bool) -> bool:
        self.say("\n== Summary")
        self.say(
            tables.columns(
                ("#", "STEP", "RESULT", "TIME"),
                (
                    (
                        str(r.number),
                        r.title,
                        "ok" if r.ok else "FAILED",
                        tables.seconds(r.seconds),
                    )
                    for r in self.results
                ),
                right={0, 3},
            )
        )
        failed = next((r for r in self.results if not r.ok), None)
        if failed is not None:
            self.say(f"\nFAILED at step {failed.number}: {failed.title}")
            self.say(f"  expected: {failed.expected}")
            self.say(f"  observed: {failed.observed}")
        else:
            self.say("\nAll steps passed.")
        return ok and failed is None


def _pairs(values: dict[str, object]) -> str:
    def shown(value: object) -> str:
        return tables.points(value) if isinstance(value, int) else str(value)

    return ", ".join(f"{name.replace('_', ' ')} {shown(value)}" for name, value in values.items())
