"""Every service's pods get that service's NATS credentials and no other's (nats.auth), and the
NATS chart example grants what the local stack grants (stack/nats.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import helm_python
import pytest
import yaml

from stack.nats import ADMIN_GRANT, SERVICE_GRANTS, chart_env_name
from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered

RenderValues = Callable[[dict[str, Any]], Rendered]
MOUNT = "/var/run/secrets/phoneseller/nats"


def pod(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def service_of(deployment: Obj) -> str:
    name: str = deployment["spec"]["template"]["metadata"]["labels"]["app"]
    return name


def nats_volume(deployment: Obj) -> Obj | None:
    return next((v for v in pod(deployment)["volumes"] if v["name"] == "nats-credentials"), None)


def env_value(deployment: Obj, name: str) -> str:
    [container] = pod(deployment)["containers"]
    [value] = [e["value"] for e in container["env"] if e["name"] == name]
    assert isinstance(value, str)
    return value


def test_every_deployment_mounts_its_own_nats_seed_only(rendered: Rendered) -> None:
    auth = rendered.values["nats"]["auth"]
    secrets: dict[str, str] = {}
    for deployment in rendered.of_kind("Deployment"):
        service = service_of(deployment)
        volume = nats_volume(deployment)
        assert volume is not None, service
        secret = volume["secret"]
        # One key of one Secret, readable by the pod's group (fsGroup) and nobody else.
        assert secret["items"] == [{"key": auth["secretKey"], "path": "nkey"}]
        assert secret["defaultMode"] == 0o440
        [container] = pod(deployment)["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "nats-credentials"]
        assert mount == {"name": "nats-credentials", "mountPath": MOUNT, "readOnly": True}
        assert env_value(deployment, "PHONESELLER_NATS_NKEY_FILE") == f"{MOUNT}/nkey"
        secrets[service] = secret["secretName"]
    assert len(set(secrets.values())) == len(secrets), f"a Secret shared: {secrets}"
    prefix = rendered.values.get("fullnameOverride") or chartkit.RELEASE
    for service, name in secrets.items():
        existing = auth["existingSecrets"].get(service)
        assert name == (existing or f"{prefix}-{service}-nats")


def test_seeds_in_values_become_one_secret_per_service(render_values: RenderValues) -> None:
    seeds = {s: chartkit.example_seed(i) for i, s in enumerate(chartkit.SERVICES)}
    rendered = render_values({"nats": {"auth": {"seeds": seeds}}})
    for deployment in rendered.of_kind("Deployment"):
        service = service_of(deployment)
        volume = nats_volume(deployment)
        assert volume is not None
        secret = rendered.get("Secret", volume["secret"]["secretName"])
        assert secret["stringData"] == {"nkey": seeds[service]}, service
        assert secret["metadata"]["labels"]["app"] == service


def test_an_existing_secret_is_mounted_not_made(render_values: RenderValues) -> None:
    rendered = render_values({"nats": {"auth": {"existingSecrets": {"promotion": "points-nats"}}}})
    volume = nats_volume(rendered.get("Deployment", "phoneseller-promotion"))
    assert volume is not None and volume["secret"]["secretName"] == "points-nats"
    assert not [n for n in rendered.names("Secret") if n.endswith("-nats")], "you make them"


def test_without_auth_nothing_is_mounted(render_values: RenderValues) -> None:
    rendered = render_values({"nats": {"auth": {"enabled": False}}})
    for deployment in rendered.of_kind("Deployment"):
        assert nats_volume(deployment) is None
        assert env_value(deployment, "PHONESELLER_NATS_NKEY_FILE") == ""


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"seeds": {"promotoin": chartkit.example_seed(0)}}, 'there is no service "promotoin"'),
        ({"existingSecrets": {"ordr": "x"}}, 'there is no service "ordr"'),
        (
            {"seeds": {"order": chartkit.example_seed(0)}, "existingSecrets": {"order": "x"}},
            "either a seed or an existing Secret",
        ),
        ({"seeds": {"order": "not-a-seed"}}, "does not match pattern"),
    ],
)
def test_bad_nats_credentials_values_are_refused(
    chart: helm_python.Chart, auth: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        chartkit.render(chart, {"nats": {"auth": auth}})


def test_the_nats_chart_example_grants_what_the_local_stack_grants() -> None:
    values = yaml.safe_load((chartkit.EXAMPLES_DIR / "nats-auth-values.yaml").read_text())
    users = values["config"]["merge"]["authorization"]["users"]
    expected = [
        {"nkey": f"<< ${chart_env_name(grant.user)} >>"}
        | ({"permissions": permissions} if (permissions := grant.permissions()) else {})
        for grant in [*SERVICE_GRANTS.values(), ADMIN_GRANT]
    ]
    assert users == expected
