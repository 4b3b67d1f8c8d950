"""Prometheus metrics of every dialer process.

The metric objects live here, once per process, on prometheus-client's default registry (which also
carries the ``process_*`` metrics). Code that sends calls uses the helper functions, never the objects,
so label values stay bounded and no secret can reach a label::

    from worker import metrics

    waited = await limiter.acquire(priority)
    metrics.observe_rate_wait(priority, waited)
    with metrics.track_in_flight():
        ...                                           # the provider request
    metrics.observe_provider_response(200, "0", 0.042)
    metrics.observe_outcome("sent", priority, campaign)

``dialer serve`` exposes them at ``/metrics`` (and fills the queue gauges from Redis at scrape time);
a worker process exposes its own with :func:`serve_worker_metrics` on ``DIALER_METRICS_PORT``.

The dashboard's fleet-wide send counter in Redis is :class:`worker.dispatch.stats.SendStats`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from aiohttp import web
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError

from worker.errors import ProviderError
from worker.rules import valid_campaign_name
from worker.settings import Settings

__all__ = [
    "CALLS",
    "DEAD_LETTERS",
    "ENQUEUED",
    "FLEET_IN_FLIGHT",
    "HTTP_LATENCY",
    "HTTP_REQUESTS",
    "HTTP_THROTTLED",
    "IN_FLIGHT",
    "OUTCOMES",
    "PROVIDER_LATENCY",
    "PROVIDER_RESPONSES",
    "QUEUE_DEPTH",
    "QUEUE_READY",
    "RATE_WAIT",
    "REDIS_UP",
    "TOKEN_REFRESHES",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_LAG",
    "WEBHOOK_REQUEST_SECONDS",
    "error_kind",
    "error_label",
    "observe_enqueued",
    "observe_http",
    "observe_outcome",
    "observe_provider_response",
    "observe_rate_wait",
    "observe_throttled",
    "observe_token_refresh",
    "observe_webhook",
    "render",
    "serve_worker_metrics",
    "track_in_flight",
]

log = logging.getLogger(__name__)

OUTCOMES = frozenset(
    {"sent", "failed", "retried", "dead", "unknown", "expired", "suppressed", "cancelled", "skipped", "deferred",
     "parked", "missing"}
)
"""Values of the ``outcome`` label of ``dialer_calls_total``; anything else is counted as ``other``."""

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 3.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CALLS = Counter(
    "dialer_calls", "Call jobs by how a run ended (retried: an attempt failed and will be tried again).",
    ["outcome", "priority", "campaign"],
)
PROVIDER_LATENCY = Histogram(
    "dialer_provider_request_seconds", "Duration of provider HTTP requests that got an answer.",
    ["endpoint"], buckets=_LATENCY_BUCKETS,
)
PROVIDER_RESPONSES = Counter(
    "dialer_provider_responses", "Provider answers by HTTP status and retCode (status none: no answer).",
    ["endpoint", "status", "ret_code"],
)
RATE_WAIT = Histogram(
    "dialer_rate_limit_wait_seconds", "Time a call waited for a fleet-wide rate permit.",
    ["priority"], buckets=_WAIT_BUCKETS,
)
TOKEN_REFRESHES = Counter("dialer_token_refreshes", "tokenByAkSk calls made by this process.", ["result"])
IN_FLIGHT = Gauge("dialer_in_flight_requests", "Provider requests in flight in this process.")
QUEUE_DEPTH = Gauge("dialer_queue_depth", "Jobs on each priority queue (due and deferred).", ["priority"])
QUEUE_READY = Gauge("dialer_queue_ready", "Jobs on each priority queue that are due now.", ["priority"])
FLEET_IN_FLIGHT = Gauge("dialer_fleet_in_flight", "In-flight leases held across the whole fleet.")
DEAD_LETTERS = Gauge("dialer_dead_letters", "Jobs on the dead-letter list.")
REDIS_UP = Gauge("dialer_redis_up", "1 if the last scrape could read Redis, else 0.")
HTTP_REQUESTS = Counter(
    "dialer_http_requests", "Requests served by dialer serve.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "dialer_http_request_seconds", "Time dialer serve took to answer.", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ENQUEUED = Counter("dialer_enqueued", "Calls submitted over the HTTP API, by result.", ["result"])
HTTP_THROTTLED = Counter(
    "dialer_http_throttled", "Requests dialer serve refused with 429 because their key was over its rate limit.",
    ["key_id", "route"],
)
WEBHOOK_DELIVERIES = Counter(
    "dialer_webhook_deliveries", "Webhook POST attempts of dialer webhooks by result: delivered (2xx), retried "
    "(failed; tried again after a backoff), dead (dead-lettered: 410, a refused address, or out of retry time).",
    ["result"],
)
WEBHOOK_REQUEST_SECONDS = Histogram(
    "dialer_webhook_request_seconds", "Duration of webhook POSTs, answered or not, by result.", ["result"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_LAG = Histogram(
    "dialer_webhook_delivery_lag_seconds", "From an event (its ledger transition) to its webhook's delivery.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0),
)
UNKNOWN_GRACE = Counter(
    "dialer_unknown_grace_ended", "Unknown jobs whose grace period ended without a release event (`no_evidence`), "
    "and those of them redialled once (`redialled`, DIALER_REDIAL_AMBIGUOUS=after-grace).", ["result"],
)

_RET_CODE_RE = re.compile(r"-?[0-9]{1,6}")
_KIND_RE = re.compile(r"[^a-z0-9/-]+")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}|no-auth")


def _priority_label(priority: int | str) -> str:
    p = str(priority)
    return p if p in {"1", "2", "3", "4", "5", "6", "7", "8", "9"} else "other"


def _campaign_label(campaign: str | None) -> str:
    # Campaign names are validated by the producer; anything else must not grow the label set.
    if not campaign:
        return ""
    return campaign if valid_campaign_name(campaign) else "other"


def _ret_code_label(ret_code: str | None) -> str:
    if ret_code is None:
        return "none"
    return ret_code if _RET_CODE_RE.fullmatch(ret_code) else "other"


# --- worker-side helpers ---------------------------------------------------------------------------


def observe_outcome(outcome: str, priority: int | str, campaign: str | None = None) -> None:
    """Count how one run of a job ended (``sent``, ``failed``, ``dead``, ``unknown``, ...), or one failed
    attempt that will be tried again (``retried``)."""
    label = outcome if outcome in OUTCOMES else "other"
    CALLS.labels(label, _priority_label(priority), _campaign_label(campaign)).inc()


def observe_provider_response(
    status: int | None, ret_code: str | None, latency_s: float | None, *, endpoint: str = "create"
) -> None:
    """Count one provider answer (``status`` None: no answer) and time it.

    ``endpoint`` is ``"create"`` (createVoiceNotification) or ``"token"`` (tokenByAkSk).
    """
    ep = endpoint if endpoint in ("create", "token") else "other"
    status_label = "none" if status is None else str(int(status))
    PROVIDER_RESPONSES.labels(ep, status_label, _ret_code_label(ret_code)).inc()
    if latency_s is not None and status is not None:
        PROVIDER_LATENCY.labels(ep).observe(max(latency_s, 0.0))


def observe_rate_wait(priority: int | str, seconds: float) -> None:
    """Time a call waited for its rate permit (what ``RateLimiter.acquire`` returns)."""
    RATE_WAIT.labels(_priority_label(priority)).observe(max(seconds, 0.0))


def observe_unknown_grace(no_evidence: int, redialled: int) -> None:
    """Count unknown jobs whose grace period ended without evidence, and the redials made for them."""
    if no_evidence:
        UNKNOWN_GRACE.labels("no_evidence").inc(no_evidence)
    if redialled:
        UNKNOWN_GRACE.labels("redialled").inc(redialled)


def observe_webhook(result: str, request_s: float, lag_s: float | None = None) -> None:
    """Count one webhook attempt (``delivered``, ``retried``, ``dead``), time its POST and, when delivered, the
    event's way from its transition to the receiver. No URL or host is ever a label (unbounded)."""
    label = result if result in ("delivered", "retried", "dead") else "other"
    WEBHOOK_DELIVERIES.labels(label).inc()
    WEBHOOK_REQUEST_SECONDS.labels(label).observe(max(request_s, 0.0))
    if lag_s is not None:
        WEBHOOK_LAG.observe(max(lag_s, 0.0))


