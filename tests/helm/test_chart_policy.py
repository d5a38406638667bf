"""Policy on the rendered Kubernetes objects: what every service must have, and the rules
that keep data safe (one SQLite writer) and settings complete (docs/configuration.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.helm import chartkit
from tests.helm.chartkit import Obj, Rendered, Variable

GRPC_PORT = 50051
RenderValues = Callable[[dict[str, Any]], Rendered]


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: Obj) -> Obj:
    containers: list[Obj] = pod_spec(deployment)["containers"]
    assert len(containers) == 1, "one container per pod (Istio adds its sidecar)"
    return containers[0]


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def service_of(deployment: Obj) -> str:
    return pod_labels(deployment)["app"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def config_data(rendered: Rendered) -> dict[str, str]:
    (config_map,) = [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")
    ]
    data: dict[str, str] = config_map["data"]
    return data


def uses_pvc(deployment: Obj) -> bool:
    return any("persistentVolumeClaim" in volume for volume in pod_spec(deployment)["volumes"])


# --- Every Deployment -------------------------------------------------------------------------


def test_every_deployment_has_the_three_grpc_probes(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        c = container(deployment)
        assert c["startupProbe"]["grpc"] == {"port": GRPC_PORT, "service": ""}
        assert c["readinessProbe"]["grpc"] == {"port": GRPC_PORT, "service": ""}
        # Liveness never asks the overall health, which depends on the database.
        assert c["livenessProbe"]["grpc"] == {"port": GRPC_PORT, "service": "phoneseller.liveness"}


def test_liveness_is_more_patient_than_readiness(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        c = container(deployment)
        liveness, readiness = c["livenessProbe"], c["readinessProbe"]
        patience = liveness["periodSeconds"] * liveness["failureThreshold"]
        assert patience > readiness["periodSeconds"] * readiness["failureThreshold"]


def test_every_deployment_has_requests_and_limits(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        resources = container(deployment)["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (deployment["metadata"]["name"], kind)


def test_every_pod_is_hardened(rendered: Rendered) -> None:
    pods = [pod_spec(d) for d in rendered.of_kind("Deployment")] + [
        p["spec"] for p in rendered.of_kind("Pod")
    ]
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            context = c["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"


def test_every_deployment_runs_as_its_own_service_account(rendered: Rendered) -> None:
    accounts = set(rendered.names("ServiceAccount"))
    for deployment in rendered.of_kind("Deployment"):
        account = pod_spec(deployment)["serviceAccountName"]
        assert account in accounts
        assert account == deployment["metadata"]["name"]


def test_every_deployment_runs_one_service_of_the_one_image(rendered: Rendered) -> None:
    images = {container(d)["image"] for d in rendered.of_kind("Deployment")}
    assert len(images) == 1
    tag = rendered.values["image"]["tag"] or "0.1.0"  # the chart's appVersion
    assert images == {f"{rendered.values['image']['repository']}:{tag}"}
    assert sorted(service_of(d) for d in rendered.of_kind("Deployment")) == sorted(
        chartkit.SERVICES
    )
    for deployment in rendered.of_kind("Deployment"):
        service = service_of(deployment)
        c = container(deployment)
        assert c["command"] == ["phoneseller-server", service]
        assert {"name": "PHONESELLER_SERVICE", "value": service} in c["env"]
        metrics = rendered.values["observability"]["metrics"]["port"]
        assert c["ports"] == [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http-metrics", "containerPort": metrics, "protocol": "TCP"},
        ]


def test_every_object_carries_the_recommended_labels(rendered: Rendered) -> None:
    required = {
        f"app.kubernetes.io/{k}"
        for k in ("name", "instance", "component", "part-of", "version", "managed-by")
    }
    for obj in rendered.objects:
        assert required <= set(obj["metadata"]["labels"]), (obj["kind"], obj["metadata"]["name"])
    for deployment in rendered.of_kind("Deployment"):
        labels = pod_labels(deployment)
        assert {"app", "version"} <= set(labels), "Kiali's app and version labels"
        assert required <= set(labels)


def test_termination_grace_outlasts_the_graceful_shutdown(rendered: Rendered) -> None:
    """preStop pause, then (after SIGTERM) the drain and the grace: all before the kill."""
    data = config_data(rendered)
    drain = float(data["PHONESELLER_SHUTDOWN_DRAIN_SECONDS"])
    grace = float(data["PHONESELLER_SHUTDOWN_GRACE_SECONDS"])
    for deployment in rendered.of_kind("Deployment"):
        pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        stopping = pre_stop + drain + grace
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > stopping
        if rendered.values["istio"]["enabled"]:
            # The sidecar keeps forwarding the service's own calls until it is done.
            proxy = json.loads(
                deployment["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
            )
            assert chartkit.duration_seconds(proxy["terminationDrainDuration"]) >= stopping


def test_pods_name_the_service_metrics_port_for_scraping(rendered: Rendered) -> None:
    """The prometheus.io annotations name the service's own metrics port, with or without Istio:
    Istio's metrics merging reads them and serves those metrics beside the sidecar's on 15020
    (docs/observability.md)."""
    port = rendered.values["observability"]["metrics"]["port"]
    for deployment in rendered.of_kind("Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        assert ports["http-metrics"] == port


# --- Services -------------------------------------------------------------------------------


def test_every_service_port_is_grpc(rendered: Rendered) -> None:
    deployments = rendered.of_kind("Deployment")
    for service in rendered.of_kind("Service"):
        for port in service["spec"]["ports"]:
            assert port["name"] == "grpc"
            assert port["appProtocol"] == "grpc"
            assert port["port"] == GRPC_PORT
        backends = [d for d in deployments if selects(service["spec"]["selector"], pod_labels(d))]
        assert len(backends) == 1, (
            f"{service['metadata']['name']} selects {len(backends)} Deployments"
        )
        target = service["spec"]["ports"][0]["targetPort"]
        assert target in {p["name"] for p in container(backends[0])["ports"]}


# --- Settings: the ConfigMap and the Secrets hold every variable a service reads --------------


def provided_variables(rendered: Rendered, deployment: Obj) -> dict[str, str]:
    """Every variable the pod gets, with its value where the chart knows it."""
    c = container(deployment)
    found: dict[str, str] = {}
    for source in c.get("envFrom", []):
        config_map = rendered.get("ConfigMap", source["configMapRef"]["name"])
        found.update(config_map["data"])
    for env in c["env"]:
        if "value" in env:
            found[env["name"]] = env["value"]
            continue
        ref = env["valueFrom"]["secretKeyRef"]
        if ref["name"] in rendered.names("Secret"):
            secret = rendered.get("Secret", ref["name"])
            assert ref["key"] in secret["stringData"], f"{ref['name']} has no key {ref['key']}"
            found[env["name"]] = secret["stringData"][ref["key"]]
        else:  # database.existingSecret: the operator's Secret
            found[env["name"]] = "<existing secret>"
    return found


def test_every_variable_a_service_reads_is_provided(
    rendered: Rendered, variables: list[Variable]
) -> None:
    for deployment in rendered.of_kind("Deployment"):
        service = service_of(deployment)
        provided = provided_variables(rendered, deployment)
        needed = {v.name for v in variables if service in v.read_by}
        assert needed <= set(provided), f"{service} lacks {needed - set(provided)}"


def test_every_variable_the_chart_sets_is_documented(
    rendered: Rendered, variables: list[Variable]
) -> None:
    documented = {v.name for v in variables}
    for deployment in rendered.of_kind("Deployment"):
        ours = {
            name
            for name in provided_variables(rendered, deployment)
            if name.startswith("PHONESELLER_")
        }
        assert ours <= documented, f"not in docs/configuration.md: {ours - documented}"


def test_the_config_map_says_what_the_values_say(rendered: Rendered) -> None:
    data = config_data(rendered)
    values = rendered.values
    assert data["PHONESELLER_GRPC_HOST"] == "0.0.0.0"
    assert data["PHONESELLER_GRPC_PORT"] == str(GRPC_PORT)
    assert data["PHONESELLER_DATA_DIR"] == values["persistence"]["mountPath"]
    assert data["PHONESELLER_NATS_URL"] == values["nats"]["url"]
    assert data["PHONESELLER_STREAM_REPLICAS"] == str(values["nats"]["streamReplicas"])
    assert data["PHONESELLER_STREAM_MAX_AGE_SECONDS"] == str(values["nats"]["streamMaxAgeSeconds"])
    assert data["PHONESELLER_INBOX_RETENTION_SECONDS"] == str(
        values["nats"]["inboxRetentionSeconds"]
    )
    assert data["PHONESELLER_PAYMENT_DECLINE_ABOVE"] == str(values["config"]["paymentDeclineAbove"])
    assert data["PHONESELLER_LOG_LEVEL"] == values["config"]["logLevel"]
    # The calls between services go to the in-cluster Services (through the sidecars).
    for variable, callee in (
        ("PHONESELLER_PAYMENT_ADDRESS", "payment"),
        ("PHONESELLER_PROMOTION_ADDRESS", "promotion"),
    ):
        host, port = data[variable].rsplit(":", 1)
        assert port == str(GRPC_PORT)
        name, namespace = host.split(".")[:2]
        assert namespace == chartkit.NAMESPACE
        assert name in rendered.names("Service")
        assert service_of(rendered.get("Deployment", name)) == callee


def test_nats_cluster_combination_sets_three_stream_replicas(render_values: RenderValues) -> None:
    rendered = render_values(chartkit.example_values("nats-cluster-values.yaml"))
    data = config_data(rendered)
    assert data["PHONESELLER_STREAM_REPLICAS"] == "3"
    assert data["PHONESELLER_NATS_URL"] == "nats://nats.nats.svc.cluster.local:4222"


def test_changing_the_settings_rolls_every_pod(render_values: RenderValues) -> None:
    before = render_values({})
    after = render_values({"config": {"logLevel": "DEBUG"}})
    for deployment in before.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        old = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        new = after.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        assert old != new, name


def test_changing_a_database_url_rolls_only_that_service(render_values: RenderValues) -> None:
    url = "postgresql+asyncpg://store@postgresql/store"
    before = render_values(
        {"services": {"store": {"database": {"engine": "postgresql", "url": url}}}}
    )
    after = render_values(
        {"services": {"store": {"database": {"engine": "postgresql", "url": url + "2"}}}}
    )
    changed = {
        d["metadata"]["name"]
        for d in before.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["annotations"]["checksum/database"]
        != after.get("Deployment", d["metadata"]["name"])["spec"]["template"]["metadata"][
            "annotations"
        ]["checksum/database"]
    }
    assert changed == {"phoneseller-store"}


# --- Persistence and scaling ----------------------------------------------------------------


def test_sqlite_services_keep_one_writer_on_their_volume(rendered: Rendered) -> None:
    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in rendered.of_kind("HorizontalPodAutoscaler")
    }
    data_dir = config_data(rendered)["PHONESELLER_DATA_DIR"]
    for deployment in rendered.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        url = provided_variables(rendered, deployment)["PHONESELLER_DATABASE_URL"]
        if not url.startswith("sqlite"):
            assert not uses_pvc(deployment), name
            continue
        assert uses_pvc(deployment), name
        assert deployment["spec"]["replicas"] == 1, name
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name
        assert name not in hpa_targets, name
        assert url.startswith(f"sqlite:///{data_dir}/"), "the file is on the volume"
        (claim,) = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(deployment)["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert rendered.get("PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
            "ReadWriteOnce"
        ]
        mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
        volume = next(
            v["name"] for v in pod_spec(deployment)["volumes"] if "persistentVolumeClaim" in v
        )
        assert mounts[volume] == data_dir


def test_postgresql_services_roll_without_downtime(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for deployment in rendered.of_kind("Deployment"):
        service = service_of(deployment)
        if rendered.values["services"][service]["database"]["engine"] != "postgresql":
            continue
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        covering = [
            b
            for b in budgets
            if selects(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(covering) == 1, f"{service}: one PodDisruptionBudget"


def test_every_autoscaler_targets_a_deployment_with_cpu_requests(rendered: Rendered) -> None:
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = rendered.get("Deployment", target["name"])
        assert "cpu" in container(deployment)["resources"]["requests"]
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_postgres_combination_autoscales_promotion_like_the_seed(
    render_values: RenderValues,
) -> None:
    rendered = render_values(chartkit.example_values("postgres-values.yaml"))
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "phoneseller-promotion"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 20
    # Polyglot: promotion and store on PostgreSQL, the others keep SQLite.
    engines = {s: v["database"]["engine"] for s, v in rendered.values["services"].items()}
    assert engines == {
        "order": "sqlite",
        "payment": "sqlite",
        "promotion": "postgresql",
        "store": "postgresql",
        "customer": "sqlite",
    }
    store = rendered.get("Deployment", "phoneseller-store")
    ref = next(e for e in container(store)["env"] if e["name"] == "PHONESELLER_DATABASE_URL")
    assert ref["valueFrom"]["secretKeyRef"] == {
        "name": "store-database",
        "key": "PHONESELLER_DATABASE_URL",
    }
    assert store["spec"]["replicas"] == 2


@pytest.mark.parametrize("service", chartkit.SERVICES)
def test_by_default_every_service_is_one_sqlite_pod(default_render: Rendered, service: str) -> None:
    deployment = default_render.get("Deployment", f"phoneseller-{service}")
    assert deployment["spec"]["replicas"] == 1
    assert uses_pvc(deployment)
    assert not default_render.of_kind("HorizontalPodAutoscaler")
    assert not default_render.of_kind("PodDisruptionBudget")


# --- helm test ------------------------------------------------------------------------------


def test_the_test_hook_checks_every_service(rendered: Rendered) -> None:
    (pod,) = rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == container(rendered.of_kind("Deployment")[0])["image"], "the same image"
    env = {e["name"]: e["value"] for e in c["env"]}
    checked = dict(entry.split("=", 1) for entry in env["PHONESELLER_TEST_SERVICES"].split(","))
    assert sorted(checked) == sorted(chartkit.SERVICES)
    for service, address in checked.items():
        assert address == config_address(rendered, service)
    if rendered.values["istio"]["enabled"]:
        assert (
            env["PHONESELLER_TEST_GATEWAY"] == rendered.values["istio"]["ingressGateway"]["address"]
        )
        assert env["PHONESELLER_TEST_QUIT_SIDECAR"] == "1"
    else:
        assert env["PHONESELLER_TEST_GATEWAY"] == config_address(rendered, "order")
    assert all(h["metadata"]["annotations"]["helm.sh/hook"] == "test" for h in rendered.hooks())


def config_address(rendered: Rendered, service: str) -> str:
    name = next(
        d["metadata"]["name"] for d in rendered.of_kind("Deployment") if service_of(d) == service
    )
    return f"{name}.{chartkit.NAMESPACE}.svc.cluster.local:{GRPC_PORT}"
