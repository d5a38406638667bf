"""The phoneseller-api wheel as a user gets it: installed from dist/ into a clean virtualenv
(its three dependencies from the package index), typed, without the server's dependencies, and
enough to place and read an order through the gateway of the running system."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.supervisor import LocalStack
from tests.distributions.conftest import Artefacts

pytestmark = pytest.mark.slow

# What a program using the stubs looks like; mypy --strict checks it against the installed
# .pyi files, and the test runs it against the gateway.
PLACE_AND_READ = textwrap.dedent(
    '''
    """Place an order and read it back through the gateway, with phoneseller-api alone."""

    import sys
    import uuid

    import grpc
    from phoneseller.order.v1 import order_service_pb2 as order_pb
    from phoneseller.order.v1 import order_service_pb2_grpc as order_grpc


    def main(gateway: str, token: str, customer_id: str) -> None:
        metadata = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(gateway) as channel:
            orders = order_grpc.OrderServiceStub(channel)
            request = order_pb.PlaceOrderRequest(
                customer_id=customer_id,
                item="Galaxy S25",
                quantity=2,
                unit_price=1_100_000,
                request_id=str(uuid.uuid4()),
            )
            placed: order_pb.Order = orders.PlaceOrder(request, metadata=metadata, timeout=15)
            read: order_pb.Order = orders.GetOrder(
                order_pb.GetOrderRequest(order_id=placed.order_id), metadata=metadata, timeout=15
            )
            status: str = order_pb.OrderStatus.Name(read.status)
            print(read.order_id, status, read.amount)


    if __name__ == "__main__":
        main(*sys.argv[1:4])
    '''
)

# A mistake the stubs' types must catch: if mypy saw the modules as untyped (Any), it would
# pass.
WRONG_TYPE = textwrap.dedent(
    """
    from phoneseller.order.v1 import order_service_pb2 as order_pb

    order_pb.PlaceOrderRequest(customer_id="c", quantity="two")
    amount: str = order_pb.Order().amount
    """
)

SERVER_ONLY = {"sqlalchemy", "nats-py", "asyncpg", "aiosqlite", "pyyaml", "phoneseller"}


@dataclass(frozen=True)
class CleanVenv:
    folder: Path

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    def run(self, *argv: str | Path, cwd: Path, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stderr}"
        return result.stdout


def clean_env() -> dict[str, str]:
    """The environment without anything that would let the repository's code leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory, artefacts: Artefacts) -> CleanVenv:
    """A new virtualenv with the built wheel and its typing extra installed, once per session."""
    folder = tmp_path_factory.mktemp("clean") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(folder)], check=True, timeout=120)
    created = CleanVenv(folder)
    wheel = artefacts.api_wheel
    created.run(
        created.python, "-m", "pip", "install", "--quiet", f"{wheel}[typing]",
        cwd=folder, timeout=600,
    )  # fmt: skip
    return created


def test_wheel_installs_without_the_server_dependencies(venv: CleanVenv) -> None:
    listed = json.loads(
        venv.run(venv.python, "-m", "pip", "list", "--format=json", cwd=venv.folder)
    )
    names = {entry["name"].lower().replace("_", "-") for entry in listed}
    assert "phoneseller-api" in names
    assert {"protobuf", "grpcio", "googleapis-common-protos"} <= names
    assert not names & SERVER_ONLY, f"server dependencies installed: {names & SERVER_ONLY}"


def test_import_is_typed_and_ships_protos_and_descriptors(venv: CleanVenv, tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import json
        from importlib.resources import files
        import phoneseller.order.v1
        from phoneseller.order.v1 import order_service_pb2, order_service_pb2_grpc
        from google.protobuf.descriptor_pb2 import FileDescriptorSet

        root = files("phoneseller")
        names = {f.name for f in FileDescriptorSet.FromString(
            (root / "descriptors.binpb").read_bytes()).file}
        print(json.dumps({
            "module": order_service_pb2.__file__,
            "typed": (root / "py.typed").is_file(),
            "pyi": (root / "order" / "v1" / "order_service_pb2.pyi").is_file(),
            "grpc_pyi": (root / "order" / "v1" / "order_service_pb2_grpc.pyi").is_file(),
            "proto": (root / "order" / "v1" / "order_service.proto").is_file(),
            "has_order_file": "phoneseller/order/v1/order_service.proto" in names,
            "service": order_service_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name,
        }))
        """
    )
    found = json.loads(venv.run(venv.python, "-c", probe, cwd=tmp_path))
    assert Path(found.pop("module")).is_relative_to(venv.folder), "imported from outside the venv"
    assert found == {
        "typed": True,
        "pyi": True,
        "grpc_pyi": True,
        "proto": True,
        "has_order_file": True,
        "service": "phoneseller.order.v1.OrderService",
    }


def mypy(venv: CleanVenv, source: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """The project's mypy, strict, resolving imports in the clean venv (PEP 561) only."""
    path = folder / "snippet.py"
    path.write_text(source)
    command = [
        Path(sys.executable).parent / "mypy",
        "--strict",
        "--no-incremental",
        "--config-file",
        os.devnull,
        "--python-executable",
        venv.python,
        path,
    ]
    return subprocess.run(
        [str(c) for c in command],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_mypy_sees_the_stubs_types(venv: CleanVenv, tmp_path: Path) -> None:
    good = mypy(venv, PLACE_AND_READ, tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy(venv, WRONG_TYPE, tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '"quantity"' in bad.stdout and "int" in bad.stdout, bad.stdout
    assert "Incompatible types in assignment" in bad.stdout, bad.stdout


def test_place_and_read_an_order_through_the_gateway(
    venv: CleanVenv, stack: LocalStack, tmp_path: Path
) -> None:
    customer = f"wheel-{uuid.uuid4().hex[:10]}"
    token = stack.issuer.token(customer, "customer")
    script = tmp_path / "place_and_read.py"
    script.write_text(PLACE_AND_READ)
    out = venv.run(venv.python, script, stack.gateway, token, customer, cwd=tmp_path)
    order_id, status, amount = out.split()
    assert order_id
    assert status == "ORDER_STATUS_PAID"
    assert int(amount) == 2 * 1_100_000
