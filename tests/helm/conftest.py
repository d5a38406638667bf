"""Fixtures of the chart tests: the chart, rendered once per values combination per session
(the combinations are in chartkit.COMBINATIONS)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import helm_python
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from tests.helm import chartkit
from tests.helm.chartkit import Rendered


@pytest.fixture(scope="session")
def chart() -> helm_python.Chart:
    return chartkit.load_chart()


@pytest.fixture(scope="session")
def render_values(chart: helm_python.Chart) -> Callable[[Mapping[str, Any]], Rendered]:
    """Render with some values; each distinct set of values is rendered once per session."""
    renders: dict[str, Rendered] = {}

    def render(values: Mapping[str, Any]) -> Rendered:
        key = json.dumps(values, sort_keys=True)
        if key not in renders:
            renders[key] = chartkit.render(chart, values)
        return renders[key]

    return render


@pytest.fixture(scope="session", params=list(chartkit.COMBINATIONS))
def rendered(request: pytest.FixtureRequest, render_values: Callable[..., Rendered]) -> Rendered:
    """The chart rendered with each combination in turn."""
    return render_values(chartkit.COMBINATIONS[request.param])


@pytest.fixture(scope="session")
def default_render(render_values: Callable[..., Rendered]) -> Rendered:
    return render_values({})


@pytest.fixture(scope="session")
def descriptors() -> FileDescriptorSet:
    if not chartkit.DESCRIPTORS.is_file():
        pytest.skip(f"{chartkit.DESCRIPTORS} does not exist yet (make protos)")
    return chartkit.descriptor_set(chartkit.DESCRIPTORS.read_bytes())


@pytest.fixture(scope="session")
def rpc_paths(descriptors: FileDescriptorSet) -> set[str]:
    return chartkit.descriptor_methods(descriptors)


@pytest.fixture(scope="session")
def variables() -> list[chartkit.Variable]:
    found = chartkit.documented_variables(chartkit.CONFIGURATION_MD.read_text())
    assert len(found) >= 10, "the variables table of docs/configuration.md was not found"
    return found
