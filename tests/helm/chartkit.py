"""Rendering the phoneseller chart with the real Helm engine and checking what comes out.

- `Rendered`: the objects one `helm template` of the chart produces, with lookups by kind/name.
- `validate_kubernetes`: kubernetes-validate, strict (unknown fields rejected), Kubernetes 1.31.
- `IstioSchemas`: the Istio 1.30.3 CRD schemas with `additionalProperties: false` added wherever
  a schema lists properties and does not preserve unknown fields, plus the CEL rules that
  matter for values written by hand (durations, ports).
- `descriptor_methods` / `documented_variables`: the facts the chart must agree with — the
  gRPC methods in gen/descriptors.binpb and the variables in docs/configuration.md.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import nkeys
import yaml
from google.protobuf.descriptor_pb2 import FileDescriptorSet

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "phoneseller"
EXAMPLES_DIR = CHART_DIR / "examples"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
CONFIGURATION_MD = REPO / "docs" / "configuration.md"
ISTIO_CRDS = Path(__file__).resolve().parent / "schemas" / "istio-1.30.3-crd-all.gen.yaml"

# The Kubernetes version the objects must be valid for: the oldest the chart supports is 1.30
# (Chart.yaml kubeVersion); 1.31 is pinned so that a kubernetes-validate upgrade changes nothing.
KUBERNETES_VERSION = "1.31.0"
RELEASE = "phoneseller"
NAMESPACE = "shop"
SERVICES = ("order", "payment", "promotion", "store", "customer")

Obj = dict[str, Any]
# libyaml's loader when PyYAML has it: the CRD file and the descriptor-laden manifests are big.
YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge values the way Helm coalesces them: maps merge, everything else is replaced."""
    merged = dict(copy.deepcopy(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def example_seed(n: int) -> str:
    """A fixed, well-formed nkey user seed (SU…) for values that need one."""
    seed: bytes = nkeys.encode_seed(bytes([n + 1]) * 32, nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def example_values(name: str) -> dict[str, Any]:
    """One of the chart's examples/*.yaml values files (the documented combinations)."""
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    return loaded


@dataclass(frozen=True)
class Rendered:
    """The objects of one render, the values given, and the values Helm actually used."""

    objects: list[Obj]
    values: dict[str, Any]
    notes: str

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"no {kind} {name} among {self.names(kind)}")

    def names(self, kind: str) -> list[str]:
        return [obj["metadata"]["name"] for obj in self.of_kind(kind)]

    def hooks(self) -> list[Obj]:
        return [obj for obj in self.objects if "helm.sh/hook" in annotations_of(obj)]


def annotations_of(obj: Obj) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("annotations") or {}
    return found


def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


def render(chart: helm_python.Chart, values: Mapping[str, Any] | None = None) -> Rendered:
    """Render like `helm template phoneseller -n shop` and parse every manifest."""
    given = dict(values or {})
    manifests = chart.render(values=given, name=RELEASE, namespace=NAMESPACE)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.load_all(text, Loader=YAML_LOADER):
            if document:
                assert isinstance(document, dict), f"{path}: a document is not a mapping"
                objects.append(document)
    return Rendered(objects=objects, values=chart.merge_values(given), notes=notes)


def validate_kubernetes(obj: Obj) -> None:
    """Raise kubernetes_validate.ValidationError unless obj is valid (strict: no unknown fields)."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


# --- Istio CRD schemas ---------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(\.\d+)?(ms|us|µs|ns|h|m|s))+$")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def duration_seconds(text: str) -> float:
    """A Go/Istio duration ("610ms", "1m30s") in seconds; ValueError if it is not one."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration")
    return sum(
        float(number) * _DURATION_UNITS[unit]
        for number, _, unit in re.findall(r"(\d+(\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    )


def _check_cel(instance: Any, rule: str) -> str | None:
    """The few x-kubernetes-validations rules worth checking offline; None = fine or unknown."""
    if rule == "duration(self) >= duration('1ms')" and isinstance(instance, str):
        try:
            ok = duration_seconds(instance) >= 1e-3
        except ValueError:
            ok = False
        return None if ok else f"{instance!r} is not a duration of at least 1ms"
    if rule == "0 < self && self <= 65535" and isinstance(instance, int):
        return None if 0 < instance <= 65535 else f"{instance} is not a port number"
    if rule == '!self.contains("*")' and isinstance(instance, str):
        return None if "*" not in instance else f"{instance!r} must not contain '*'"
    return None


def _cel_keyword(
    validator: Any, rules: list[dict[str, str]], instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    for rule in rules:
        problem = _check_cel(instance, rule["rule"])
        if problem:
            yield jsonschema.ValidationError(f"{problem} ({rule.get('message', rule['rule'])})")


# Draft 7 plus the CEL keyword (types-jsonschema leaves `extend` untyped).
_IstioValidator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel_keyword}
)


def close_schema(schema: Any) -> Any:
    """Add additionalProperties: false wherever properties are listed and unknown fields are
    not preserved, recursively: the API server would prune unknown fields silently."""
    if isinstance(schema, list):
        return [close_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: close_schema(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


_METADATA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class IstioSchemas:
    """Validators for Istio objects, keyed by (apiVersion, kind), from the CRD file."""

    def __init__(self, crds: Path = ISTIO_CRDS) -> None:
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for crd in yaml.load_all(crds.read_text(), Loader=YAML_LOADER):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                api_version = f"{group}/{version['name']}"
                schema = close_schema(version["schema"]["openAPIV3Schema"])
                schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
                schema["properties"].update(
                    apiVersion={"const": api_version},
                    kind={"const": kind},
                    metadata=_METADATA_SCHEMA,
                )
                self._validators[(api_version, kind)] = _IstioValidator(schema)

    def handles(self, obj: Obj) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self._validators

    def errors(self, obj: Obj) -> list[str]:
        """Every schema violation in obj, as "path: message"."""
        validator = self._validators[(obj["apiVersion"], obj["kind"])]
        return [
            f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]


# --- Facts the chart must agree with -------------------------------------------------------


def descriptor_set(data: bytes) -> FileDescriptorSet:
    return FileDescriptorSet.FromString(data)


def descriptor_methods(descriptors: FileDescriptorSet) -> set[str]:
    """Every gRPC path "/<package>.<Service>/<Method>" the descriptor set defines."""
    return {
        f"/{file.package}.{service.name}/{method.name}"
        for file in descriptors.file
        for service in file.service
        for method in service.method
    }


def descriptor_services(descriptors: FileDescriptorSet) -> set[str]:
    return {f"{f.package}.{s.name}" for f in descriptors.file for s in f.service}


@dataclass(frozen=True)
class Variable:
    name: str
    read_by: frozenset[str]  # service names; all five when the table says "all"


def documented_variables(text: str) -> list[Variable]:
    """The variables table of docs/configuration.md."""
    variables = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(PHONESELLER_[A-Z0-9_]+)`", cells[0]) if len(cells) >= 4 else None
        if not match:
            continue
        readers = {reader.strip() for reader in cells[2].split(",")}
        read_by = frozenset(SERVICES) if "all" in readers else frozenset(readers)
        assert read_by <= set(SERVICES), f"{match[1]}: unknown readers {read_by}"
        variables.append(Variable(match[1], read_by))
    return variables


def decoded_binary(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def principal_account(principal: str) -> tuple[str, str, str]:
    """(trust domain, namespace, service account) of a SPIFFE principal."""
    match = re.fullmatch(r"([^/]+)/ns/([^/]+)/sa/([^/]+)", principal)
    assert match, f"{principal!r} is not <trust domain>/ns/<namespace>/sa/<account>"
    return match[1], match[2], match[3]


@cache
def istio_schemas() -> IstioSchemas:
    return IstioSchemas()


# --- The values combinations every test runs against ------------------------------------------
# The chart's documented example values files (helm/phoneseller/examples), so what the docs show
# is what is tested, plus one combination that turns every optional feature on.

# Everything optional at once: PostgreSQL + HPA, a NATS cluster by its servers' URLs, fault
# injection, an HTTPS gateway for one host, the descriptor set read from a file, a
# revision-based Istio install, another image and name prefix.
EVERYTHING = deep_merge(
    deep_merge(
        deep_merge(
            example_values("postgres-values.yaml"),
            example_values("nats-cluster-values.yaml"),
        ),
        example_values("fault-values.yaml"),
    ),
    {
        "fullnameOverride": "shop",
        "nats": {
            "url": ",".join(f"nats://nats-{i}.nats-headless.nats:4222" for i in range(3)),
            # Seeds for the chart to store, so that its NATS Secrets are validated too.
            "auth": {"seeds": {service: example_seed(i) for i, service in enumerate(SERVICES)}},
        },
        "image": {"repository": "registry.example.com/phoneseller", "tag": "1.2.3"},
        "istio": {
            "revision": "1-30",
            "gateway": {
                "hosts": ["shop.example.com"],
                "tls": {"enabled": True, "credentialName": "shop-example-com"},
            },
            "jsonTranscoding": {"descriptorSource": "file"},
        },
        # Traces (a Telemetry resource) and the Grafana dashboards' ConfigMaps; the PodMonitor
        # (no Kubernetes or Istio schema) is validated in test_chart_observability.py.
        "observability": {"tracing": {"enabled": True}, "dashboards": {"enabled": True}},
    },
)

COMBINATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "istio-off": example_values("no-istio-values.yaml"),
    "postgres-hpa": example_values("postgres-values.yaml"),
    "nats-cluster": example_values("nats-cluster-values.yaml"),
    "fault-injection": example_values("fault-values.yaml"),
    "everything": EVERYTHING,
}
