"""The storefront's routes in the rendered gateway (mesh/storefront.py): every file of
web/storefront/ is served as a direct response before the catch-all, within the route
table's body limit, and Envoy accepts the configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from mesh.envoy import write_envoy_config
from mesh.process import envoy_binary
from mesh.storefront import PREFIX, STOREFRONT_DIR, Storefront
from stack.supervisor import LocalStack


def gateway_routes(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "gateway")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route_config = hcm["route_config"]
    return route_config, route_config["virtual_hosts"][0]["routes"]


@pytest.fixture
def rendered(tmp_path: Path) -> dict[str, Any]:
    from mesh.envoy import render_envoy_config
    from mesh.policy import load_policy
    from stack.supervisor import DESCRIPTORS, VALUES

    stack = LocalStack(run_dir=tmp_path)
    return render_envoy_config(
        load_policy(VALUES), stack.topology(), DESCRIPTORS, options=stack.render_options()
    )


def test_every_file_is_served_before_the_catch_all(rendered: dict[str, Any]) -> None:
    route_config, routes = gateway_routes(rendered)
    names = [r["name"] for r in routes]
    assert names[-1] == "closed"
    served = {
        r["match"]["path"]: Path(r["direct_response"]["body"]["filename"])
        for r in routes
        if r["name"].startswith("storefront.") and "direct_response" in r
    }
    files = sorted(p for p in STOREFRONT_DIR.iterdir() if p.is_file())
    assert {PREFIX + p.name for p in files} | {PREFIX} == set(served)
    assert served[PREFIX] == STOREFRONT_DIR / "index.html"
    largest = max(p.stat().st_size for p in files)
    assert route_config["max_direct_response_body_size_bytes"] >= largest
    assert all(names.index(f"storefront.{p.name}") < len(names) - 1 for p in files)


def test_without_a_storefront_nothing_changes(tmp_path: Path) -> None:
    from mesh.envoy import RenderOptions, render_envoy_config
    from mesh.policy import load_policy
    from stack.supervisor import DESCRIPTORS, VALUES

    config = render_envoy_config(
        load_policy(VALUES),
        LocalStack(run_dir=tmp_path).topology(),
        DESCRIPTORS,
        options=RenderOptions(),
    )
    route_config, routes = gateway_routes(config)
    assert "max_direct_response_body_size_bytes" not in route_config
    assert not [r for r in routes if r["name"].startswith("storefront.")]


def test_envoy_accepts_the_gateway_with_the_page(rendered: dict[str, Any], tmp_path: Path) -> None:
    path = write_envoy_config(rendered, tmp_path / "envoy.yaml")
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_folder_without_a_page_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no storefront page"):
        Storefront(tmp_path).routes()
