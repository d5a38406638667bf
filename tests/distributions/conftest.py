"""Fixtures of the distribution and client tests: the artefacts of `make dist`, built once per
session; the TypeScript client's node_modules (`make ts-client`); one running local stack for
the clients in this folder to call through the gateway."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.supervisor import LocalStack
from tests.support.stack import running_stack, stack_on_free_ports

REPO = Path(__file__).resolve().parents[2]
TS_CLIENT = REPO / "clients" / "typescript"


@dataclass(frozen=True)
class Artefacts:
    """What scripts/dist.py built: the two distributions' files and the chart archive."""

    folder: Path

    def one(self, pattern: str) -> Path:
        found = sorted(self.folder.glob(pattern))
        assert len(found) == 1, f"{pattern}: expected one file in {self.folder}, found {found}"
        return found[0]

    @property
    def api_wheel(self) -> Path:
        return self.one("phoneseller_api-*.whl")

    @property
    def api_sdist(self) -> Path:
        return self.one("phoneseller_api-*.tar.gz")

    @property
    def server_wheel(self) -> Path:
        return self.one("phoneseller-*.whl")

    @property
    def server_sdist(self) -> Path:
        return self.one("phoneseller-*.tar.gz")

    @property
    def chart(self) -> Path:
        return self.one("phoneseller-*.tgz")


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    """`make dist` into a folder of this session (dist/ is left alone)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "dist.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"scripts/dist.py failed:\n{result.stdout}\n{result.stderr}"
    return Artefacts(out)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """clients/typescript/node_modules as package-lock.json pins it, by `make ts-client`
    (npm ci, redone only when the lock file is newer than the installed tree)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("LOUD SKIP: node/npm not found; the TypeScript client needs Node 20 and npm")
    result = subprocess.run(
        ["make", "-s", "ts-client"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"make ts-client failed:\n{result.stdout}\n{result.stderr}"
    folder = TS_CLIENT / "node_modules"
    assert (folder / ".bin" / "protoc-gen-es").exists(), "npm ci installed no protoc-gen-es"
    return folder


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local system (supervisord, Envoy's gateway, the services, NATS)."""
    with running_stack(stack_on_free_ports(tmp_path_factory.mktemp("stack"))) as running:
        yield running
