"""``dialer webhooks``: the process that POSTs each job's events to its statusCallbackUrl, signed.

Why a process of its own, not a part of ``dialer worker`` or ``dialer serve``: a receiver that is slow, hangs
or is down must never take an event loop, sockets, CPU or Redis connections from the calls being dialled or
from the enqueue API. Here it can only fill this process's own slots (``DIALER_WEBHOOK_CONCURRENCY``) and its
destination's share of them (``DIALER_WEBHOOK_MAX_PER_DESTINATION``, across every delivery process); workers
only append to the event stream, which they do anyway. It scales on its own (run several: they share the
work through Redis) and can be stopped, upgraded or left behind without touching the dialling.

What a delivery is (docs/webhooks.md has the receiver's side):

* the event's JSON (:meth:`worker.ledger.events.Event.as_dict`), POSTed with ``X-Dialer-Event-Id``,
  ``X-Dialer-Event-Type``, ``X-Dialer-Attempt``, ``X-Dialer-Timestamp`` and ``X-Dialer-Signature``
  (:mod:`worker.webhooks.signing`); redirects are not followed (each hop would be a new, unchecked
  destination);
* **2xx**: delivered. **410 Gone**: the receiver refuses the event for good: dead-lettered at once (no
  retry). **Anything else** (other 4xx and 5xx, 3xx, a timeout, a refused connection, a TLS failure): retried
  with full-jitter exponential backoff (``DIALER_WEBHOOK_RETRY_BASE_S`` doubling up to
  ``DIALER_WEBHOOK_RETRY_MAX_BACKOFF_S``; ``Retry-After`` on 429/503 is honoured up to that cap) until
  ``DIALER_WEBHOOK_RETRY_MAX_S`` after the first attempt, then dead-lettered. Other 4xx are retried, not
  dropped, on purpose: in practice they are a receiver's deploy or configuration mistake (401 after a key
  rotation, 404 during a rollout) that gets fixed, and dropping them would lose events; a receiver that
  really wants to drop one answers 2xx (ignore) or 410 (dead-letter, replayable);
* an address that is private, loopback or otherwise not public, after DNS, is refused without a request
  (dead-lettered: a policy, not a fault) unless ``DIALER_WEBHOOK_ALLOW_PRIVATE``;
* at least once: a POST whose answer is lost (timeout, a process killed mid-request) is sent again, so
  receivers dedupe by ``X-Dialer-Event-Id`` (the stream id, unique).

Shutdown (SIGTERM/SIGINT): no new claims; POSTs in flight finish (up to the request timeout), anything not
finished is given back; nothing is lost. Redis away: one WARNING (the worker client's retry), deliveries wait,
SIGTERM still stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import socket
import time
from collections import OrderedDict
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker import metrics
from worker.errors import SettingsError
from worker.runtime import freeze_start_up_objects
from worker.settings import Settings
from worker.status_callback import address_allowed
from worker.store import client
from worker.store.keys import Keys
from worker.webhooks.queue import Claim, WebhookQueue
from worker.webhooks.signing import sign

__all__ = ["WebhookProcess", "backoff_s", "check_health", "consumer_name", "run_webhooks", "start_up_problem"]

log = logging.getLogger(__name__)

_INTAKE_BATCH = 200
_INTAKE_BLOCK_MS = 1000
_INTAKE_LOCK_MS = 15_000
_INTAKE_GATHER_S = 0.05
"""After a short batch the intake waits this long: events reach receivers at most 50 ms later, and a busy
stream costs a few intake round trips a second, not one per event (CPU the workers may need)."""
_IDLE_POLL_S = 0.5
"""Longest an idle process waits before it claims again (work queued by another process's intake, a lease
freed by another process); its own intake and finishes wake it at once."""
_HEARTBEAT_S = 10.0
_HEARTBEAT_TTL_S = 30
_SHUTDOWN_REDIS_S = 5.0
_MAX_READ = 64 * 1024
"""Most of a receiver's answer read (then the connection is dropped): nothing in it is used."""
_USER_AGENT = "voice-dialer-webhooks/1"
_DESTINATIONS_REMEMBERED = 1000


class RefusedAddress(OSError):
    """A destination that resolves only to addresses DIALER_WEBHOOK_ALLOW_PRIVATE does not allow."""


