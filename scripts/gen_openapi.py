#!/usr/bin/env python3
"""Generate the OpenAPI (Swagger 2.0) description of the HTTP/JSON API from the protos.

    python scripts/gen_openapi.py           # write docs/openapi/phoneseller.swagger.json
    python scripts/gen_openapi.py --check   # exit 1 with a diff if the committed file drifted

The generator is grpc-gateway's `protoc-gen-swagger`, from Debian's `golang-grpc-gateway`
package (scripts/system-packages.txt; `make system-packages` installs it). It reads the same
`google.api.http` rules as the gateway's transcoder, with protoc from grpcio-tools and the
googleapis sources that `scripts/gen_protos.py --deps-only` prepares.

Debian ships grpc-gateway 1.6, whose plugin has two limits that this script works around:

1. One protoc run may hold only one proto package, so the plugin runs once per contract with
   HTTP rules, and the script merges the documents (a definition two documents share, such as
   an enum, must be identical in both, else the script stops).
2. It has no option for security schemes or error responses, and the `protoc-gen-swagger`
   annotations would make every contract import a proto that the other languages' users would
   then need too. So a small post-processing step, below and nowhere else, adds what the
   gateway does beside the transcoding (mesh/edge.py):
   - the bearer token (`securityDefinitions.bearer`, required by every operation), and per
     operation the roles that may call it (`x-phoneseller-roles`, from the chart's values
     through services/kit/catalog.py) and its gRPC method (`x-phoneseller-grpc-method`);
   - the error responses: `default`, 401 and 403 are a `google.rpc.Status` (`rpcStatus`),
     whose `details` are `google.protobuf.Any` values; the detail messages the services and
     the gateway send are described too (`rpcErrorInfo`, `rpcRetryInfo`, …), derived from
     their descriptors in googleapis-common-protos;
   - the title, version and description.

Field names are the proto names (`order_id`), as the gateway prints them
(`preserve_proto_field_names`); 64-bit integers are strings and enums their names, as in
proto3's JSON mapping.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import gen_protos  # noqa: E402  (beside this script: the proto include paths)

from services.kit.catalog import catalog  # noqa: E402

OUT = REPO / "docs" / "openapi" / "phoneseller.swagger.json"
DESCRIPTORS = REPO / "gen" / "descriptors.binpb"
PLUGIN = "protoc-gen-swagger"
#: The API's version: the proto packages' (phoneseller.*.v1), not the server's release.
API_VERSION = "v1"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

Json = dict[str, Any]

STATUS = "rpcStatus"
ANY = "protobufAny"
#: The details the services (services/kit/errors.py) and the gateway (mesh/edge.py) send.
DETAIL_MESSAGES: tuple[Descriptor, ...] = (
    error_details_pb2.ErrorInfo.DESCRIPTOR,
    error_details_pb2.RetryInfo.DESCRIPTOR,
    error_details_pb2.BadRequest.DESCRIPTOR,
    error_details_pb2.PreconditionFailure.DESCRIPTOR,
    error_details_pb2.ResourceInfo.DESCRIPTOR,
)

DESCRIPTION = """\
The HTTP/JSON form of phoneseller's public gRPC API, as the gateway transcodes it (Envoy's \
grpc_json_transcoder reading the contracts' google.api.http rules). Generated from protos/ by \
scripts/gen_openapi.py; docs/http-api.md explains it.

Every operation needs `Authorization: Bearer <token>`: a JWT of the issuer the gateway trusts, \
whose `roles` include one of the operation's `x-phoneseller-roles` (on one machine: \
`phoneseller token --customer alice`). Errors, from a service or from the gateway itself, are \
a google.rpc.Status in JSON with the matching HTTP status; its `details` carry an ErrorInfo \
(the reason), plus a RetryInfo when the caller should try again after `retry_delay`, or a \
BadRequest naming invalid fields."""


class GenError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------------------------
# Running the generator


def plugin() -> Path:
    found = shutil.which(PLUGIN)
    if found is None:
        raise GenError(
            f"{PLUGIN} not found: it is Debian's golang-grpc-gateway package "
            "(scripts/system-packages.txt; `make system-packages` installs it, as root)"
        )
    return Path(found)


