"""Per-API-key request throttle of ``dialer serve``, shared by every replica through Redis.

::

    throttle = Throttle(redis, settings)          # DIALER_HTTP_RATE_LIMIT / DIALER_HTTP_RATE_BURST
    await throttle.check(request, identity)       # raises ApiError(429) when the key is over its limit

What is limited: every request to a protected route (API key or dashboard access, see
:func:`throttled`), counted per :class:`~worker.http.auth.Identity` ``key_id`` — a dashboard session
counts against the key that logged in. Open routes (``/healthz``, ``/readyz``, ``/metrics``,
``/openapi.json``, the provider's ``/v1/callbacks/release``, the dashboard's page, login and assets) are
never throttled, nor are requests refused by authentication (they never get a ``key_id``).

How: GCRA with ``rate`` requests/s and ``burst`` requests back to back, booked by the fleet's own
``worker/limits/gcra.lua`` (the script the call rate limit uses, on the Redis server's clock, one key
``<prefix>rl:http:<key_id>`` per key that expires once idle). It is asked for one slot with a booking
horizon of 0: a request conforms only if its slot is *now*, and then the slot is booked; otherwise
nothing is written and the script says how long until the next slot, which becomes ``Retry-After``.
So a refused request costs the client nothing, and replicas behind a load balancer share one schedule
per key. One Redis round trip per protected request.
"""

from __future__ import annotations

import logging
import math
import time

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker import metrics
from worker.http.auth import Identity
from worker.http.errors import ApiError
from worker.http.routing import Access, Route
from worker.limits.ratelimit import gcra_script
from worker.settings import Settings
from worker.store.keys import Keys

__all__ = ["RETRY_AFTER_DOC", "Throttle", "throttled"]

log = logging.getLogger(__name__)

# The fleet limiter's GCRA script (worker.limits.ratelimit.gcra_script); tests/http/test_throttle.py
# pins the behaviour this module relies on.
_US = 1_000_000
_WARN_EVERY_S = 60.0

RETRY_AFTER_DOC = "Whole seconds (at least 1) until this key may send its next request."


def throttled(route: Route, settings: Settings) -> bool:
    """Whether requests to ``route`` count against their key's limit (one rule for the app and the
    OpenAPI document): every protected route while ``DIALER_HTTP_RATE_LIMIT`` > 0, no open route."""
    return settings.http_rate_limit > 0 and route.access is not Access.OPEN


class Throttle:
    """The per-key limit of one ``dialer serve`` process; the state lives in Redis, shared by all."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.rate = settings.http_rate_limit
        self.burst = settings.http_rate_burst
        self.enabled = self.rate > 0
        self._keys = Keys(settings.key_prefix)
        self._script = gcra_script(redis)
        interval = math.ceil(_US / self.rate) if self.enabled else 0
        # One slot wanted, horizon 0 (book only a slot that is due now); interval, tau, no gap cap.
        self._args = [1, 0, interval, (self.burst - 1) * interval, -1]
        self._failed_open = 0
        self._warned_at = -math.inf

    def key(self, key_id: str) -> str:
        """The Redis key holding ``key_id``'s schedule (its theoretical arrival time, µs)."""
        return self._keys.rate("http:" + key_id)

    async def check(self, request: web.Request, identity: Identity | None) -> None:
        """Book this request against its key's limit, or raise :class:`ApiError` 429 (nothing booked)."""
        if not self.enabled or identity is None:
            return
        try:
            reply = await self._script(keys=[self.key(identity.key_id)], args=self._args)
        except RedisError as exc:
            # Fail open. The throttle protects capacity; it is not what makes a request correct. Routes
            # that need Redis answer 503 on their own a moment later, and the ones that do not should
            # keep working through a Redis hiccup rather than be refused by their guard. Logged at most
            # once a minute so an outage does not turn every request into a warning.
            self._fail_open(exc)
            return
        retry_us = int(reply[0])
        if retry_us <= 0:
            return
        retry_s = max(1, math.ceil(retry_us / _US))
        resource = request.match_info.route.resource
        metrics.observe_throttled(identity.key_id, resource.canonical if resource is not None else "unmatched")
        raise ApiError(
            429,
            f"Too many requests for this key: the limit is {self.rate:g} requests/s with bursts of "
            f"{self.burst}. Retry in {retry_s} s.",
            headers={"Retry-After": str(retry_s)},
        )

    def _fail_open(self, exc: RedisError) -> None:
        self._failed_open += 1
        now = time.monotonic()
        if now - self._warned_at < _WARN_EVERY_S:
            return
        log.warning(
            "HTTP throttle: Redis unavailable (%s); %d request(s) served unthrottled since the last warning",
            type(exc).__name__, self._failed_open,
        )
        self._warned_at = now
        self._failed_open = 0
