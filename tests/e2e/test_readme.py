"""The README's commands run exactly as printed (`make smoke`), on the README's ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.supervisor import LocalStack
from tests.support.processes import REPO
from tests.support.stack import running_stack

pytestmark = pytest.mark.slow

README = REPO / "README.md"


def readme_blocks(section: str, until: str) -> list[str]:
    text = README.read_text()
    part = text[text.index(section) : text.index(until)]
    return re.findall(r"```bash\n(.*?)```", part, re.S)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def readme_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The default stack (the README's ports), with its files in a temporary folder."""
    stack = LocalStack(run_dir=tmp_path_factory.mktemp("readme-stack"))
    busy = [
        p
        for p in (stack.gateway_port, stack.admin_port, stack.nats_port, *stack.ports.values())
        if port_in_use(p)
    ]
    if busy:
        pytest.skip(
            f"SKIPPED LOUDLY: ports {busy} are taken (is `make up` running? "
            "`make down` first): the README's commands need the default ports"
        )
    with running_stack(stack) as running:
        yield running


def test_the_first_two_commands_are_make_run_and_make_test() -> None:
    first = readme_blocks("# phoneseller", "## Use it")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make run", "make test"]


def test_make_run_comes_up_in_the_foreground_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """What `make run` runs (python -m stack run): ready, endpoints printed, then Ctrl-C."""
    stack = LocalStack(run_dir=tmp_path)
    busy = [
        p for p in (stack.gateway_port, stack.admin_port, *stack.ports.values()) if port_in_use(p)
    ]
    if busy:
        pytest.skip(f"SKIPPED LOUDLY: ports {busy} are taken (is `make up` running?)")
    env = {**os.environ, "PHONESELLER_RUN_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "stack", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:  # ends when the process closes its output
            seen.append(line)
            if "running; Ctrl-C stops everything" in line:
                break
        output = "".join(seen)
        assert "phoneseller is up" in output, output
        assert f"gateway    {stack.gateway}" in output
        assert all(stack.health().values())
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    assert not any(stack.health().values()), "Ctrl-C stopped every process"


def test_every_command_under_use_it_runs_as_printed(
    readme_stack: LocalStack, tmp_path: Path
) -> None:
    blocks = readme_blocks("## Use it", "## How it is built")
    assert len(blocks) >= 4
    env = {**os.environ, "PHONESELLER_RUN_DIR": str(readme_stack.run_dir)}
    outputs = []
    for block in blocks:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, (
            f"{block}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        outputs.append(result.stdout)
    everything = "\n".join(outputs)
    assert "phoneseller.order.v1.OrderService" in everything
    assert '"status": "ORDER_STATUS_PAID"' in everything
    assert '"status": "ORDER_STATUS_CANCELLED"' in everything
    assert '"@type": "type.googleapis.com/google.rpc.BadRequest"' in everything
    assert "All steps passed." in everything
    # Signed in as bob, alice's history is refused by the service; without a token, by the
    # gateway; both as JSON google.rpc.Status bodies with ErrorInfo.
    assert re.search(r'"reason":\s*"NOT_THE_CUSTOMERS_OWN"', everything), everything
    assert re.search(r'"reason":\s*"TOKEN_MISSING"', everything), everything
    assert "fault on promotion: none" in everything
