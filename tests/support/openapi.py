"""The committed OpenAPI document (docs/openapi/) as JSON Schemas, to check real bodies with.

Swagger 2.0's schema objects are a subset of JSON Schema draft 4, so jsonschema validates a
body against a definition directly. `strict` closes every object (no properties beyond the
document's), so that a field the gateway prints under another name than the document says
(`orderId` for `order_id`) fails instead of passing as an extra property. A google.rpc.Status
is checked twice: as the document's `rpcStatus`, and each detail against the definition its
`@type` names (`x-phoneseller-details`).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "openapi" / "phoneseller.swagger.json"

Json = dict[str, Any]


@cache
def document() -> Json:
    loaded: Json = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _definitions(strict: bool) -> Json:
    definitions: Json = copy.deepcopy(document()["definitions"])
    if not strict:
        return definitions
    closed: Json = _closed(definitions)
    return closed


def validate(instance: Any, schema: Json, *, strict: bool = True) -> None:
    """Raise jsonschema.ValidationError unless `instance` fits `schema` (of the document)."""
    wrapped = {**schema, "definitions": _definitions(strict)}
    jsonschema.Draft4Validator(wrapped).validate(instance)


def validate_definition(instance: Any, name: str, *, strict: bool = True) -> None:
    validate(instance, {"$ref": f"#/definitions/{name}"}, strict=strict)


def validate_status(body: Json) -> None:
    """`body` is a google.rpc.Status as the document describes it, details included."""
    validate_definition(body, "rpcStatus")
    kinds: dict[str, str] = document()["definitions"]["rpcStatus"]["x-phoneseller-details"]
    for detail in body.get("details", []):
        ref = kinds.get(detail["@type"])
        assert ref is not None, f"a detail the document does not describe: {detail}"
        fields = {k: v for k, v in detail.items() if k != "@type"}
        validate(fields, {"$ref": ref})


def operation(method: str, path: str) -> tuple[str, Json]:
    """The document's path template and operation for a concrete request path."""
    bare = path.split("?", 1)[0]
    for template, operations in document()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/:]+", re.escape(template)) + "$"
        if re.match(pattern, bare) and method.lower() in operations:
            found: Json = operations[method.lower()]
            return template, found
    raise AssertionError(f"{method} {path} is not in {DOCUMENT.name}")


def validate_response(method: str, path: str, status: int, body: Any) -> str:
    """`body` is what the document says `method path` answers with `status`; returns the
    operation's path template (which routes a test has covered)."""
    template, op = operation(method, path)
    responses = op["responses"]
    if status >= 400:
        # 401 and 403 are listed; every other error is the `default` response: all a Status.
        validate_status(body)
    else:
        assert str(status) in responses, f"{method} {template} documents no {status}"
        validate(body, responses[str(status)]["schema"])
    return f"{method.upper()} {template}"
