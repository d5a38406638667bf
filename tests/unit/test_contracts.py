"""The protobuf contracts: generated code in sync, Buf style, HTTP routes, event envelopes.

These tests read the committed `gen/descriptors.binpb` (the file Envoy's transcoder loads) and
the committed generated modules; `test_generated_code_matches_protos` proves both are what
`scripts/gen_protos.py` makes from `protos/` today.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped,unused-ignore]
from google.protobuf.descriptor_pb2 import (
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
    MethodDescriptorProto,
)

REPO = Path(__file__).resolve().parents[2]
GEN_SCRIPT = REPO / "scripts" / "gen_protos.py"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
BIN = Path(sys.executable).parent

CONTEXTS = ("order", "payment", "promotion", "store", "customer")

# Every RPC of the contract: its google.api.http rule as (verb, path, body), or None for the
# internal RPCs that only other services call through the mesh and the gateway must not expose.
RPCS: dict[str, tuple[str, str, str] | None] = {
    "phoneseller.order.v1.OrderService.PlaceOrder": ("post", "/v1/orders", "*"),
    "phoneseller.order.v1.OrderService.GetOrder": ("get", "/v1/orders/{order_id}", ""),
    "phoneseller.order.v1.OrderService.CancelOrder": (
        "post",
        "/v1/orders/{order_id}:cancel",
        "*",
    ),
    "phoneseller.payment.v1.PaymentService.Pay": None,
    "phoneseller.payment.v1.PaymentService.GetPayment": (
        "get",
        "/v1/payments/{payment_id}",
        "",
    ),
    "phoneseller.payment.v1.PaymentService.CancelPayment": None,
    "phoneseller.promotion.v1.PromotionService.ClawBackPoints": None,
    "phoneseller.promotion.v1.PromotionService.GetPointGrant": None,
    "phoneseller.promotion.v1.PromotionService.GetPointBalance": (
        "get",
        "/v1/customers/{customer_id}/points",
        "",
    ),
    "phoneseller.store.v1.StoreService.ListStoreOrders": ("get", "/v1/storeOrders", ""),
    "phoneseller.store.v1.StoreService.ShipOrder": (
        "post",
        "/v1/storeOrders/{order_id}:ship",
        "*",
    ),
    "phoneseller.customer.v1.CustomerService.GetCustomerHistory": (
        "get",
        "/v1/customers/{customer_id}/history",
        "",
    ),
}

EVENTS = {
    "phoneseller.order.v1.Ordered",
    "phoneseller.order.v1.OrderCancelled",
    "phoneseller.payment.v1.PayCompleted",
    "phoneseller.payment.v1.PayDeclined",
    "phoneseller.payment.v1.PayCancelled",
    "phoneseller.promotion.v1.PromoCompleted",
    "phoneseller.promotion.v1.PromoCancelled",
    "phoneseller.store.v1.Shipped",
}

# The envelope every event starts with: name -> (number, type, type_name).
T = FieldDescriptorProto
EVENT_ENVELOPE = {
    "event_id": (1, T.TYPE_STRING, ""),
    "occurred_at": (2, T.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
    "order_id": (3, T.TYPE_STRING, ""),
    "customer_id": (4, T.TYPE_STRING, ""),
}

# Money is int64 won, points int64, quantities int32: no floats near money or points.
FIELD_TYPES = {
    "amount": T.TYPE_INT64,
    "unit_price": T.TYPE_INT64,
    "balance": T.TYPE_INT64,
    "point_balance": T.TYPE_INT64,
    "points": T.TYPE_INT64,
    "points_granted": T.TYPE_INT64,
    "points_reversed": T.TYPE_INT64,
    "payback_points": T.TYPE_INT64,
    "quantity": T.TYPE_INT32,
}

PB2_MODULES = [
    f"phoneseller.{ctx}.v1.{name}"
    for ctx in CONTEXTS
    for name in (
        [f"{ctx}_service_pb2", f"{ctx}_service_pb2_grpc"]
        + ([] if ctx == "customer" else ["events_pb2"])
    )
]


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, check=False
    )


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    return run(BIN / "buf" if (BIN / "buf").exists() else "buf", *args)


@pytest.fixture(scope="module")
def proto_deps() -> None:
    """buf needs the googleapis sources in .build/proto-deps before it can read buf.yaml."""
    result = run(sys.executable, GEN_SCRIPT, "--deps-only")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def our_files() -> list[FileDescriptorProto]:
    descriptors = FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    return [f for f in descriptors.file if f.package.startswith("phoneseller.")]


def http_rule(method: MethodDescriptorProto) -> tuple[str, str, str] | None:
    if not method.options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    assert verb is not None, f"no pattern in {rule}"
    assert verb != "custom", f"unexpected custom pattern in {rule}"
    return verb, getattr(rule, verb), rule.body


def test_generated_code_matches_protos() -> None:
    result = run(sys.executable, GEN_SCRIPT, "--check")
    assert result.returncode == 0, (
        "gen/ is stale; run `python scripts/gen_protos.py`\n" + result.stdout + result.stderr
    )


@pytest.mark.usefixtures("proto_deps")
def test_buf_lint_is_clean() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("proto_deps")
def test_buf_format_is_clean() -> None:
    result = buf("format", "--diff", "--exit-code")
    assert result.returncode == 0, "run `buf format -w`\n" + result.stdout + result.stderr


@pytest.mark.usefixtures("proto_deps")
def test_buf_breaking_runs_offline_against_head() -> None:
    """The breaking check works offline; against HEAD, once the protos are committed there."""
    if run("git", "cat-file", "-e", "HEAD:buf.yaml").returncode != 0:
        pytest.skip("buf.yaml is not committed yet")
    if run("git", "status", "--porcelain", "--", "protos", "buf.yaml").stdout.strip():
        pytest.skip("protos/ has uncommitted changes; compare with --breaking by hand")
    result = run(sys.executable, GEN_SCRIPT, "--breaking", "HEAD")
    assert result.returncode == 0, result.stdout + result.stderr


def test_descriptor_set_is_self_contained(our_files: list[FileDescriptorProto]) -> None:
    descriptors = FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    names = [f.name for f in descriptors.file]
    for file in descriptors.file:
        for dependency in file.dependency:
            assert names.index(dependency) < names.index(file.name), (file.name, dependency)
    assert {f.package for f in our_files} == {f"phoneseller.{c}.v1" for c in CONTEXTS}
    assert all(f.HasField("source_code_info") for f in our_files)


def test_every_rpc_has_exactly_the_expected_http_rule(
    our_files: list[FileDescriptorProto],
) -> None:
    found = {
        f"{file.package}.{service.name}.{method.name}": http_rule(method)
        for file in our_files
        for service in file.service
        for method in service.method
    }
    assert found == RPCS


def test_every_event_starts_with_the_envelope(our_files: list[FileDescriptorProto]) -> None:
    events = {
        f"{file.package}.{message.name}": message
        for file in our_files
        if file.name.endswith("/events.proto")
        for message in file.message_type
    }
    assert set(events) == EVENTS
    for name, message in events.items():
        fields = {f.name: (f.number, f.type, f.type_name) for f in message.field}
        for field, expected in EVENT_ENVELOPE.items():
            assert fields.get(field) == expected, f"{name}.{field}"


def test_money_points_and_quantities_are_integers(our_files: list[FileDescriptorProto]) -> None:
    checked = 0
    for file in our_files:
        for message in file.message_type:
            for field in message.field:
                assert field.type not in (T.TYPE_FLOAT, T.TYPE_DOUBLE), (message.name, field.name)
                if field.name in FIELD_TYPES:
                    assert field.type == FIELD_TYPES[field.name], (message.name, field.name)
                    checked += 1
    assert checked > 20


def test_enums_start_with_unspecified(our_files: list[FileDescriptorProto]) -> None:
    enums = [e for f in our_files for e in f.enum_type]
    assert {e.name for e in enums} == {
        "OrderStatus",
        "PaymentStatus",
        "PointGrantStatus",
        "LedgerEntryKind",
        "StoreOrderStatus",
    }
    for enum in enums:
        assert enum.value[0].number == 0
        assert enum.value[0].name.endswith("_UNSPECIFIED"), enum.name


@pytest.mark.parametrize("module", PB2_MODULES)
def test_generated_module_imports(module: str) -> None:
    loaded = importlib.import_module(module)
    context = module.split(".")[1]
    if module.endswith("_pb2_grpc"):
        service = context.capitalize() + "Service"
        for name in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
            assert hasattr(loaded, name), f"{module} lacks {name}"
    else:
        assert loaded.DESCRIPTOR.package == f"phoneseller.{context}.v1"


def test_messages_round_trip() -> None:
    from phoneseller.customer.v1 import customer_service_pb2
    from phoneseller.order.v1 import order_service_pb2

    order = order_service_pb2.Order(
        order_id="o-1",
        quantity=2,
        unit_price=1_250_000,
        amount=2_500_000,
        status=order_service_pb2.ORDER_STATUS_PAID,
    )
    order.create_time.FromSeconds(1_700_000_000)
    assert order_service_pb2.Order.FromString(order.SerializeToString()) == order
    history = customer_service_pb2.OrderHistory(status=order_service_pb2.ORDER_STATUS_SHIPPED)
    assert history.status == order_service_pb2.ORDER_STATUS_SHIPPED


def test_generated_packages_are_regular_and_typed() -> None:
    import phoneseller.order.v1 as order_v1

    assert order_v1.__file__ is not None
    package_root = Path(order_v1.__file__).parents[2]
    assert (package_root / "py.typed").is_file()
    for ctx in CONTEXTS:
        for folder in (package_root / ctx, package_root / ctx / "v1"):
            assert (folder / "__init__.py").is_file(), folder
