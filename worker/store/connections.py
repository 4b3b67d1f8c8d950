"""The Redis connection pool of a worker process: redis-py 5's pool with two changes (built by
:func:`worker.store.client.worker_client`).

1. **No lock around a check-out.** redis-py takes an ``asyncio.Lock`` in ``get_connection`` around
   taking an idle connection and checking it, and the check yields to the event loop (with hiredis it
   is a read with a zero timeout; opening a connection yields too). Once tasks queue at that lock,
   every later check-out queues behind them and the lock is handed over one waiter per event-loop
   turn: with hundreds of jobs in one loop, the process's Redis commands start one per turn, their
   round trips barely overlap and the loop spins (an ``epoll`` call per command). Taking a connection
   needs no lock in asyncio (the pool's lists change synchronously); the lock only matters to token
   re-authentication (``re_auth_callback``), which the dialer does not use.
2. **A retried handshake.** redis-py retries a command and the opening of a socket, but not the
   handshake that follows (``HELLO``/``AUTH``/``CLIENT SETINFO``/``SELECT``) nor the pool's readiness
   check: during a Redis restart a connection can be accepted and then reset, and that error reached
   the caller, which for a job meant arq failing (and dropping) it. Here the whole check-out is
   retried with the connection's own ``Retry`` (``client.worker_retry``: forever, capped backoff), as
   a command would be. A refused password is not retried.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["DialerConnectionPool"]


class _Refused(Exception):
    """Carries an error that must not be retried through ``Retry.call_with_retry``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class DialerConnectionPool(ConnectionPool):
    """redis-py's ``ConnectionPool`` without the check-out lock, with a retried handshake."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> AbstractConnection:
        # Synchronous: no other task can take the same connection.
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        try:
            await ConnectionPool.ensure_connection(self, connection)
            return
        except AuthenticationError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await connection.disconnect()
        # The check-out failed (Redis restarting): again, as the connection's Retry would a command.

        async def attempt() -> None:
            try:
                await ConnectionPool.ensure_connection(self, connection)
            except AuthenticationError as exc:
                raise _Refused(exc) from exc

        async def reset(_error: Exception) -> None:
            await connection.disconnect()

        try:
            await connection.retry.call_with_retry(attempt, reset)
        except _Refused as refused:
            raise refused.error from None