def routed_files(descriptors: Path = DESCRIPTORS) -> list[str]:
    """Our proto files with at least one HTTP rule, from the descriptor set the gateway uses."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    files = []
    for file in fds.file:
        if not file.package.startswith(f"{gen_protos.PY_PACKAGE}."):
            continue
        rules = [
            m.options.HasExtension(annotations_pb2.http) for s in file.service for m in s.method
        ]
        if any(rules):
            files.append(file.name)
    if not files:
        raise GenError(f"no HTTP rules in {descriptors}")
    return sorted(files)


def generate_raw(out: Path) -> dict[str, Json]:
    """The plugin's document of each routed file, by proto file name."""
    gen_protos.prepare_deps()
    includes = [
        "-I",
        "protos",
        "-I",
        gen_protos.DEPS_DIR.relative_to(REPO).as_posix(),
        "-I",
        str(gen_protos.grpc_tools_include()),
    ]
    documents: dict[str, Json] = {}
    for name in routed_files():
        # One package per run: grpc-gateway 1.6 refuses more ("inconsistent package names").
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *includes,
            f"--plugin=protoc-gen-swagger={plugin()}",
            f"--swagger_out={out}",
            name,
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise GenError(f"{PLUGIN} failed on {name}:\n{result.stderr}")
        written = out / (name.removesuffix(".proto") + ".swagger.json")
        documents[name] = json.loads(written.read_text(encoding="utf-8"))
    return documents


# --------------------------------------------------------------------------------------------
# Merging and post-processing


def merge(documents: Mapping[str, Json]) -> Json:
    paths: Json = {}
    definitions: Json = {}
    for name, document in sorted(documents.items()):
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                if method in paths.get(path, {}):
                    raise GenError(f"{method.upper()} {path} is routed twice (again in {name})")
                paths.setdefault(path, {})[method] = operation
        for key, schema in document.get("definitions", {}).items():
            if key in definitions and definitions[key] != schema:
                raise GenError(f"definition {key} differs between the documents ({name})")
            definitions[key] = schema
    return {"paths": paths, "definitions": definitions}


def grpc_methods(descriptors: Path = DESCRIPTORS) -> dict[tuple[str, str], str]:
    """(service name, method name) → gRPC path, for the operations the plugin tags so."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    return {
        (s.name, m.name): f"/{f.package}.{s.name}/{m.name}"
        for f in fds.file
        for s in f.service
        for m in s.method
    }


def _definition_name(message: Descriptor) -> str:
    # As the plugin names them: the package's last part, then the message's nested names.
    package = message.file.package.rsplit(".", 1)[-1]
    nested = message.full_name.removeprefix(message.file.package + ".").replace(".", "")
    return package + nested


def _field_schema(field: FieldDescriptor, definitions: Json) -> Json:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value = _field_schema(message.fields_by_name["value"], definitions)
        return {"type": "object", "additionalProperties": value}
    schema: Json
    if message is not None and message.full_name == "google.protobuf.Duration":
        schema = {"type": "string", "description": 'A duration in seconds, e.g. "1s" or "0.5s".'}
    elif message is not None:
        schema = {"$ref": f"#/definitions/{_message_schema(message, definitions)}"}
    elif field.type == FieldDescriptor.TYPE_STRING:
        schema = {"type": "string"}
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32):
        schema = {"type": "integer", "format": "int32"}
    else:
        raise GenError(f"no JSON schema for {field.full_name} (type {field.type})")
    return {"type": "array", "items": schema} if field.is_repeated else schema


def _message_schema(message: Descriptor, definitions: Json) -> str:
    """Add `message` (and what it refers to) to `definitions`; return its definition's name."""
    name = _definition_name(message)
    if name not in definitions:
        definitions[name] = {}  # before the fields: a message may refer to itself
        properties = {f.name: _field_schema(f, definitions) for f in message.fields}
        definitions[name] = {
            "type": "object",
            "properties": properties,
            "description": f"{message.full_name} (a google.rpc.Status detail, "
            f'"@type": "type.googleapis.com/{message.full_name}").',
        }
    return name


