"""The only place a Redis client is made: one function per role, since each role must meet a Redis
outage differently.

* :func:`worker_client`: a worker process waits for Redis for as long as it takes (every command is
  retried forever with capped backoff) and never dies of a restart; its pool is a
  :class:`~worker.store.connections.DialerConnectionPool` (no check-out lock, retried handshake).
* :func:`api_client`: ``dialer serve`` answers 503 rather than hang: bounded connect and read timeouts.
* :func:`cli_client`: a command run by a person fails within seconds when Redis is away.

All three take the URL from ``settings.redis_url`` (``redis://``, ``rediss://``, ``unix://``; a
password percent-encoded as URLs require is decoded by redis-py) and, for ``rediss://``, the TLS
options of :func:`tls_options` (certificate and host name verified; CA and client certificate from
``DIALER_REDIS_TLS_*``).

With ``DIALER_REDIS_SENTINELS`` every role's pool is a Sentinel pool instead (redis-py's
``SentinelConnectionPool``; arq's own Sentinel support is not used, since arq is handed our client): a
connection asks the Sentinels for the primary each time it opens, and one that meets a demoted primary
(``READONLY``) is closed and its command fails as a connection error, which the worker's retry then
sends again to whichever primary the Sentinels name. The URL then gives only the scheme, user,
password and db.

    redis = cli_client(settings)
    try:
        await redis.ping()
    finally:
        await redis.aclose()
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import AuthenticationError, OutOfMemoryError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.settings import Settings
from worker.store.connections import DialerConnectionPool

__all__ = [
    "UNREACHABLE", "api_client", "cli_client", "full", "masked_url", "redis_location", "tls_options", "unreachable",
    "worker_client",
]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Redis)
T = TypeVar("T")

# A worker opens its socket quickly or not at all (arq's default connect timeout); reads have no
# timeout, as before: a command waits for its answer however long a busy Redis takes.
_WORKER_CONNECT_TIMEOUT_S = 1.0
_API_SOCKET_TIMEOUT_S = 5.0
_API_CONNECT_TIMEOUT_S = 3.0
_API_HEALTH_CHECK_S = 30
_CLI_CONNECT_TIMEOUT_S = 3.0
# One command of a person's CLI run (a batch of 100 enqueues, a page of a list) answers in
# milliseconds; a Redis that takes this long is as good as away.
_CLI_SOCKET_TIMEOUT_S = 10.0
# A Sentinel answers "who is the primary" from memory: one that takes longer is skipped for the next.
_SENTINEL_TIMEOUT_S = 1.0


class CappedBackoff(AbstractBackoff):
    """Exponential backoff with a ceiling, for any number of failures (redis-py's
    ``ExponentialBackoff`` overflows a float at 2**1024, so "retry forever" ended after ~1,024 tries)."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self._base = base
        self._cap = cap

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        return float(min(self._cap, self._base * 2 ** min(failures, 32)))


_FLAP_S = 1.0


class OutageRetry(Retry):
    """redis-py's ``Retry`` (forever when ``retries=-1``) that tells the log about an outage: one
    WARNING when Redis becomes unreachable, naming the URL (password masked), and one when it answers
    again; nothing per retry. One instance serves every connection of a pool, so a process logs an
    outage once, not once per connection or command. A single failure that the immediate retry cures
    (an idle connection closed by Redis) is not an outage and is not logged, nor is a failure within
    a second of a command that succeeded: when Redis is back after a restart, the pool's other, stale
    connections fail once each, and that is the end of the outage, not a new one."""

    def __init__(self, backoff: AbstractBackoff, retries: int, where: str) -> None:
        super().__init__(backoff, retries)
        self.where = where
        self.down_since: float | None = None
        self.last_ok = -math.inf

    def __deepcopy__(self, memo: dict[int, Any]) -> OutageRetry:
        # redis-py deep-copies the Retry into every connection; the outage state must stay shared (and
        # a call's own state lives in call_with_retry's locals, so sharing is safe).
        return self

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                now = time.monotonic()
                if failures >= 2 and self.down_since is None and now - self.last_ok > _FLAP_S:
                    self.down_since = now
                    log.warning("Redis is not reachable at %s (%s); retrying until it is back",
                                self.where, _reason(error))
                if 0 <= self._retries < failures:
                    raise error
                backoff = self._backoff.compute(failures)
                if backoff > 0:
                    await asyncio.sleep(backoff)
            else:
                self.last_ok = time.monotonic()
                if self.down_since is not None:
                    log.warning("Redis is reachable again at %s (after %.1f s)",
                                self.where, time.monotonic() - self.down_since)
                    self.down_since = None
                return result


def worker_retry(where: str = "") -> dict[str, Any]:
    """The retry settings of a worker's connections: every command and every socket opening is
    retried forever with capped backoff when Redis is unreachable, restarting or loading; an outage
    is logged once (:class:`OutageRetry`)."""
    return {
        "retry": OutageRetry(CappedBackoff(), retries=-1, where=where),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
    }


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for a ``rediss://`` URL (none otherwise): the server's certificate is
    verified against DIALER_REDIS_TLS_CA_FILE (or the system's CAs) and so is its host name (redis-py
    does not check the host name unless told to); a client certificate when one is set."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return {}
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }


