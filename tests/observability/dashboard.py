"""The shipped Grafana dashboard's queries, and how to evaluate them outside Grafana."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "helm" / "phoneseller" / "dashboards" / "phoneseller.json"
)

#: Grafana's variables, as an instant query outside Grafana reads them: the last five minutes,
#: rates over fifteen seconds (four scrapes at the tests' one-second interval), every service.
VARIABLES = {"$__rate_interval": "15s", "$__range": "5m", "$app": ".*"}


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    board = dashboard or load()
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def instant(expression: str) -> str:
    """The expression with Grafana's variables replaced by values Prometheus takes."""
    for name, replacement in VARIABLES.items():
        expression = expression.replace(name, replacement)
    return expression