class _PublicOnlyResolver(AbstractResolver):
    """DNS through aiohttp's resolver, keeping only public addresses (at each connection, so a name
    re-pointed at a private address after its URL was accepted is still refused: DNS rebinding)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if address_allowed(r["host"], allow_private=False)]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to non-public addresses "
                                 f"({', '.join(sorted({r['host'] for r in found}))})")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def backoff_s(attempts: int, settings: Settings) -> float:
    """Wait after the ``attempts``-th failed attempt: uniform(0, ceiling), the ceiling
    ``DIALER_WEBHOOK_RETRY_BASE_S * 2**(attempts - 1)`` capped at ``DIALER_WEBHOOK_RETRY_MAX_BACKOFF_S``
    ("full jitter": receivers that failed together are not hit again in lock step)."""
    ceiling = min(settings.webhook_retry_max_backoff_s, settings.webhook_retry_base_s * 2.0 ** min(attempts - 1, 64))
    return random.uniform(0.0, ceiling)


def start_up_problem(settings: Settings) -> str | None:
    """Why ``dialer webhooks`` must not start with these settings, or None."""
    if settings.events_max_len <= 0:
        return "DIALER_EVENTS_MAX_LEN is 0: there is no event stream to deliver"
    if settings.webhook_secret is None and not settings.webhook_insecure_unsigned:
        return ("DIALER_WEBHOOK_SECRET is not set: webhooks are signed with it (16+ random characters, e.g. "
                "`openssl rand -hex 24`); to deliver them unsigned anyway set DIALER_WEBHOOK_INSECURE_UNSIGNED=true")
    return None


def consumer_name() -> str:
    """This process's name in Redis (heartbeat): ``<host name>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        return None  # an HTTP date: rare from a webhook receiver; the backoff applies


def _refused(exc: BaseException) -> RefusedAddress | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, RefusedAddress):
            return seen
        inner = getattr(seen, "os_error", None)
        seen = inner if isinstance(inner, BaseException) else (seen.__cause__ or seen.__context__)
    return None