class _SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, opening its socket once per look-up of the primary.

    redis-py's ``connect_to`` opens the socket through ``Connection.connect``, which retries with the
    connection's own ``Retry``: for a worker that retries forever, so a dead primary's address was
    tried for ever and the failover never seen (measured: a worker stuck after the primary's kill -9).
    Here that inner opening is tried once; the outer retry (``SentinelManagedConnection.connect``) asks
    the Sentinels again before the next try."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = retry


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


class DialerSentinelPool(DialerConnectionPool, SentinelConnectionPool):
    """The worker's pool (no check-out lock, retried handshake) on Sentinel-managed connections."""


def _pool(settings: Settings, pool_class: type[ConnectionPool], **kwargs: Any) -> ConnectionPool:
    """A pool of ``pool_class`` for ``settings.redis_url``, or its Sentinel variant when Sentinels are set."""
    if not settings.redis_sentinels:
        return pool_class.from_url(settings.redis_url, **kwargs, **tls_options(settings))
    url_kwargs = parse_url(settings.redis_url)
    url_kwargs.pop("host", None)
    url_kwargs.pop("port", None)
    ssl = url_kwargs.pop("connection_class", None) is SSLConnection
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": _SENTINEL_TIMEOUT_S, "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        **({"ssl": True, **tls_options(settings)} if ssl else {}),
    }
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinels = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in settings.redis_sentinels)]
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    sentinel_pool = DialerSentinelPool if issubclass(pool_class, DialerConnectionPool) else SentinelConnectionPool
    connection_class = _SentinelSSLConnection if ssl else _SentinelConnection
    return sentinel_pool(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, sentinel, connection_class=connection_class, **url_kwargs, **kwargs,
        **tls_options(settings),
    )


def _client(pool: ConnectionPool, redis_class: type[R] = Redis, **client_kwargs: Any) -> R:  # type: ignore[assignment]
    redis = redis_class(connection_pool=pool, **client_kwargs)
    redis.auto_close_connection_pool = True  # the pool is the client's own: aclose() closes it
    return redis


def worker_client(settings: Settings, redis_class: type[R] = Redis, **client_kwargs: Any) -> R:  # type: ignore[assignment]
    """A worker process's Redis client. ``redis_class`` and ``client_kwargs`` let the queue engine's
    seam make its own client class (arq's) on the same pool."""
    pool = _pool(
        settings, DialerConnectionPool, socket_connect_timeout=_WORKER_CONNECT_TIMEOUT_S,
        **worker_retry(redis_location(settings)),
    )
    return _client(pool, redis_class, **client_kwargs)


def api_client(settings: Settings) -> Redis:
    """The HTTP service's client: bounded timeouts, so a Redis outage answers 503 instead of hanging."""
    pool = _pool(
        settings, ConnectionPool, socket_timeout=_API_SOCKET_TIMEOUT_S, socket_connect_timeout=_API_CONNECT_TIMEOUT_S,
        health_check_interval=_API_HEALTH_CHECK_S,
    )
    return _client(pool)


def cli_client(settings: Settings, *, blocking: bool = False) -> Redis:
    """A CLI command's client: no retries, a short connect timeout, so an absent Redis fails at once.
    ``blocking``: for a command that waits in Redis (``XREAD BLOCK`` up to ``BLOCKING_WAIT_MS``), whose
    answer may take that much longer."""
    pool = _pool(
        settings, ConnectionPool,
        socket_timeout=_CLI_SOCKET_TIMEOUT_S + (BLOCKING_WAIT_MS / 1000 if blocking else 0),
        socket_connect_timeout=_CLI_CONNECT_TIMEOUT_S,
    )
    return _client(pool)


BLOCKING_WAIT_MS = 5000
"""The longest a blocking read of a CLI command waits in Redis."""

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError)
"""What a command meets when Redis is away (refused, unreachable, not answering in time, refusing the
login) or full (``maxmemory`` with ``noeviction``): :func:`unreachable` makes it one line."""


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for a log line or an error message."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()
    except ValueError:
        return "(unparseable DIALER_REDIS_URL)"


def redis_location(settings: Settings) -> str:
    """Where the dialer's Redis is, for a log line or an error: the URL with its password masked, or with
    Sentinels, the master's name and the Sentinels' addresses."""
    if not settings.redis_sentinels:
        return masked_url(settings.redis_url)
    return f"Sentinel master {settings.redis_sentinel_master!r} via {','.join(settings.redis_sentinels)}"


def full(settings: Settings) -> str:
    """The one line a command prints when Redis refuses a write because it is full (``maxmemory`` with
    ``noeviction``)."""
    return (f"Redis at {redis_location(settings)} is full (maxmemory reached, writes refused): "
            "free memory or raise maxmemory, then run the command again")


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def unreachable(settings: Settings, exc: BaseException) -> str:
    """The one line a command prints when Redis is away, refuses the URL's user and password, or is full:
    where it looked (password masked) and what happened."""
    if isinstance(exc, OutOfMemoryError):
        return full(settings)
    if isinstance(exc, AuthenticationError):
        return (f"Redis refused the login at {redis_location(settings)} ({_reason(exc)}); check the user "
                "and password in DIALER_REDIS_URL (percent-encoded: @ %40, : %3A, / %2F, # %23, % %25)")
    return f"Redis is not reachable at {redis_location(settings)} ({_reason(exc)})"