def observe_token_refresh(ok: bool) -> None:
    """Count one tokenByAkSk call made by this process."""
    TOKEN_REFRESHES.labels("ok" if ok else "error").inc()


@contextmanager
def track_in_flight() -> Iterator[None]:
    """Count a provider request as in flight for the duration of the ``with`` block."""
    IN_FLIGHT.inc()
    try:
        yield
    finally:
        IN_FLIGHT.dec()


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a failed attempt: ``retryable/http-500``, ``permanent/retcode-12``,
    ``ambiguous/no-answer``, ``auth/http-401``. Never contains message text (no secrets, few values).

    >>> from worker.errors import RetryableError
    >>> error_kind(RetryableError("x", status=200, ret_code="1"))
    'retryable/retcode-1'
    """
    if not isinstance(exc, ProviderError):
        return "error/" + _KIND_RE.sub("-", type(exc).__name__.lower())[:30]
    base = exc.kind
    if exc.ret_code is not None and exc.ret_code != "0":
        detail = "retcode-" + _ret_code_label(exc.ret_code)
    elif exc.status is not None:
        detail = f"http-{exc.status}"
    else:
        detail = "no-answer"
    return error_label(f"{base}/{detail}")


def error_label(kind: str) -> str:
    """``kind`` reduced to a bounded label (``a-z 0-9 / -``, 40 characters): safe as a metric label or
    a Redis hash field whatever a caller passes."""
    return _KIND_RE.sub("-", kind.lower())[:40]


# --- service-side helpers --------------------------------------------------------------------------


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """Count one request served by ``dialer serve``; ``route`` is the route's template, never the raw path."""
    m = method if method in _HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(m, route, str(status)).inc()
    HTTP_LATENCY.labels(route).observe(max(seconds, 0.0))