class WebhookProcess:
    """One delivery process: intake (when it holds the lock), claims, POSTs, heartbeat."""

    def __init__(self, settings: Settings, *, consumer: str | None = None) -> None:
        self.settings = settings
        self.consumer = consumer or consumer_name()
        self._secret = None if settings.webhook_secret is None else settings.webhook_secret.get_secret_value().encode()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing: OrderedDict[str, bool] = OrderedDict()
        self.delivered = 0

    def stop(self) -> None:
        """Stop claiming; POSTs in flight finish, the rest stays queued (SIGTERM/SIGINT)."""
        self._stopping.set()
        self._wake.set()
        self._room.set()

    async def run(self) -> None:
        settings = self.settings
        pool: Redis = client.worker_client(settings)
        queue = WebhookQueue(pool, settings)
        resolver: AbstractResolver = DefaultResolver() if settings.webhook_allow_private else _PublicOnlyResolver()
        connector = aiohttp.TCPConnector(limit=settings.webhook_concurrency, resolver=resolver,
                                         enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": _USER_AGENT}, auto_decompress=False,
        )
        loops: list[asyncio.Future[None]] = []
        token: str | None = None
        try:
            ready = asyncio.ensure_future(queue.ensure_group())
            stopped = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not ready.done():
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)
                return
            ready.result()
            log.info("dialer webhooks %s delivering (at most %d at once, %d per destination fleet-wide)",
                     self.consumer, settings.webhook_concurrency, settings.webhook_max_per_destination)
            token = secrets.token_hex(12)
            loops = [asyncio.ensure_future(self._intake(queue, token)),
                     asyncio.ensure_future(self._claims(queue, session)),
                     asyncio.ensure_future(self._heartbeat(pool))]
            stop: asyncio.Future[None] = asyncio.ensure_future(self._stop_wait())
            done, _ = await asyncio.wait([stop, *loops], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done:
                if task is not stop and not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._drain()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._goodbye(pool, queue, token), _SHUTDOWN_REDIS_S)
            await session.close()
            await pool.aclose()

    async def _stop_wait(self) -> None:
        await self._stopping.wait()

    async def _goodbye(self, pool: Redis, queue: WebhookQueue, token: str | None) -> None:
        await pool.delete(Keys(self.settings.key_prefix).webhook_alive(self.consumer))
        if token is not None:
            await queue.release_intake(token)

    async def _drain(self) -> None:
        """Let the POSTs in flight finish (each within the request timeout); give back what is left."""
        if not self._tasks:
            return
        log.info("webhooks: finishing %d delivery(ies) in flight", len(self._tasks))
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.webhook_timeout_s + 2)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_SHUTDOWN_REDIS_S + 1)

    # --- intake ------------------------------------------------------------------------------------

    async def _intake(self, queue: WebhookQueue, token: str) -> None:
        holder = False
        while True:
            try:
                was = holder
                holder = await queue.hold_intake(token, _INTAKE_LOCK_MS)
                if holder != was:
                    log.debug("webhooks: %s the intake", "took" if holder else "lost")
                if not holder:
                    await asyncio.sleep(1.0)
                    continue
                entries = await queue.read(_INTAKE_BATCH, _INTAKE_BLOCK_MS)
                if not entries:
                    continue
                queued = await queue.intake(token, entries)
                if queued == -1:
                    holder = False
                elif queued > 0:
                    self._wake.set()
                if len(entries) < _INTAKE_BATCH:
                    # A trickle: let entries gather for a moment, so a burst of dialling is moved in a few
                    # large batches (one script each) rather than one small batch per event.
                    await asyncio.sleep(_INTAKE_GATHER_S)
            except (RedisError, OSError) as exc:  # the client retries connection errors itself; others here
                log.warning("webhooks: intake failed (%s); again in 1 s", type(exc).__name__)
                await asyncio.sleep(1.0)

    # --- claims and POSTs --------------------------------------------------------------------------

    async def _claims(self, queue: WebhookQueue, session: aiohttp.ClientSession) -> None:
        limit = self.settings.webhook_concurrency
        while not self._stopping.is_set():
            free = limit - len(self._tasks)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()
            try:
                claims, now_ms, next_ms = await queue.claim(free)
            except (RedisError, OSError) as exc:
                log.warning("webhooks: claim failed (%s); again in 1 s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for claim in claims:
                task = asyncio.ensure_future(self._deliver(queue, session, claim))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if len(claims) < free:
                wait = _IDLE_POLL_S if next_ms is None else min(max((next_ms - now_ms) / 1000, 0.005), _IDLE_POLL_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.set()
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("webhooks: a delivery failed unexpectedly: %s", type(exc).__name__, exc_info=exc)

    async def _deliver(self, queue: WebhookQueue, session: aiohttp.ClientSession, claim: Claim) -> None:
        try:
            verdict, delay_s, reason, seconds = await self._post(session, claim)
        except asyncio.CancelledError:
            # Stopping with this one unfinished: give it back now rather than when its lease expires.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(queue.finish(claim, "release")), _SHUTDOWN_REDIS_S)
            raise
        attempts = claim.attempts + 1
        first_ms = claim.first_ms if claim.first_ms is not None else claim.claimed_ms
        if verdict == "retry":
            waited_ms = claim.claimed_ms - first_ms + delay_s * 1000
            if waited_ms > self.settings.webhook_retry_max_s * 1000:
                verdict, reason = "dead", f"{reason}; gave up after {attempts} attempts (DIALER_WEBHOOK_RETRY_MAX_S)"
        if verdict == "delivered":
            await queue.finish(claim, "delivered")
            self.delivered += 1
            lag_s = (claim.claimed_ms - claim.event_ms) / 1000 + seconds
            metrics.observe_webhook("delivered", seconds, lag_s)
            self._note(claim.destination, ok=True, reason="")
        elif verdict == "retry":
            await queue.finish(claim, "retry", delay_ms=int(delay_s * 1000), tries=f"{attempts}:{first_ms}")
            metrics.observe_webhook("retried", seconds)
            self._note(claim.destination, ok=False, reason=reason)
            log.debug("webhook %s (job %s) to %s: %s; attempt %d, again in %.1f s", claim.event_id, claim.job_id,
                      claim.destination, reason, attempts, delay_s)
        else:
            await queue.finish(claim, "dead", dead={"reason": reason, "attempts": attempts, "first_ms": first_ms})
            metrics.observe_webhook("dead", seconds)
            log.warning("webhook %s (job %s) to %s dead-lettered: %s (dialer webhooks dead replay %s)",
                        claim.event_id, claim.job_id, claim.destination, reason, claim.event_id,
                        extra={"job_id": claim.job_id})

    async def _post(self, session: aiohttp.ClientSession, claim: Claim) -> tuple[str, float, str, float]:
        """POST one delivery: (verdict "delivered" | "retry" | "dead", backoff s, reason, request seconds)."""
        attempt = claim.attempts + 1
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Dialer-Event-Id": claim.event_id,
                   "X-Dialer-Event-Type": _event_type(claim.body), "X-Dialer-Attempt": str(attempt),
                   "X-Dialer-Timestamp": timestamp}
        if self._secret is not None:
            headers["X-Dialer-Signature"] = sign(self._secret, timestamp, claim.body)
        started = time.monotonic()
        retry_after: float | None = None
        if not self.settings.webhook_allow_private and (literal := _literal_host(claim.url)) is not None \
                and not address_allowed(literal, allow_private=False):
            # aiohttp connects to a literal address without asking the resolver: judged here instead.
            return "dead", 0.0, f"refused: {literal} is not a public address (DIALER_WEBHOOK_ALLOW_PRIVATE)", 0.0
        try:
            async with session.post(claim.url, data=claim.body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if status in (429, 503):
                    retry_after = _retry_after_s(resp.headers.get("Retry-After"))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await resp.content.read(_MAX_READ)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            seconds = time.monotonic() - started
            refused = _refused(exc)
            if refused is not None:
                return "dead", 0.0, f"refused: {refused} (DIALER_WEBHOOK_ALLOW_PRIVATE)", seconds
            if isinstance(exc, aiohttp.InvalidURL) or not isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
                return "dead", 0.0, f"not a deliverable URL ({type(exc).__name__})", seconds
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return "retry", backoff_s(attempt, self.settings), f"no answer ({kind})", seconds
        seconds = time.monotonic() - started
        if 200 <= status < 300:
            return "delivered", 0.0, "", seconds
        if status == 410:
            return "dead", 0.0, "HTTP 410 Gone: the receiver refused it for good", seconds
        delay = backoff_s(attempt, self.settings)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.webhook_retry_max_backoff_s))
        return "retry", delay, f"HTTP {status}", seconds

    def _note(self, dest: str, *, ok: bool, reason: str) -> None:
        """One WARNING when a destination starts failing and one when it answers again; nothing per retry."""
        was_failing = self._failing.get(dest, False)
        if ok and was_failing:
            log.warning("webhooks to %s are delivered again", dest)
        elif not ok and not was_failing:
            log.warning("webhooks to %s are failing (%s); retrying with backoff for up to %g s per event",
                        dest, reason, self.settings.webhook_retry_max_s)
        self._failing[dest] = not ok
        self._failing.move_to_end(dest)
        while len(self._failing) > _DESTINATIONS_REMEMBERED:
            self._failing.popitem(last=False)

    async def _heartbeat(self, pool: Redis) -> None:
        key = Keys(self.settings.key_prefix).webhook_alive(self.consumer)
        while True:
            with contextlib.suppress(RedisError, OSError):
                await pool.set(key, str(int(time.time())), ex=_HEARTBEAT_TTL_S)
            await asyncio.sleep(_HEARTBEAT_S)


