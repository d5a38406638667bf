"""What `make dist` builds: the contracts' distribution with everything it promises and nothing
of the server, the server's distribution requiring it, and a chart package that renders on its
own (the descriptor set inside, not behind the repository's symbolic link)."""

from __future__ import annotations

import ast
import base64
import email
import re
import tarfile
import zipfile
from pathlib import Path

import helm_python
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.distributions.conftest import REPO, Artefacts
from tests.helm import chartkit

pytestmark = pytest.mark.slow

PROTOS = REPO / "protos"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
CONTRACTS = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
API_REQUIREMENTS = {"protobuf", "grpcio", "googleapis-common-protos"}


def wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def metadata(files: dict[str, bytes]) -> email.message.Message:
    [name] = [n for n in files if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(files[name])


def requirements(files: dict[str, bytes]) -> list[Requirement]:
    return [Requirement(r) for r in metadata(files).get_all("Requires-Dist") or []]


def test_api_wheel_holds_protos_typed_stubs_and_descriptor_set(artefacts: Artefacts) -> None:
    files = wheel_files(artefacts.api_wheel)
    assert files["phoneseller/py.typed"] == b""
    assert files["phoneseller/descriptors.binpb"] == DESCRIPTORS.read_bytes()
    for rel in CONTRACTS:
        assert files[rel] == (PROTOS / rel).read_bytes(), rel
    modules = [n for n in files if n.endswith(("_pb2.py", "_pb2_grpc.py"))]
    assert any(n.endswith("_pb2_grpc.py") for n in modules)
    for module in modules:
        assert module + "i" in files, f"{module} has no .pyi stub"
    # Nothing of the server: only the contracts' top-level package.
    assert {n.split("/")[0] for n in files} == {
        "phoneseller",
        artefacts.api_wheel.name.split("-py3")[0] + ".dist-info",
    }


def test_api_depends_only_on_protobuf_grpcio_and_googleapis(artefacts: Artefacts) -> None:
    needed = [r for r in requirements(wheel_files(artefacts.api_wheel)) if r.marker is None]
    assert {r.name for r in needed} == API_REQUIREMENTS


def test_server_wheel_requires_the_api_instead_of_shipping_it(artefacts: Artefacts) -> None:
    files = wheel_files(artefacts.server_wheel)
    tops = {n.split("/")[0] for n in files if not n.split("/")[0].endswith(".dist-info")}
    assert {"services", "mesh", "stack", "client"} <= tops
    # The contracts come from phoneseller-api; clients/ (TypeScript) is not Python to ship.
    assert not tops & {"phoneseller", "clients"}, tops
    [api] = [r for r in requirements(files) if r.name == "phoneseller-api"]
    api_version = metadata(wheel_files(artefacts.api_wheel))["Version"]
    assert api.specifier.contains(api_version), f"{api} does not admit {api_version}"


def test_sdists_build_on_their_own(artefacts: Artefacts) -> None:
    """The sdists carry what a wheel is built from; the api's needs nothing outside gen/python."""
    with tarfile.open(artefacts.api_sdist) as tar:
        names = {m.name.split("/", 1)[-1] for m in tar.getmembers()}
    assert {"pyproject.toml", "README.md", "phoneseller/py.typed"} <= names
    assert "phoneseller/descriptors.binpb" in names
    assert set(CONTRACTS) <= names
    with tarfile.open(artefacts.server_sdist) as tar:
        names = {m.name.split("/", 1)[-1] for m in tar.getmembers()}
    assert "pyproject.toml" in names
    assert "services/kit/main.py" in names
    assert not any(n.startswith("phoneseller/") for n in names)


def test_api_version_follows_the_contracts(artefacts: Artefacts) -> None:
    """The major version is the protos' package version: every package is phoneseller.*.v<major>."""
    version = Version(metadata(wheel_files(artefacts.api_wheel))["Version"])
    packages = set()
    for rel in CONTRACTS:
        found = re.search(r"^package\s+([\w.]+);", (PROTOS / rel).read_text(), re.MULTILINE)
        assert found, f"{rel} declares no package"
        packages.add(found.group(1))
    assert {p.rsplit(".", 1)[-1] for p in packages} == {f"v{version.major}"}, packages


def test_cli_imports_nothing_of_the_server() -> None:
    """client/ (the `phoneseller` CLI) needs only the contracts and its own modules."""
    for path in sorted((REPO / "client").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"services", "mesh", "stack"}, (
                    f"{path.name} imports {name}"
                )


def test_chart_package_carries_the_descriptor_set(artefacts: Artefacts) -> None:
    with tarfile.open(artefacts.chart) as tar:
        member = tar.getmember("phoneseller/files/descriptors.binpb")
        assert member.isfile(), "the package holds a link, not the descriptor set"
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == DESCRIPTORS.read_bytes()


def test_chart_package_renders_like_the_chart_folder(artefacts: Artefacts) -> None:
    """`helm install phoneseller dist/phoneseller-<version>.tgz` gets the same objects as an
    install from the repository, the transcoder's descriptor set included."""
    packaged = helm_python.Chart.load(artefacts.chart)
    assert packaged.version == chartkit.load_chart().version
    rendered = chartkit.render(packaged)
    configmap = rendered.get("ConfigMap", f"{chartkit.RELEASE}-descriptors")
    shipped = base64.b64decode(configmap["binaryData"]["descriptors.binpb"])
    assert shipped == DESCRIPTORS.read_bytes()
    from_folder = chartkit.render(chartkit.load_chart())
    # The chart tests validate the folder's objects (Kubernetes and Istio schemas); the package's
    # are the same objects.
    assert rendered.objects == from_folder.objects