def error_definitions() -> Json:
    definitions: Json = {
        ANY: {
            "type": "object",
            "properties": {
                "@type": {
                    "type": "string",
                    "description": "The detail's type, e.g. "
                    '"type.googleapis.com/google.rpc.RetryInfo"; the other fields are that '
                    "message's.",
                }
            },
            "additionalProperties": {},
            "description": "A google.protobuf.Any in JSON: the message's fields beside @type.",
        },
        STATUS: {
            "type": "object",
            "properties": {
                "code": {
                    "type": "integer",
                    "format": "int32",
                    "description": "The gRPC status code (google.rpc.Code), e.g. 14 UNAVAILABLE.",
                },
                "message": {"type": "string", "description": "What went wrong, in English."},
                "details": {
                    "type": "array",
                    "items": {"$ref": f"#/definitions/{ANY}"},
                    "description": "An ErrorInfo always; a RetryInfo when the caller should come "
                    "back after its retry_delay; a BadRequest for invalid fields; a "
                    "PreconditionFailure or ResourceInfo where the services say so. Each is "
                    "described by the definition named in x-phoneseller-details.",
                },
            },
            "description": "google.rpc.Status: the body of every error response.",
        },
    }
    names = [_message_schema(m, definitions) for m in DETAIL_MESSAGES]
    definitions[STATUS]["x-phoneseller-details"] = {
        f"type.googleapis.com/{m.full_name}": f"#/definitions/{n}"
        for m, n in zip(DETAIL_MESSAGES, names, strict=True)
    }
    return definitions


def _error(description: str) -> Json:
    return {"description": description, "schema": {"$ref": f"#/definitions/{STATUS}"}}


def post_process(merged: Json, roles: Mapping[str, Sequence[str]]) -> Json:
    methods = grpc_methods()
    paths = copy.deepcopy(merged["paths"])
    for path, operations in paths.items():
        for verb, operation in operations.items():
            if verb not in HTTP_METHODS:
                continue
            (service,) = operation["tags"]
            grpc_path = methods[(service, operation["operationId"])]
            allowed = list(roles.get(grpc_path, ()))
            if not allowed:
                raise GenError(f"{verb.upper()} {path} ({grpc_path}) has no roles in the values")
            operation["operationId"] = f"{service}_{operation['operationId']}"
            operation["x-phoneseller-grpc-method"] = grpc_path
            operation["x-phoneseller-roles"] = allowed
            operation["security"] = [{"bearer": []}]
            operation["responses"].update(
                {
                    "401": _error(
                        "No bearer token, or one the gateway rejects (TOKEN_MISSING, "
                        "TOKEN_REJECTED)."
                    ),
                    "403": _error(
                        "The token's roles may not call this operation "
                        "(ROLE_NOT_ALLOWED), or a customer asked for another "
                        "customer's data."
                    ),
                    "default": _error(
                        "An error: google.rpc.Status with the HTTP status of its "
                        "code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 409 ABORTED, "
                        "400 FAILED_PRECONDITION, 503 UNAVAILABLE, …)."
                    ),
                }
            )
    definitions = dict(merged["definitions"])
    for name, schema in error_definitions().items():
        if name in definitions and definitions[name] != schema:
            raise GenError(f"the generator's {name} is not the one the script adds")
        definitions[name] = schema
    return {
        "swagger": "2.0",
        "info": {
            "title": "phoneseller HTTP/JSON API",
            "version": API_VERSION,
            "description": DESCRIPTION,
        },
        "schemes": ["http", "https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "bearer": {
                # Swagger 2.0 has no bearer scheme; an Authorization header of the form
                # "Bearer <JWT>" is how such APIs are described there.
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": "`Bearer <JWT>`: a token of the issuer the gateway trusts "
                "(ES256; iss, aud, exp, sub and roles). On one machine `phoneseller token "
                "--customer alice` (or `--dealer dealer-1`) prints one.",
            }
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "definitions": definitions,
    }


def render(document: Json) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build() -> str:
    with tempfile.TemporaryDirectory(prefix="openapi-") as tmp:
        raw = generate_raw(Path(tmp))
    return render(post_process(merge(raw), catalog().roles_by_path))


# --------------------------------------------------------------------------------------------
# Commands


def diff_lines(fresh: str, committed: str, limit: int = 60) -> Iterable[str]:
    lines = difflib.unified_diff(
        committed.splitlines(),
        fresh.splitlines(),
        "committed",
        "generated",
        lineterm="",
    )
    for number, line in enumerate(lines):
        if number >= limit:
            yield "…"
            return
        yield line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff if the committed file drifted"
    )
    args = parser.parse_args(argv)
    try:
        fresh = build()
    except GenError as error:
        print(f"gen_openapi: {error}", file=sys.stderr)
        return 2
    rel = OUT.relative_to(REPO)
    if args.check:
        committed = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if fresh == committed:
            print(f"{rel} is up to date")
            return 0
        print(f"{rel} is stale; run `python scripts/gen_openapi.py`", file=sys.stderr)
        for line in diff_lines(fresh, committed):
            print(line, file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(fresh, encoding="utf-8")
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
