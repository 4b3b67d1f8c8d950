"""What route modules share: the app's typed state keys and reading a JSON body safely."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from worker.dispatch.stats import SendStats
from worker.http.auth import Authenticator, Identity
from worker.http.errors import ApiError
from worker.http.throttle import Throttle
from worker.ledger.producer import Producer
from worker.ledger.transitions import Ledger
from worker.limits.inflight import InFlight
from worker.provider.client import ProviderClient
from worker.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
PRODUCER = web.AppKey("producer", Producer)
LEDGER = web.AppKey("ledger", Ledger)
STATS = web.AppKey("stats", SendStats)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
AUTH = web.AppKey("auth", Authenticator)
THROTTLE = web.AppKey("throttle", Throttle)


@dataclass
class ProviderSlot:
    """The service's provider client: opened at start-up (``/readyz`` asks it for a token), None before."""

    client: ProviderClient | None = None


PROVIDER = web.AppKey("provider", ProviderSlot)

CampaignsFeed = Callable[[web.Application], Awaitable[list[dict[str, Any]]]]
CAMPAIGNS_FEED: web.AppKey[CampaignsFeed] = web.AppKey("campaigns_feed")
"""Optional: set by the campaigns route module; its rows become ``campaigns`` in the dashboard data."""

# aiohttp >= 3.13 wants typed request keys; older versions take the string.
IDENTITY: web.RequestKey[Identity | None] | str = (
    web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "dialer.identity"
)
"""``request[IDENTITY]``: the :class:`~worker.http.auth.Identity` of an authorized request."""

_JSON_TYPES = ("application/json",)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body: 415 if it is not JSON, 413 if too large, 400 if malformed."""
    ctype = request.content_type.lower()
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise ApiError(415)
    limit = request.app[SETTINGS].http_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"The body may be at most {limit} bytes.")
    raw = await request.read()  # aiohttp raises 413 past client_max_size (= the same limit)
    if not raw.strip():
        raise ApiError(400, "The body is empty; send a JSON object.", code="malformed_json")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"The body is not valid JSON{where}.", code="malformed_json") from None
