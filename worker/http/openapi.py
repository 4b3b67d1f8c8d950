"""The OpenAPI 3.1 document at ``/openapi.json``, generated from the route table and the pydantic models.

Every operation comes from a :class:`~worker.http.routing.Route` the app registers, so the document lists
exactly the routes that exist; schemas come from ``model_json_schema`` (one ``components.schemas`` entry
per model). The seed's rules that pydantic checks in code rather than in the schema (the number pattern,
priority "1".."9", exactly one of voiceId/voiceFileName/templateId) are added to the document so generated clients
and fuzzers know them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from worker.http.errors import CODES
from worker.http.routing import Access, Reply, Route
from worker.http.schemas import ErrorBody
from worker.http.throttle import RETRY_AFTER_DOC, throttled
from worker.models import CALLED_RE, PRIORITIES
from worker.settings import Settings

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("openapi_doc")

_PATH_REGEX = re.compile(r"\{(\w+):[^}]*\}")


def document_path(path: str) -> str:
    """A route's path as OpenAPI writes it: aiohttp's ``{name:regex}`` becomes ``{name}``.

    >>> document_path("/v1/campaigns/{name:[A-Za-z0-9._-]+}:pause")
    '/v1/campaigns/{name}:pause'
    """
    return _PATH_REGEX.sub(r"{\1}", path)


_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.OPEN: [],
    Access.VIEW: [{"bearerAuth": []}, {"sessionCookie": []}],
    Access.API: [{"bearerAuth": []}],
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("voice-dialer")
    except Exception:  # not installed (running from a source tree)
        return "0.0.0"


def _error_reply(status: int) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "description": CODES[status][1],
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    if status == 429:
        reply["description"] = ("This key is over its rate limit (DIALER_HTTP_RATE_LIMIT requests/s, bursts "
                                "of DIALER_HTTP_RATE_BURST); nothing was done. Retry after Retry-After seconds.")
        reply["headers"] = {"Retry-After": {"description": RETRY_AFTER_DOC, "required": True,
                                            "schema": {"type": "integer", "minimum": 1}}}
    return reply


def _strip_titles(schema: Any) -> None:
    """pydantic titles every property ("Callbackurl"); the names say it better."""
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for prop in props.values():
                if isinstance(prop, dict):
                    prop.pop("title", None)
        for value in schema.values():
            _strip_titles(value)
    elif isinstance(schema, list):
        for value in schema:
            _strip_titles(value)


def _branch(prop: dict[str, Any], kind: str) -> dict[str, Any]:
    """The ``{"type": kind}`` part of a property (itself, or its branch of an ``anyOf`` with null), to edit
    in place."""
    for branch in prop.get("anyOf", []):
        if branch.get("type") == kind:
            return branch  # type: ignore[no-any-return]
    return prop


def _refine_seed(components: dict[str, Any]) -> None:
    for name in ("CallCreate", "BatchItem", "CallRequest"):
        schema = components.get(name)
        if schema is None:
            continue
        props = schema["properties"]
        props["called"]["pattern"] = f"^{CALLED_RE.pattern}$"
        # The pattern alone holds the seed's string(32), '+' included (32 digits, or '+' and 31).
        props["called"]["description"] = ("Number to call: digits with an optional leading '+', at most 32 "
                                           "characters in all.")
        props["priority"] = {
            "anyOf": [{"type": "string", "enum": list(PRIORITIES)}, {"type": "integer", "minimum": 1, "maximum": 9}],
            "default": "9",
            "description": 'The seed\'s string "1" (most urgent) .. "9" (default); an integer is accepted too. '
            "Each priority has its own queue.",
        }
        _branch(props["callBackUrl"], "string")["pattern"] = r"^https?://[^/\s]+"
    play = components.get("PlayItem")
    if play is not None:
        _branch(play["properties"]["templateParams"], "array")["items"].update(
            {"maxLength": 32, "pattern": r"^[^${}]*$", "description": "At most 32 bytes (UTF-8)."}
        )
        # Exactly one source, present *and* a string: {"voiceId": null} does not count, and an item naming two
        # matches two branches, which oneOf refuses (as the dialer and the provider do).
        play["oneOf"] = [{"required": [k], "properties": {k: {"type": "string"}}}
                         for k in ("voiceId", "voiceFileName", "templateId")]


def build(routes: Sequence[Route], settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of these routes."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for r in routes:
        if r.body is not None and r.body_schema is None:
            wanted[(r.body, "validation")] = None
        for m in r.extra_models:
            wanted[(m, "validation")] = None
        for reply in r.responses.values():
            if reply.model is not None:
                wanted[(reply.model, "serialization")] = None
    refs, defs = models_json_schema(list(wanted), by_alias=True, ref_template=REF)
    components: dict[str, Any] = copy.deepcopy(defs.get("$defs", {}))
    _refine_seed(components)

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": r.operation_id or f"{r.method.lower()}{document_path(r.path)}",
            "summary": r.summary,
            "tags": [r.tag],
            "security": _SECURITY[r.access],
        }
        if r.description:
            op["description"] = r.description
        if r.parameters:
            op["parameters"] = [
                {"name": p.name, "in": p.location, "description": p.description,
                 "required": p.required or p.location == "path", "schema": dict(p.schema)}
                for p in r.parameters
            ]
        if r.body is not None or r.body_schema is not None:
            schema = dict(r.body_schema) if r.body_schema is not None else refs[(r.body, "validation")]  # type: ignore[index]
            content: dict[str, Any] = {r.body_media: {"schema": schema}}
            for other, alt in r.body_alternatives.items():
                content[other] = {"schema": copy.deepcopy(dict(alt))}
            op["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        statuses = set(r.errors) | {500}
        if r.uses_redis:
            statuses.add(503)
        if r.access is not Access.OPEN:
            statuses.add(401)
        if r.access is Access.API:
            statuses.add(403)
        if throttled(r, settings):
            statuses.add(429)
        for status in sorted(statuses):
            responses[str(status)] = _error_reply(status)
        for status, reply in r.responses.items():
            entry: dict[str, Any] = {"description": reply.description}
            if reply.media:
                media: dict[str, Any] = {}
                if reply.model is not None:
                    media["schema"] = refs[(reply.model, "serialization")]
                elif reply.media == "application/json":
                    media["schema"] = {"type": "object"}
                else:
                    media["schema"] = {"type": "string"}
                entry["content"] = {reply.media: media}
            if reply.headers:
                entry["headers"] = {h: {"description": d, "schema": {"type": "string"}}
                                    for h, d in reply.headers.items()}
            responses[str(status)] = entry
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(document_path(r.path), {})[r.method.lower()] = op

    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "voice-dialer",
            "version": _version(),
            "description": "Enqueue outbound voice-notification calls (Huawei Cloud CEC createVoiceNotification "
            "V2) and follow them. Errors: `{\"error\": {\"code\", \"message\", \"fields\": [{\"field\", "
            "\"rule\"}]}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API key from DIALER_API_KEYS (or, for VIEW routes, "
                               "DIALER_DASHBOARD_KEY)."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "dialer_session",
                                  "description": "Set by the dashboard login."},
            },
        },
    }
    if settings.public_url:
        doc["servers"] = [{"url": settings.public_url}]
    _strip_titles(doc["components"]["schemas"])
    return doc


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOC])


def routes(settings: Settings) -> list[Route]:
    return [
        Route("GET", "/openapi.json", openapi_json, "This document", Access.OPEN, tag="operations",
              operation_id="openapi", uses_redis=False,
              responses={200: Reply("The OpenAPI 3.1 document.", None)}),
    ]