def _literal_host(url: str) -> str | None:
    """The URL's host when it is an IP address (not a name), else None."""
    try:
        host = urlsplit(url).hostname or ""
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


def _event_type(body: bytes) -> str:
    try:
        kind = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return ""
    return kind if isinstance(kind, str) else ""


def log_start_up(settings: Settings) -> None:
    """The start-up WARNINGs: unsigned deliveries, private destinations allowed (never the secret)."""
    if settings.webhook_secret is None and settings.webhook_insecure_unsigned:
        log.warning("INSECURE: DIALER_WEBHOOK_INSECURE_UNSIGNED=true and no DIALER_WEBHOOK_SECRET: webhooks are "
                    "delivered unsigned, so receivers cannot tell them from forgeries")
    if settings.webhook_allow_private:
        log.warning("DIALER_WEBHOOK_ALLOW_PRIVATE=true: webhooks may be POSTed to loopback and private addresses; "
                    "anyone who may enqueue calls can make this process reach into its network")


async def run_webhooks(settings: Settings) -> None:
    """Run a delivery process until SIGTERM/SIGINT. Raises SettingsError when it must not start."""
    problem = start_up_problem(settings)
    if problem is not None:
        raise SettingsError(problem)
    log_start_up(settings)
    proc = WebhookProcess(settings)
    freeze_start_up_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.stop)
    try:
        async with metrics.serve_worker_metrics(settings, health=lambda: check_health(settings)):
            await proc.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def check_health(settings: Settings, host: str | None = None) -> bool:
    """True when a ``dialer webhooks`` process on this host (or ``host``) has a live heartbeat."""
    pool = client.cli_client(settings)
    try:
        pattern = Keys(settings.key_prefix).webhook_alive(f"{host or socket.gethostname()}:*")
        async for _ in pool.scan_iter(match=pattern, count=1000):
            return True
        return False
    finally:
        await pool.aclose()
