"""``/healthz`` (the process answers), ``/readyz`` (Redis answers and a provider token can be had) and
``/metrics`` (Prometheus). All three are open: they hold no secret and probes/scrapers carry no key;
keep ``dialer serve`` on a private address or put a proxy in front if that matters.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from aiohttp import web
from redis.exceptions import RedisError

from worker import metrics
from worker.errors import ProviderError
from worker.http.common import PROVIDER, REDIS, SETTINGS
from worker.http.fleet import snapshot
from worker.http.routing import Access, Reply, Route
from worker.http.schemas import Health, Ready
from worker.settings import Settings
from worker.store.keys import Keys

log = logging.getLogger(__name__)

_REDIS_PING_TIMEOUT_S = 2.0
PROVIDER_CHECK_TTL_S = 5.0
"""``/readyz`` reuses its provider check this long: probes cannot turn into tokenByAkSk calls."""


class _ProviderCheck:
    """The last provider check's answer and when it was made (per app)."""

    def __init__(self) -> None:
        self.answer = ""
        self.at = -PROVIDER_CHECK_TTL_S
        self.lock = asyncio.Lock()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


_CHECKS: weakref.WeakKeyDictionary[web.Application, _ProviderCheck] = weakref.WeakKeyDictionary()


async def _provider_check(app: web.Application, settings: Settings) -> str:
    """The provider's readiness, checked at most once per ``PROVIDER_CHECK_TTL_S`` (concurrent probes
    share one check); while tokenByAkSk refuses the AK/SK the token manager answers from the fleet's
    pause in Redis without asking the provider."""
    cache = _CHECKS.setdefault(app, _ProviderCheck())
    async with cache.lock:
        loop = asyncio.get_running_loop()
        if loop.time() - cache.at < PROVIDER_CHECK_TTL_S:
            return cache.answer
        provider = app[PROVIDER].client
        if provider is None or provider.tokens is None:
            return "not checked: the provider client is not open"
        try:
            # The shared token: from memory or Redis when valid, else one tokenByAkSk call fleet-wide.
            await asyncio.wait_for(provider.tokens.get(), settings.request_timeout_s + _REDIS_PING_TIMEOUT_S)
            answer = "ok"
        except ProviderError as exc:
            answer = exc.describe()  # secret-free by contract
        except (RedisError, OSError, TimeoutError) as exc:
            answer = f"failed ({type(exc).__name__})"
        cache.answer, cache.at = answer, loop.time()
        return answer


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[REDIS].ping(), _REDIS_PING_TIMEOUT_S)
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__})"
    if checks["redis"] != "ok":
        checks["provider"] = "not checked: Redis is unreachable"
    else:
        checks["provider"] = await _provider_check(app, settings)
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        log.info("not ready: %s", "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"))
    return web.json_response({"status": "ready" if ready else "unready", "checks": checks},
                             status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    app = request.app
    try:
        snap = await snapshot(app[REDIS], Keys(app[SETTINGS].key_prefix))
    except (RedisError, OSError) as exc:
        # Still serve this process's own metrics; the fleet gauges go away rather than go stale.
        log.debug("metrics: Redis unavailable (%s)", type(exc).__name__)
        metrics.REDIS_UP.set(0)
        for gauge in (metrics.QUEUE_DEPTH, metrics.QUEUE_READY):
            gauge.clear()
    else:
        metrics.REDIS_UP.set(1)
        for q in snap.queues:
            metrics.QUEUE_DEPTH.labels(str(q.priority)).set(q.depth)
            metrics.QUEUE_READY.labels(str(q.priority)).set(q.ready)
        metrics.FLEET_IN_FLIGHT.set(snap.in_flight)
        metrics.DEAD_LETTERS.set(snap.dead_total)
    body, content_type = metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def routes(settings: Settings) -> list[Route]:
    return [
        Route("GET", "/healthz", healthz, "Liveness", Access.OPEN, tag="operations", operation_id="healthz",
              responses={200: Reply("The process is alive.", Health)}, uses_redis=False),
        Route("GET", "/readyz", readyz, "Readiness", Access.OPEN, tag="operations", operation_id="readyz",
              description="Ready when Redis answers a PING and the fleet's provider token can be had "
              "(from the shared cache, or by one tokenByAkSk call). The provider check is reused for 5 s, and "
              "while tokenByAkSk refuses the AK/SK it is answered from the fleet's pause without asking again.",
              responses={200: Reply("Ready.", Ready), 503: Reply("Not ready; checks say why.", Ready)},
              uses_redis=False),
        Route("GET", "/metrics", metrics_endpoint, "Prometheus metrics", Access.OPEN, tag="operations",
              operation_id="metrics", uses_redis=False,
              description="This process's metrics plus queue depths, fleet in-flight and dead letters read "
              "from Redis at scrape time.",
              responses={200: Reply("Prometheus text format 0.0.4.", None, media="text/plain")}),
    ]
