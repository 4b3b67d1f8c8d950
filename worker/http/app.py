"""The aiohttp application of ``dialer serve``, built from route modules.

::

    app = create_app(settings, redis)                       # every default route module
    app = create_app(settings, redis, modules=(*DEFAULT_MODULES, campaigns))   # plus another one

A route module is any module with ``routes(settings) -> list[Route]`` (see :mod:`worker.http.routing`),
and optionally ``setup(app)`` to add its own state (e.g. ``app[CAMPAIGNS_FEED] = ...``); the app
registers each route with its access check, and ``/openapi.json`` documents exactly those.
The caller owns ``redis`` (the app does not close it); the provider client used by ``/readyz`` is opened
at start-up and closed at clean-up.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from redis.asyncio import Redis

from worker import metrics
from worker.dispatch.stats import SendStats
from worker.http import callbacks, calls, campaigns, dashboard, health, openapi
from worker.http.auth import Authenticator, Identity
from worker.http.common import (
    AUTH,
    IDENTITY,
    IN_FLIGHT,
    LEDGER,
    PRODUCER,
    PROVIDER,
    REDIS,
    SETTINGS,
    STATS,
    THROTTLE,
    ProviderSlot,
)
from worker.http.errors import ApiError, error_middleware
from worker.http.routing import Access, Handler, Route, RouteModule
from worker.http.throttle import Throttle, throttled
from worker.ledger.producer import Producer
from worker.ledger.transitions import Ledger
from worker.limits.inflight import InFlight
from worker.provider.client import ProviderClient
from worker.settings import Settings

__all__ = ["DEFAULT_MODULES", "ROUTES", "create_app"]

access_log = logging.getLogger("worker.http.access")

DEFAULT_MODULES: tuple[RouteModule, ...] = (health, openapi, calls, campaigns, callbacks, dashboard)
ROUTES: web.AppKey[tuple[Route, ...]] = web.AppKey("routes")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/dashboard/data"})


def create_app(
    settings: Settings,
    redis: Redis,
    *,
    insecure_no_auth: bool = False,
    modules: Sequence[RouteModule] = DEFAULT_MODULES,
    open_provider: bool = True,
) -> web.Application:
    """The service. ``insecure_no_auth`` lets every request in (refused by ``dialer serve`` unless asked
    for); ``open_provider=False`` skips the provider client (``/readyz`` then reports it not checked)."""
    auth = Authenticator(settings, insecure=insecure_no_auth, redis=redis)
    throttle = Throttle(redis, settings)
    app = web.Application(
        client_max_size=settings.http_max_body_bytes, middlewares=[_access_middleware, error_middleware]
    )
    app[SETTINGS] = settings
    app[REDIS] = redis
    app[PRODUCER] = Producer(redis, settings)
    app[LEDGER] = Ledger(redis, settings)
    app[STATS] = SendStats(redis, settings)
    app[IN_FLIGHT] = InFlight(redis, settings)
    app[AUTH] = auth
    app[THROTTLE] = throttle
    app[PROVIDER] = ProviderSlot()

    for module in modules:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
    routes = tuple(r for module in modules for r in module.routes(settings))
    seen: set[tuple[str, str]] = set()
    for r in routes:
        if (r.method, r.path) in seen:
            raise ValueError(f"route {r.method} {r.path} is defined twice")
        seen.add((r.method, r.path))
        limit = throttle if throttled(r, settings) else None
        app.router.add_route(r.method, r.path, _guard(r, auth, limit), name=r.operation_id or None)
    app[ROUTES] = routes
    app[openapi.OPENAPI_DOC] = openapi.build(routes, settings)
    if open_provider:
        app.cleanup_ctx.append(_provider)
    return app


def _guard(route: Route, auth: Authenticator, throttle: Throttle | None) -> Handler:
    """The route's handler behind its access check and then, for throttled routes, its key's rate limit:
    a request refused by either never reaches the handler."""
    if route.access is Access.OPEN:
        return route.handler
    handler = route.handler
    access = route.access

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        identity = auth.authorize(request, access)
        if not await auth.session_live(request, identity):
            raise ApiError(401, "This dashboard session was logged out; log in again.")
        request[IDENTITY] = identity  # before the throttle, so a 429 is logged with its key_id
        if throttle is not None:
            await throttle.check(request, identity)
        return await handler(request)

    return guarded


async def _provider(app: web.Application) -> AsyncIterator[None]:
    async with ProviderClient.open(app[SETTINGS], app[REDIS]) as client:
        app[PROVIDER].client = client
        try:
            yield
        finally:
            app[PROVIDER].client = None


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line and the HTTP metrics per request. Never logs headers, bodies or query strings."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects raised by handlers
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _route_label(request)
        metrics.observe_http(request.method, route, status, elapsed)
        identity = request.get(IDENTITY)
        level = logging.DEBUG if status < 400 and request.path in _QUIET_PATHS else logging.INFO
        access_log.log(
            level, "%s %s -> %s", request.method, route, status,
            extra={
                "method": request.method,
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                "key_id": identity.key_id if isinstance(identity, Identity) else None,
                "remote": request.remote,
            },
        )