def observe_enqueued(result: str, n: int = 1) -> None:
    """Count calls submitted over the HTTP API: accepted, duplicate, conflict or rejected."""
    if n:
        ENQUEUED.labels(result if result in ("accepted", "duplicate", "conflict", "rejected") else "other").inc(n)


def observe_throttled(key_id: str, route: str) -> None:
    """Count one request refused by the per-key throttle. ``key_id`` is the key's non-secret id (anything
    else is counted as ``other``, so a key itself can never become a label); ``route`` its template."""
    HTTP_THROTTLED.labels(key_id if _KEY_ID_RE.fullmatch(key_id) else "other", route).inc()


def render(accept: str | None = None) -> tuple[bytes, str]:
    """Every metric of this process and its content type, in the format the ``Accept`` header asks for
    (Prometheus text 0.0.4 by default, OpenMetrics on request)."""
    encode, content_type = choose_encoder(accept or "")
    return encode(REGISTRY), content_type


# --- worker metrics endpoint ----------------------------------------------------------------------


async def _metrics_handler(request: web.Request) -> web.Response:
    body, content_type = render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


@asynccontextmanager
async def serve_worker_metrics(
    settings: Settings, health: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[int]:
    """Serve ``/metrics`` (and ``/healthz`` when ``health`` is given) for a worker process on
    ``settings.http_host:settings.metrics_port``; yields the port. Does nothing (yields 0) when
    ``metrics_port`` is 0. Each worker process on a host needs its own port.

    ::

        async with serve_worker_metrics(settings, health=lambda: check_health(settings, queues)):
            await process.run()
    """
    if not settings.metrics_port:
        yield 0
        return
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler)
    if health is not None:
        check = health

        async def healthz(request: web.Request) -> web.Response:
            try:
                ok = await check()
            except (RedisError, OSError):
                ok = False
            return web.json_response({"status": "ok" if ok else "unhealthy"}, status=200 if ok else 503)

        app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.metrics_port)
    await site.start()
    log.info("worker metrics on http://%s:%s/metrics", settings.http_host, settings.metrics_port)
    try:
        yield settings.metrics_port
    finally:
        await runner.cleanup()
