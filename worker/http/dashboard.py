"""The operator dashboard at ``/``: plain HTML + JS (no build step) polling ``/dashboard/data``.

Who may see it: an API key or ``DIALER_DASHBOARD_KEY`` (read-only), presented once through the login
form or as ``/?key=<key>`` (redirected at once to ``/``, so the key leaves the address bar); the
browser then holds the session cookie described in :mod:`worker.http.auth`. ``curl -H "Authorization:
Bearer $KEY" /dashboard/data`` works too.

The data (cached for one second, however many browsers poll):

* queue depth per priority (due / deferred) and whether a live worker serves each queue;
* send rate over the last 5 minutes against ``DIALER_RATE_LIMIT``, from the per-second counters the
  workers write (:class:`worker.dispatch.stats.SendStats`);
* fleet-wide in-flight leases against ``DIALER_MAX_IN_FLIGHT``;
* failed attempts by kind over the last 15 minutes, and the latest dead letters by kind;
* the shared token's age and time to expiry (never the token);
* ``campaigns``: the newest campaigns' status (counts per state and outcome, redials, send rate, ETA),
  from the campaigns module when it is installed (``CAMPAIGNS_FEED``); the page adds pause/resume/cancel
  buttons for API-key sessions (a read-only session gets none, and 403 if it tries), and to every row a
  link to the campaign's CSV export (``GET /v1/campaigns/{name}/export``, a VIEW route: the session cookie
  is enough, read-only sessions included; see :data:`EXPORT_LINKS_JS`).
"""

from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from worker.http.auth import COOKIE, Identity, Role
from worker.http.common import AUTH, CAMPAIGNS_FEED, IDENTITY, LEDGER, REDIS, SETTINGS, STATS
from worker.http.errors import ApiError
from worker.http.fleet import dead_by_kind, snapshot
from worker.http.routing import Access, Param, Reply, Route
from worker.http.schemas import (
    DashboardData,
    ErrorsView,
    InFlightView,
    QueueView,
    RateView,
    TokenView,
)
from worker.settings import Settings
from worker.store.keys import Keys

RATE_WINDOW_S = 300
ERROR_WINDOW_S = 900
DEAD_SAMPLE = 200
_CACHE_S = 1.0
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _asset(name: str) -> str:
    return resources.files("worker.http").joinpath(name).read_text(encoding="utf-8")


@dataclass
class _Cache:
    at: float = 0.0
    data: dict[str, Any] | None = None
    lock: asyncio.Lock | None = None


_CACHE: web.AppKey[_Cache] = web.AppKey("dashboard_cache")


# --- pages -----------------------------------------------------------------------------------------


def _login_page(message: str = "", status: int = 401) -> web.Response:
    page = Template(_asset("login.html")).substitute(message=html.escape(message))
    return web.Response(text=page, status=status, content_type="text/html", headers=_HTML_HEADERS)


