"""docs/openapi/phoneseller.swagger.json: generated from the protos, complete, and what it says.

- no drift: scripts/gen_openapi.py (grpc-gateway's protoc-gen-swagger, Debian's
  golang-grpc-gateway) writes exactly the committed file;
- every HTTP rule of the descriptor set the gateway transcodes with is an operation, with its
  gRPC method and the roles of the chart's values;
- a valid Swagger 2.0 document, whose every operation needs the bearer token and answers
  errors with a google.rpc.Status.

Bodies from the running gateway are checked against it in tests/e2e/test_http_api.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate as validate_spec

from services.kit.catalog import catalog
from tests.support.openapi import document, validate_definition

REPO = Path(__file__).resolve().parents[2]
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"


def http_rules() -> dict[tuple[str, str], str]:
    """(HTTP method, path template) → gRPC path, from the descriptor set."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    rules: dict[tuple[str, str], str] = {}
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    assert verb is not None and verb != "custom"
                    grpc_path = f"/{file.package}.{service.name}/{method.name}"
                    rules[(verb, getattr(binding, verb))] = grpc_path
    return rules


def test_the_committed_document_is_what_the_generator_writes() -> None:
    if shutil.which("protoc-gen-swagger") is None:
        message = (
            "protoc-gen-swagger (Debian's golang-grpc-gateway) is not installed "
            "(scripts/install_system_packages.sh, as root, installs it): the OpenAPI document "
            "was NOT checked for drift"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        print(f"\n!!! {message}", file=sys.stderr)
        pytest.skip(message)
    result = subprocess.run(
        [sys.executable, "scripts/gen_openapi.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_route_of_the_descriptor_set_is_an_operation() -> None:
    rules = http_rules()
    assert len(rules) >= 8
    described = {
        (verb, path): operation
        for path, operations in document()["paths"].items()
        for verb, operation in operations.items()
    }
    assert set(described) == set(rules)
    roles = catalog().roles_by_path
    for route, grpc_path in rules.items():
        operation = described[route]
        assert operation["x-phoneseller-grpc-method"] == grpc_path
        assert operation["x-phoneseller-roles"] == list(roles[grpc_path]), route


def test_it_is_valid_swagger_with_bearer_tokens_and_status_errors() -> None:
    spec = document()
    validate_spec(spec)
    bearer = spec["securityDefinitions"]["bearer"]
    assert (bearer["type"], bearer["in"], bearer["name"]) == ("apiKey", "header", "Authorization")
    status = {"$ref": "#/definitions/rpcStatus"}
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            assert operation["security"] == [{"bearer": []}], (verb, path)
            for code in ("default", "401", "403"):
                assert operation["responses"][code]["schema"] == status, (verb, path, code)


def test_the_error_schemas_accept_a_status_and_reject_camel_case() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1s"}
    body = {"code": 14, "message": "try again shortly", "details": [retry]}
    validate_definition(body, "rpcStatus")
    validate_definition({"retry_delay": "1s"}, "rpcRetryInfo")
    with pytest.raises(Exception, match="retryDelay"):
        validate_definition({"retryDelay": "1s"}, "rpcRetryInfo")
