"""What a worker says at start-up about the replicas its ``WAIT`` needs (DIALER_REDIS_WAIT_REPLICAS).

A fleet that waits for more replicas than the primary has sends no call at all (every ``sending`` mark
times out), and one that runs under Sentinel without waiting can lose a ``sending`` mark in a failover
and so call a number twice: both are said once, as a WARNING, when the worker starts."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.settings import Settings
from worker.store.decode import text

__all__ = ["replication_warning"]


async def replication_warning(redis: Redis, settings: Settings) -> str | None:
    """The start-up WARNING about replication, or None when the settings and the primary agree."""
    wanted = settings.wait_replicas
    if wanted == 0:
        if settings.redis_sentinels:
            return ("DIALER_REDIS_WAIT_REPLICAS=0 under Sentinel: a failover can lose a job's sending mark and the "
                    "number may then be called twice (unsafe; set it to 1 or more)")
        return None
    info = await redis.info("replication")
    role = text(info.get("role", ""))
    connected = int(info.get("connected_slaves", 0))
    if role != "master":
        return f"Redis answered as a {role}, not a primary: writes will fail until it is one"
    if connected < wanted:
        return (f"the Redis primary has {connected} connected replica(s) and DIALER_REDIS_WAIT_REPLICAS is {wanted}: "
                f"no call leaves and no enqueue is acknowledged until {wanted} replica(s) are connected")
    return None