def _page(identity: Identity) -> web.Response:
    page = Template(_asset("dashboard.html")).substitute(role=html.escape(identity.role.value))
    return web.Response(text=page, content_type="text/html", headers=_HTML_HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def index(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    key = request.query.get("key")
    if key is not None:
        if auth.insecure or auth.check_key(key) is not None:
            response = _see_other("/")
            if not auth.insecure:
                auth.set_session(response, request, key)
            return response
        return _login_page("Unknown key.")
    try:
        identity = auth.identify(request, cookie=True)
        if not await auth.session_live(request, identity):
            raise ApiError(401)
    except ApiError:
        response = _login_page("Your session has expired or the key was rotated; log in again.")
        auth.clear_session(response)
        return response
    if identity is None:
        return _login_page()
    return _page(identity)


async def login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if request.content_type != "application/x-www-form-urlencoded":
        return _login_page("Send the login form (application/x-www-form-urlencoded).", status=415)
    form = await request.post()
    key = form.get("key")
    if not isinstance(key, str) or not key:
        return _login_page("Enter a key.")
    if auth.check_key(key) is None and not auth.insecure:
        return _login_page("Unknown key.")
    response = _see_other("/")
    if not auth.insecure:
        auth.set_session(response, request, key)
    return response


async def logout(request: web.Request) -> web.Response:
    response = _see_other("/")
    auth = request.app[AUTH]
    await auth.end_session(request)  # the cookie is refused server-side too, not only forgotten
    auth.clear_session(response)
    return response


EXPORT_LINKS_JS = """
// Export links (served by worker/http/dashboard.py after dashboard.js): every campaign row links its CSV
// export. GET /v1/campaigns/{name}/export is a VIEW route, so the session cookie of this page is all it
// needs (no header), read-only sessions included; the browser saves the streamed download.
{
  const renderRow = renderCampaign;
  renderCampaign = (c) => {
    const row = renderRow(c);
    const link = el("a", {
      class: "export-link", "data-role": "export", download: `${c.name}-export.csv`,
      href: `/v1/campaigns/${encodeURIComponent(c.name)}/export?format=csv`, text: "export CSV",
    });
    const head = row.querySelector(".campaign-head");
    const spacer = head && head.querySelector(".spacer");
    if (spacer) spacer.before(link);
    else if (head) head.append(link);
    return row;
  };
}
"""
"""Appended to dashboard.js when it is served: wraps its ``renderCampaign`` so each campaign row gets its
export link. (It belongs in dashboard.js itself; it lives here while that file has other owners.)"""


async def script(request: web.Request) -> web.Response:
    return web.Response(text=_asset("dashboard.js") + EXPORT_LINKS_JS, content_type="application/javascript",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=_asset("dashboard.css"), content_type="text/css",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# --- data ------------------------------------------------------------------------------------------


async def _collect(app: web.Application) -> dict[str, Any]:
    settings = app[SETTINGS]
    snap = await snapshot(app[REDIS], Keys(settings.key_prefix))
    window = await app[STATS].read(seconds=RATE_WINDOW_S, error_window_s=ERROR_WINDOW_S)
    dead = await dead_by_kind(app[LEDGER], DEAD_SAMPLE)
    feed = app.get(CAMPAIGNS_FEED)
    # Set by the campaigns route module; rendered by renderCampaigns() in dashboard.js.
    campaigns = await feed(app) if feed is not None else []
    data = DashboardData(
        now=snap.now_s,
        role="",
        queues=[QueueView(priority=q.priority, depth=q.depth, ready=q.ready, worker=q.worker) for q in snap.queues],
        rate=RateView(
            limit=settings.rate_limit, window_s=RATE_WINDOW_S,
            start=window.seconds[0][0] if window.seconds else int(snap.now_s),
            attempts=[a for _, a, _ in window.seconds], sent=[s for _, _, s in window.seconds],
        ),
        in_flight=InFlightView(held=snap.in_flight, cap=settings.max_in_flight),
        errors=ErrorsView(window_s=ERROR_WINDOW_S, by_kind=dict(sorted(window.errors.items(), key=lambda kv: -kv[1])),
                          dead_total=snap.dead_total, dead_by_kind=dead),
        token=TokenView(present=snap.token.present, age_s=snap.token.age_s, expires_in_s=snap.token.expires_in_s),
        campaigns=campaigns,
    )
    return data.model_dump(mode="json")


async def data(request: web.Request) -> web.Response:
    app = request.app
    cache = app[_CACHE]
    if cache.lock is None:
        cache.lock = asyncio.Lock()
    async with cache.lock:
        if cache.data is None or time.monotonic() - cache.at > _CACHE_S:
            cache.data = await _collect(app)
            cache.at = time.monotonic()
        body = dict(cache.data)
    identity = request.get(IDENTITY)
    body["role"] = identity.role.value if isinstance(identity, Identity) else Role.ADMIN.value
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def routes(settings: Settings) -> list[Route]:
    page_media = "text/html"
    return [
        Route("GET", "/", index, "Dashboard", Access.OPEN, tag="dashboard", operation_id="dashboard",
              uses_redis=False,
              description="The dashboard page for a logged-in browser (or with a bearer key); otherwise the "
              "login form. `?key=` logs in and redirects to `/`.",
              parameters=(Param("key", "query", "An API key or the dashboard key, to log in."),),
              responses={200: Reply("The dashboard.", None, media=page_media),
                         303: Reply("Logged in: go to /.", None, media=""),
                         401: Reply("The login form.", None, media=page_media)}),
        Route("POST", "/login", login, "Log in to the dashboard", Access.OPEN, tag="dashboard",
              operation_id="login", uses_redis=False, body_media="application/x-www-form-urlencoded",
              body_schema={"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
              responses={303: Reply("Logged in: the session cookie is set.", None, media=""),
                         401: Reply("The login form, with why.", None, media=page_media),
                         415: Reply("Not a form post: the login form.", None, media=page_media)},
              errors=(413,)),
        Route("POST", "/logout", logout, "Log out of the dashboard", Access.OPEN, tag="dashboard",
              operation_id="logout",
              description="Ends the session on the server (the cookie is refused from then on, on every "
              "replica) and clears the cookie.",
              responses={303: Reply("The session is ended and its cookie cleared.", None, media="")}),
        Route("GET", "/dashboard/data", data, "Dashboard data", Access.VIEW, tag="dashboard",
              operation_id="dashboardData",
              description="Everything the dashboard shows, refreshed at most once a second.",
              responses={200: Reply("The fleet right now.", DashboardData)}),
        Route("GET", "/dashboard.js", script, "Dashboard script", Access.OPEN, tag="dashboard",
              operation_id="dashboardScript", uses_redis=False,
              responses={200: Reply("JavaScript.", None, media="application/javascript")}),
        Route("GET", "/dashboard.css", stylesheet, "Dashboard style sheet", Access.OPEN, tag="dashboard",
              operation_id="dashboardStyle", uses_redis=False,
              responses={200: Reply("CSS.", None, media="text/css")}),
    ]


def setup(app: web.Application) -> None:
    """Per-app state of this module (called by create_app)."""
    app[_CACHE] = _Cache()


__all__ = ["COOKIE", "EXPORT_LINKS_JS", "routes", "setup"]
