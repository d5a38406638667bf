"""A real Prometheus (Debian's `prometheus` package) scraping the local system.

`make observe` (`python -m stack.prometheus`) runs it in the foreground beside what `make up`
started, on 127.0.0.1:9090 (PHONESELLER_LOCAL_PROMETHEUS_PORT), keeping its data under
`.run/prometheus/`; tests/observability runs the same on free ports. It scrapes every replica's
metrics endpoint (job `phoneseller`, label `app` = the service, as Istio's Prometheus labels
pods) and Envoy's `/stats/prometheus` (job `envoy`, `app="envoy"`), so the dashboard's queries
(helm/phoneseller/dashboards/) read the same series they read in a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from services.kit.config import SERVICE_NAMES
from stack.supervisor import LocalStack

#: Where Debian's package puts the server.
BINARY = "prometheus"


class PrometheusError(RuntimeError):
    """Prometheus is not installed, did not start, or refused a query."""


def binary() -> str | None:
    """The prometheus executable, or None when the package is not installed."""
    return shutil.which(BINARY) or (BINARY if Path("/usr/bin/prometheus").is_file() else None)


def scrape_config(stack: LocalStack, interval_seconds: float = 5.0) -> dict[str, Any]:
    """Prometheus' configuration for the replicas and Envoy of `stack`."""
    interval = f"{interval_seconds:g}s"
    targets = [
        {
            "targets": [f"127.0.0.1:{stack.metrics_port(service, replica)}"],
            "labels": {"app": service, "pod": stack.replica_name(service, replica)},
        }
        for service in SERVICE_NAMES
        for replica in range(stack.replicas)
    ]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "phoneseller", "static_configs": targets},
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{stack.admin_port}"],
                        "labels": {"app": "envoy", "pod": "envoy"},
                    }
                ],
            },
        ],
    }


class Prometheus:
    """One Prometheus server on 127.0.0.1:`port` with its data in `folder`."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.folder / "prometheus.yml"

    def command(self) -> list[str]:
        found = binary()
        if found is None:
            raise PrometheusError(
                "prometheus is not installed: `make system-packages` (root, apt) installs it"
            )
        return [
            found,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=2d",
            "--log.level=warn",
        ]

    def write_config(self, stack: LocalStack, interval_seconds: float = 5.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "# Written by stack/prometheus.py for the local system. Do not edit.\n"
            + yaml.safe_dump(scrape_config(stack, interval_seconds), sort_keys=False)
        )

    def start(self, stack: LocalStack, interval_seconds: float = 5.0, timeout: float = 30) -> None:
        self.write_config(stack, interval_seconds)
        log = (self.folder / "prometheus.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited; see {self.folder / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready in {timeout:g}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, else PrometheusError with its error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) an expression evaluates to now."""
        data = self.api("query", query=expression)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        """Each active target's health, by its `pod` label."""
        data = self.api("targets")
        return {
            t["labels"].get("pod", t["scrapeUrl"]): t["health"] == "up"
            for t in data["activeTargets"]
        }


def main() -> int:
    stack = LocalStack.from_env()
    port = int(os.environ.get("PHONESELLER_LOCAL_PROMETHEUS_PORT", "9090"))
    server = Prometheus(stack.run_dir / "prometheus", port)
    if not stack.running():
        print("the local system is not running: `make up` first", file=sys.stderr)
        return 1
    try:
        server.start(stack)
    except PrometheusError as error:
        print(f"make observe: {error}", file=sys.stderr)
        return 1
    print(
        f"Prometheus on {server.url} scraping every replica and Envoy (config {server.config_path})"
    )
    print(f"  targets   {server.url}/targets")
    print(
        f"  try       {server.url}/graph?g0.expr=sum%20by%20(outcome)%20(phoneseller_orders_total)"
    )
    print("  dashboard helm/phoneseller/dashboards/phoneseller.json (Grafana: import it)")
    print("Ctrl-C stops it")
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
