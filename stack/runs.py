"""Folders for the tools that run the whole local system (`make bench`, `make chaos`).

Each run writes its results under `.run/<tool>/<UTC time>/` and keeps the stack it started in
a `stack/` folder inside, unless that path is too long for supervisord's socket.
"""

from __future__ import annotations

import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from stack.supervisor import REPO

__all__ = ["MAX_SOCKET_PATH", "git_state", "results_folder", "stack_folder"]

#: supervisord's socket path must fit in sun_path (108 bytes); a longer --out keeps the stack
#: in a temporary folder instead.
MAX_SOCKET_PATH = 100


def results_folder(tool: str, out: Path | None) -> Path:
    """`out`, or `.run/<tool>/<UTC time>/`; made if missing."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = (out or REPO / ".run" / tool / stamp).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stack_folder(out: Path, tool: str) -> Path:
    """Where the run's stack lives: `out/stack`, or a temporary folder when that is too long."""
    folder = out / "stack"
    if len(str(folder / "supervisor.sock")) > MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix=f"{tool}-stack-"))
    return folder


def git_state(*paths: str) -> tuple[str, bool]:
    """HEAD's short hash, and whether the tree (or only `paths` of it) differs from it: what a
    run's figures were measured on."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit, bool(git("status", "--porcelain", "--", *paths))
