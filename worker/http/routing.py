"""What a route module gives the app: a list of :class:`Route`, each a handler plus what the OpenAPI
document says about it. The app registers exactly these routes and the document lists exactly these
operations, so the two cannot drift apart.

A route module is any module with ``routes(settings) -> list[Route]``::

    def routes(settings: Settings) -> list[Route]:
        return [Route("GET", "/v1/things/{name}", get_thing, "Get a thing", access=Access.API,
                      responses={200: Reply("The thing", ThingView)}, errors=(404,),
                      parameters=(Param("name", "path", "The thing's name"),))]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel

from worker.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access(Enum):
    """Who may call a route.

    ``OPEN``: anyone. ``VIEW``: an API key or the read-only dashboard key. ``API``: an API key only.
    ``VIEW`` routes also accept the dashboard session cookie (see :mod:`worker.http.auth`); ``API``
    routes take only the ``Authorization: Bearer`` header.
    """

    OPEN = "open"
    VIEW = "view"
    API = "api"


@dataclass(frozen=True)
class Reply:
    """One documented response. ``model`` None: no JSON schema (``media`` says what comes back)."""

    description: str
    model: type[BaseModel] | None = None
    media: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter; ``schema`` is its JSON schema."""

    name: str
    location: str  # "path" | "query" | "header"
    description: str
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Route:
    """One operation: method + path, its handler, and its documentation.

    ``errors`` lists the error statuses the route itself can answer (each with the common error body);
    401/403 (and 429 while the per-key throttle is on) are added for protected routes, 500 and 503 for
    every route. ``body`` is the request body's model; ``body_media`` its content type.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    responses: Mapping[int, Reply]
    tag: str = "api"
    description: str = ""
    body: type[BaseModel] | None = None
    body_media: str = "application/json"
    body_schema: Mapping[str, Any] | None = None  # overrides the model's schema (e.g. limits from settings)
    body_alternatives: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Other request media types and their schemas (e.g. a CSV upload next to the JSON body)."""
    extra_models: tuple[type[BaseModel], ...] = ()  # models that body_schema refers to
    errors: tuple[int, ...] = ()
    parameters: tuple[Param, ...] = ()
    operation_id: str = ""
    uses_redis: bool = True


class RouteModule(Protocol):
    def routes(self, settings: Settings) -> list[Route]: ...
