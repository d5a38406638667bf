"""buf.gen.yaml reproduces the committed generated code: `buf generate` with the local plugins
into a temporary folder gives, file for file, what is in the repository (no drift)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.distributions.conftest import REPO

pytestmark = pytest.mark.slow

BUF = Path(sys.executable).parent / "buf"
GEN_PROTOS = REPO / "scripts" / "gen_protos.py"


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def output_folders() -> list[str]:
    """Every `out:` of buf.gen.yaml: the folders whose content buf generate owns."""
    config = yaml.safe_load((REPO / "buf.gen.yaml").read_text())
    return [plugin["out"] for plugin in config["plugins"]]


def test_every_plugin_is_local() -> None:
    """buf's registry is out of reach here; a remote plugin could never run."""
    config = yaml.safe_load((REPO / "buf.gen.yaml").read_text())
    assert config["plugins"]
    for plugin in config["plugins"]:
        assert "local" in plugin, f"{plugin} is not a local plugin"


def test_buf_generate_reproduces_the_committed_code(node_modules: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, GEN_PROTOS, "--deps-only"], cwd=REPO, check=True, timeout=120)
    result = subprocess.run(
        [BUF, "generate", "--template", "buf.gen.yaml", "--output", tmp_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for out in output_folders():
        fresh, committed = generated_files(tmp_path / out), generated_files(REPO / out)
        assert fresh, f"buf generate wrote nothing to {out}"
        missing = sorted(fresh.keys() - committed.keys())
        stale = sorted(committed.keys() - fresh.keys())
        differs = sorted(k for k in fresh.keys() & committed.keys() if fresh[k] != committed[k])
        assert not (missing or stale or differs), (
            f"{out} drifted from buf.gen.yaml (run: .venv/bin/buf generate): "
            f"missing {missing}, stale {stale}, differs {differs}"
        )
