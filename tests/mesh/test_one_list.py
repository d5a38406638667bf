"""One list of services (the chart's values `services:`), read by everything, and a gateway
that is an allow-list everywhere: a method added to a contract is closed until the values
name it, at the local gateway and in the rendered chart alike."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import helm_python
import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor_pb2 import FileDescriptorSet, MethodDescriptorProto

from mesh.policy import MeshPolicy
from mesh.testing import FakeBackend, call_unary, local_topology
from mesh.topology import DEFAULT_GRPC_PORTS, GRPC_SERVICES, INTERNAL_METHODS, PUBLIC_METHODS
from services.kit import catalog
from services.kit.config import DEFAULT_PORTS, SERVICE_NAMES
from stack.supervisor import LocalStack
from tests.helm import chartkit
from tests.support.identity import Metadata

ORDER = "phoneseller.order.v1.OrderService"
#: The method a test adds to a copy of the contracts, with an HTTP rule as a public one has.
NEW = "ExportOrders"
NEW_PATH = f"/{ORDER}/{NEW}"
NEW_HTTP = "/v1/orders:export"


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def contract_methods(descriptors: FileDescriptorSet) -> set[str]:
    return {
        f"/{f.package}.{s.name}/{m.name}"
        for f in descriptors.file
        if f.package.startswith("phoneseller.")
        for s in f.service
        for m in s.method
    }


def test_every_part_reads_the_values_list() -> None:
    listed = catalog.catalog()
    assert listed.names == SERVICE_NAMES
    assert DEFAULT_PORTS == DEFAULT_GRPC_PORTS == listed.local_ports
    assert LocalStack(run_dir=Path("unused")).ports == listed.local_ports
    assert dict(GRPC_SERVICES) == listed.grpc_services
    assert set(PUBLIC_METHODS) == {*listed.public_paths, "/grpc.health.v1.Health/Check"}
    assert set(INTERNAL_METHODS) == set(listed.internal_paths)


def test_every_method_of_the_contracts_is_public_or_has_its_callers(
    descriptor_set: Path,
) -> None:
    """A method the values do not name is closed everywhere; today there is none, so adding
    an RPC forces the decision (public, or which services may call it)."""
    descriptors = FileDescriptorSet.FromString(descriptor_set.read_bytes())
    listed = catalog.catalog()
    named = set(listed.public_paths) | set(listed.internal_paths)
    assert contract_methods(descriptors) == named


def with_a_new_rpc(descriptor_set: Path, out: Path) -> Path:
    """A copy of the descriptor set whose OrderService has one more RPC, with an HTTP rule."""
    descriptors = FileDescriptorSet.FromString(descriptor_set.read_bytes())
    (file,) = [f for f in descriptors.file if any(s.name == "OrderService" for s in f.service)]
    (service,) = [s for s in file.service if s.name == "OrderService"]
    method: MethodDescriptorProto = service.method.add()
    method.name = NEW
    method.input_type = ".phoneseller.order.v1.GetOrderRequest"
    method.output_type = ".phoneseller.order.v1.Order"
    method.options.Extensions[annotations_pb2.http].get = NEW_HTTP
    out.write_bytes(descriptors.SerializeToString())
    return out


async def test_a_new_rpc_is_closed_at_the_local_gateway(
    policy: MeshPolicy, start_mesh: Any, descriptor_set: Path, tmp_path: Path, signed_in: Metadata
) -> None:
    extended = with_a_new_rpc(descriptor_set, tmp_path / "extended.binpb")
    async with FakeBackend("order", [f"/{ORDER}/GetOrder", NEW_PATH]) as order:
        mesh = await start_mesh(
            policy, local_topology({"order": [order.address]}), descriptor_set_path=extended
        )
        await mesh.wait_healthy("gateway|order", 1)
        async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
            refused = await call_unary(channel, NEW_PATH, metadata=signed_in)
            public = await call_unary(channel, f"/{ORDER}/GetOrder", metadata=signed_in)
        status = http_status(f"http://{mesh.address('gateway')}{NEW_HTTP}")
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED, refused
    assert public.ok, "the public methods beside it are served"
    assert status == 403, "the HTTP rule of a method that is not public leads nowhere"
    assert order.calls[NEW_PATH] == 0


def test_a_new_rpc_is_closed_in_the_rendered_chart(descriptor_set: Path, tmp_path: Path) -> None:
    chart_dir = tmp_path / "phoneseller"
    shutil.copytree(chartkit.CHART_DIR, chart_dir, symlinks=False)
    descriptors = chart_dir / "files" / "descriptors.binpb"
    descriptors.unlink()
    with_a_new_rpc(descriptor_set, descriptors)
    rendered = chartkit.render(helm_python.Chart.load(chart_dir))
    routed = {
        match["uri"]["exact"]
        for vs in rendered.of_kind("VirtualService")
        if set(vs["spec"].get("gateways", ["mesh"])) - {"mesh"}
        for http in vs["spec"]["http"]
        for match in http.get("match", [])
        if "exact" in match.get("uri", {})
    }
    allowed = {
        path
        for policy in rendered.of_kind("AuthorizationPolicy")
        for rule in policy["spec"].get("rules", [])
        for to in rule.get("to", [])
        for path in to["operation"].get("paths", [])
    }
    assert NEW_PATH not in routed, "the ingress routes public methods only"
    assert NEW_PATH not in allowed, "no AuthorizationPolicy lets anyone call it"
    assert routed == set(catalog.catalog().public_paths)


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ({"order": {"grpcService": "x.Y", "localPort": "50051"}}, "localPort"),
        ({"order": {"grpcService": "x.Y", "localPort": 1, "callers": {"nobody": ["A"]}}}, "nobody"),
        (
            {
                "order": {
                    "grpcService": "x.Y",
                    "localPort": 1,
                    "publicMethods": {"A": ["customer"]},
                },
                "pay": {"grpcService": "x.Z", "localPort": 1},
            },
            "same localPort",
        ),
    ],
)
def test_a_malformed_list_is_refused(broken: dict[str, Any], complaint: str) -> None:
    with pytest.raises(catalog.CatalogError, match=complaint):
        catalog.parse_catalog({"services": broken})
