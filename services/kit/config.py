"""Settings read from `PHONESELLER_*` environment variables.

docs/configuration.md lists every variable; this module reads exactly those, so the two must
change together (tests/helm checks the chart provides each one).
"""

from __future__ import annotations

import os
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import services
from services.kit import catalog
from services.kit.events import DUPLICATE_WINDOW_SECONDS


def _service_names() -> tuple[str, ...]:
    """The services of the chart's values, or (an installed image, where the chart sets every
    setting) the service packages that are installed."""
    if catalog.available():
        return catalog.catalog().names
    return tuple(
        sorted(
            m.name for m in pkgutil.iter_modules(services.__path__) if m.ispkg and m.name != "kit"
        )
    )


SERVICE_NAMES = _service_names()

#: Each service's port on one machine (none in an installed image: the chart sets the port).
DEFAULT_PORTS = catalog.catalog().local_ports if catalog.available() else {}


def default_metrics_port(grpc_port: int) -> int:
    """Where a service serves Prometheus metrics on one machine: 94xx beside its gRPC port
    500xx (order 50051 -> 9451, its second replica 50061 -> 9461)."""
    return 9400 + grpc_port % 100


class ConfigError(ValueError):
    """A setting is missing or malformed; the process cannot start."""


@dataclass(frozen=True)
class Settings:
    """Everything a service process reads from its environment."""

    service: str
    grpc_host: str
    grpc_port: int
    data_dir: Path
    database_url: str
    nats_url: str
    #: This service's NATS nkey seed file ("": connect without credentials).
    nats_nkey_file: str
    stream_replicas: int
    stream_max_age_seconds: float
    stream_max_bytes: int
    inbox_retention_seconds: float
    payment_address: str
    promotion_address: str
    points_rate_percent: int
    payment_decline_above: int
    store_auto_ship_delay_seconds: float
    log_level: str
    shutdown_grace_seconds: float
    shutdown_drain_seconds: float
    #: Port of the Prometheus metrics endpoint (`GET /metrics` on grpc_host); 0 = none.
    metrics_port: int = 0

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @classmethod
    def from_env(cls, service: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(f"PHONESELLER_{name}", default).strip() or default

        def get_int(name: str, default: int) -> int:
            raw = get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"PHONESELLER_{name} must be an integer, got {raw!r}") from None

        def get_required_int(name: str, default: int | None) -> int:
            if default is None and not env.get(f"PHONESELLER_{name}", "").strip():
                raise ConfigError(f"PHONESELLER_{name} is required here (no default)")
            return get_int(name, default or 0)

        def peer(name: str) -> str:
            port = DEFAULT_PORTS.get(name)
            return get(f"{name.upper()}_ADDRESS", f"127.0.0.1:{port}" if port else "")

        def get_float(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"PHONESELLER_{name} must be a number, got {raw!r}") from None

        service = service or get("SERVICE", "")
        if service not in SERVICE_NAMES:
            raise ConfigError(f"unknown service {service!r}; expected one of {SERVICE_NAMES}")
        data_dir = Path(get("DATA_DIR", ".run/data"))
        settings = cls(
            service=service,
            grpc_host=get("GRPC_HOST", "127.0.0.1"),
            grpc_port=get_required_int("GRPC_PORT", DEFAULT_PORTS.get(service)),
            data_dir=data_dir,
            database_url=get("DATABASE_URL", f"sqlite:///{data_dir / service}.db"),
            nats_url=get("NATS_URL", "nats://127.0.0.1:4222"),
            nats_nkey_file=get("NATS_NKEY_FILE", ""),
            stream_replicas=get_int("STREAM_REPLICAS", 1),
            stream_max_age_seconds=get_float("STREAM_MAX_AGE_SECONDS", 0.0),
            stream_max_bytes=get_int("STREAM_MAX_BYTES", 0),
            inbox_retention_seconds=get_float("INBOX_RETENTION_SECONDS", 300.0),
            payment_address=peer("payment"),
            promotion_address=peer("promotion"),
            points_rate_percent=get_int("POINTS_RATE_PERCENT", 10),
            payment_decline_above=get_int("PAYMENT_DECLINE_ABOVE", 5_000_000),
            store_auto_ship_delay_seconds=get_float("STORE_AUTO_SHIP_DELAY_SECONDS", 0.0),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            shutdown_grace_seconds=get_float("SHUTDOWN_GRACE_SECONDS", 10.0),
            shutdown_drain_seconds=get_float("SHUTDOWN_DRAIN_SECONDS", 2.0),
            metrics_port=get_int(
                "METRICS_PORT",
                default_metrics_port(DEFAULT_PORTS[service]) if service in DEFAULT_PORTS else 0,
            ),
        )
        if not 0 <= settings.points_rate_percent <= 100:
            raise ConfigError("PHONESELLER_POINTS_RATE_PERCENT must be between 0 and 100")
        if settings.stream_replicas not in (1, 3, 5):
            raise ConfigError("PHONESELLER_STREAM_REPLICAS must be 1, 3 or 5")
        if settings.nats_nkey_file and not Path(settings.nats_nkey_file).is_file():
            # Fail at start rather than retry a connection that can never authenticate.
            raise ConfigError(f"PHONESELLER_NATS_NKEY_FILE: no file {settings.nats_nkey_file}")
        if settings.stream_max_age_seconds < 0 or settings.stream_max_bytes < 0:
            raise ConfigError("PHONESELLER_STREAM_MAX_AGE_SECONDS and _MAX_BYTES must be >= 0")
        if settings.inbox_retention_seconds < DUPLICATE_WINDOW_SECONDS:
            # A republished copy of an event is refused by JetStream only within its duplicate
            # window; the inbox must remember the id at least that long.
            raise ConfigError(
                "PHONESELLER_INBOX_RETENTION_SECONDS must be at least the stream's duplicate "
                f"window ({DUPLICATE_WINDOW_SECONDS:g} s)"
            )
        return settings
