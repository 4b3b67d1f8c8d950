"""Redis with Sentinel as real processes, for R6: one primary, its replicas and three Sentinels on free
ports, each a ``redis-server`` child (:class:`tests.helpers.RedisServer`) with its files under a tmp dir.

* :meth:`SentinelHA.start` starts the data nodes, then the Sentinels (each with its own writable config
  file, which a Sentinel rewrites), and waits until every Sentinel names the same primary, sees every
  replica up and knows the other Sentinels (without the last, no failover can be authorised).
* :meth:`SentinelHA.kill_primary` sends SIGKILL to the current primary and measures the failover: when
  the Sentinels name a new primary and when a write through them is first accepted (:class:`Failover`).
* :meth:`SentinelHA.restart` starts a killed node again as a replica of the current primary, as a
  supervisor's start script that asks the Sentinels first would. It must not come back as it was started
  (a primary) before the failover is over: with persistence off it would be an empty primary, and its
  replicas would copy the empty data set (Redis's replication docs warn about exactly this). Once the
  Sentinels have moved on, a node that comes back as a primary is converted by them, but starting it as a
  replica leaves no window at all.

The data nodes run without persistence (``--save ''``, no AOF): in R6 durability comes from the replicas
(the dialer's ``WAIT``), not from disks, and a killed node always rejoins empty and copies the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.helpers import RedisServer, wait_until

__all__ = ["MASTER", "Failover", "SentinelHA"]

MASTER = "mymaster"
_PROBE_KEY = "r6:failover-probe"


@dataclass(frozen=True)
class Failover:
    """One kill of the primary and what followed; times in seconds after the kill."""

    old_port: int
    new_port: int
    killed_at: float  # time.time() of the kill (the simulator's log uses the same clock)
    switched_s: float  # the Sentinels name the new primary
    writable_s: float  # a write through the Sentinels is accepted by the new primary

    def figures(self) -> str:
        return f"named after {self.switched_s:.2f} s, writable after {self.writable_s:.2f} s"


class SentinelHA:
    """One primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum 2) monitoring them as
    :data:`MASTER`. Ports are free ports; the data nodes keep their ports across restarts."""

    def __init__(self, workdir: Path, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes: list[RedisServer] = [RedisServer(self._dir("node0"), *self._log("node0"))]
        primary = self.nodes[0].port
        self.nodes += [RedisServer(self._dir(f"node{i}"), *self._log(f"node{i}"), *self._replica_of(primary))
                       for i in range(1, replicas + 1)]
        self.sentinels: list[RedisServer] = []
        for i in range(sentinels):
            directory = self._dir(f"sentinel{i}")
            self.sentinels.append(RedisServer(directory, "--sentinel", *self._log(f"sentinel{i}"),
                                              config=directory / "sentinel.conf"))
        self.failovers: list[Failover] = []

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _log(self, name: str) -> tuple[str, ...]:
        """Each process logs to ``<workdir>/<name>.log`` (appended across restarts), for a failure's story."""
        return ("--logfile", str(self.workdir / f"{name}.log"))

    @staticmethod
    def _replica_of(port: int) -> tuple[str, ...]:
        return ("--replicaof", "127.0.0.1", str(port))

    # --- addresses -----------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The Sentinels as ``host:port`` (DIALER_REDIS_SENTINELS)."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def env(self) -> dict[str, str]:
        """The dialer's environment for these Sentinels (the URL's host and port are then not used)."""
        return {"DIALER_REDIS_SENTINELS": ",".join(self.addresses), "DIALER_REDIS_SENTINEL_MASTER": MASTER}

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def _sentinel(self, **kwargs: Any) -> Sentinel:
        timeouts = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        return Sentinel([("127.0.0.1", s.port) for s in self.sentinels if s.proc is not None],  # type: ignore[no-untyped-call]
                        sentinel_kwargs=timeouts, **{**timeouts, **kwargs})

    def client(self, retry_s: float = 60.0) -> aioredis.Redis:
        """A client of the primary through the Sentinels (redis-py's own Sentinel support, not the
        dialer's), which rides out a failover: a command that meets a dead or demoted primary is retried
        every 0.1 s, for up to ``retry_s``, on whichever primary the Sentinels then name."""
        retry = Retry(ConstantBackoff(0.1), int(retry_s / 0.1))
        client: aioredis.Redis = self._sentinel(
            retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        ).master_for(MASTER)
        return client

    # --- life cycle ----------------------------------------------------------------------------------

    def _write_config(self, sentinel: RedisServer, primary: int) -> None:
        assert sentinel.config is not None
        lines = [
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
            # Both replicas follow a new primary at once (the default, 1, makes the second wait).
            f"sentinel parallel-syncs {MASTER} 2",
            # Known from the start: a Sentinel otherwise learns of replicas from the primary's INFO, which
            # it reads every 10 s.
            *(f"sentinel known-replica {MASTER} 127.0.0.1 {n.port}" for n in self.nodes if n.port != primary),
        ]
        sentinel.config.write_text("\n".join(lines) + "\n")

    async def start(self, timeout: float = 30) -> None:
        for n in self.nodes:
            n.start()
        primary = self.nodes[0].port
        for s in self.sentinels:
            self._write_config(s, primary)
            s.start()
        await self.wait_healthy(primary, timeout)

    async def wait_healthy(self, primary: int | None, timeout: float = 30) -> float:
        """Wait until every Sentinel names ``primary`` (None: whichever primary the first Sentinel names
        at each look: on a loaded host a second, spurious failover may follow the one a test caused), sees
        every running data node but it as a replica that is up and linked, and knows every other Sentinel;
        returns the seconds waited."""
        wanted = primary
        last: list[str] = []

        async def agreed() -> bool:
            last.clear()
            primary = wanted
            if primary is None:
                r = aioredis.Redis(port=self.sentinels[0].port, socket_timeout=1)
                try:
                    _, named = await r.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
                    primary = int(named)
                except (RedisError, TypeError) as exc:
                    last.append(f"sentinel {self.sentinels[0].port}: {exc!r}")
                    return False
                finally:
                    await r.aclose()
            replicas = {n.port for n in self.nodes if n.proc is not None and n.port != primary}
            for s in self.sentinels:
                r = aioredis.Redis(port=s.port, socket_timeout=1)
                try:
                    master = await r.sentinel_master(MASTER)  # type: ignore[no-untyped-call]
                    seen = await r.sentinel_slaves(MASTER)  # type: ignore[no-untyped-call]
                except RedisError as exc:
                    last.append(f"sentinel {s.port}: {exc!r}")
                    return False
                finally:
                    await r.aclose()
                up = {x["port"] for x in seen if not x["is_sdown"] and x.get("master-link-status") == "ok"
                      and x.get("master-port") == primary}
                state = (master["port"], not master["is_sdown"], up >= replicas, master["num-other-sentinels"])
                last.append(f"sentinel {s.port}: primary {state[0]} up {state[1]}, replicas up {sorted(up)} "
                            f"(want {sorted(replicas)}), other sentinels {state[3]}")
                if state != (primary, True, True, len(self.sentinels) - 1):
                    return False
            return True

        return await wait_until(agreed, timeout, 0.1, lambda: "Sentinels agree: " + "; ".join(last))

    async def primary(self, timeout: float = 30) -> int:
        """The primary's port once every Sentinel names the same one (right after a failover, one that has
        not heard of it yet still names the old primary)."""
        named: set[int] = set()

        async def agreed() -> bool:
            named.clear()
            for s in self.sentinels:
                r = aioredis.Redis(port=s.port, socket_timeout=1)
                try:
                    _, port = await r.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
                    named.add(int(port))
                except (RedisError, TypeError):
                    return False
                finally:
                    await r.aclose()
            return len(named) == 1

        await wait_until(agreed, timeout, 0.05, lambda: f"the Sentinels name one primary (they name {named})")
        return named.pop()

    async def kill_primary(self, timeout: float = 60) -> Failover:
        """SIGKILL the current primary; return once a write through the Sentinels is accepted by the new
        one (a :class:`Failover`, also appended to ``failovers``)."""
        old = await self.primary()
        self.node(old).kill()
        killed_at, started = time.time(), time.monotonic()
        switched: float | None = None
        sentinel = self._sentinel()
        try:
            while True:
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    raise AssertionError(f"no new primary within {timeout} s of killing {old}")
                try:
                    _, port = await sentinel.discover_master(MASTER)
                except RedisError:
                    port = old  # no Sentinel names a primary that is up: the old one is down, none promoted
                if int(port) != old:
                    switched = elapsed if switched is None else switched
                    node = aioredis.Redis(port=int(port), socket_timeout=0.5, socket_connect_timeout=0.5)
                    try:
                        await node.set(_PROBE_KEY, str(killed_at))  # READONLY until the promotion is done
                        break
                    except RedisError:
                        pass
                    finally:
                        await node.aclose()
                await asyncio.sleep(0.02)
        finally:
            for s in sentinel.sentinels:
                await s.aclose()
        failover = Failover(old, int(port), killed_at, switched, time.monotonic() - started)
        # The next step (a restart, another kill) must find the same primary whichever Sentinel it asks.
        assert await self.primary(timeout) == failover.new_port
        self.failovers.append(failover)
        return failover

    async def restart(self, port: int, timeout: float = 60) -> float:
        """Start the killed node on ``port`` again, as a replica of the current primary; returns the
        seconds until the Sentinels see it up and linked (replication included)."""
        started = time.monotonic()
        primary = await self.primary()
        assert primary != port, f"the Sentinels still name the killed node {port} as the primary"
        node = self.node(port)
        node.extra = (*self._log(f"node{self.nodes.index(node)}"), *self._replica_of(primary))
        node.start()
        await self.wait_healthy(None, timeout)
        return time.monotonic() - started

    async def replicas_acked(self, timeout_ms: int = 500) -> int:
        """How many replicas acknowledge everything written so far (``WAIT``) on the current primary."""
        node = aioredis.Redis(port=await self.primary(), socket_timeout=timeout_ms / 1000 + 2)
        try:
            return int(await node.execute_command("WAIT", len(self.nodes) - 1, timeout_ms))  # type: ignore[no-untyped-call]
        finally:
            await node.aclose()

    def stop(self) -> None:
        """Kill every process (teardown: the data is thrown away)."""
        for server in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                server.kill()
