"""Auto-pipelining: the Redis calls that a worker's concurrent jobs make while one of them is waiting
for Redis leave together, as one pipelined round trip.

A worker process runs hundreds of jobs in one event loop, and each job makes a few small script calls
(``Ledger.claim_run``, ``begin_send``, ``mark_sent`` ...). Sent one by one, every call costs a pooled
connection check-out (with a readiness probe), one ``send()`` syscall and one wake-up for its reply,
which profiling showed to be the worker's largest CPU cost. Here a call made while no other is out
goes at once, on its own (no added latency, no extra task); calls made while one is out wait for it to
come back and then leave together, in pipelines of up to 32 sent at the same time (one connection and
one write each, so the first replies are handled while Redis runs the rest), each caller getting its
own reply or error. The busier the process, the bigger the batches::

    pipe = AutoPipeline.of(redis)               # one per Redis client, shared by its users
    script = redis.register_script(LUA)
    reply = await pipe.eval(script, keys=[k], args=[a])    # like `await script(keys=..., args=...)`
    n = await pipe.execute("ZREM", key, member)            # any command, reply parsed as usual

Semantics are those of calling each command on its own:

* replies and errors are per call (a failing script fails only its own caller);
* scripts go as EVALSHA; a NOSCRIPT reply (Redis restarted and lost its script cache) loads the
  script and runs that call again, which is safe because NOSCRIPT means it did not run;
* a dropped connection is retried by the client's ``Retry`` settings (``engine.redis_settings``), as a
  single command is: a call may then run twice, exactly as a retried single command may;
* a caller cancelled before its batch leaves is dropped from it; once sent, the command runs anyway
  (as a single command whose reply is lost would).

Replication: ``eval_replicated`` runs a script and then ``WAIT numreplicas timeout`` on the same
connection (``WAIT`` counts the replicas that have every write of its own connection), in the same
pipeline as the batch it joins: one ``WAIT`` covers every call of the batch, so the wait for replicas
is shared by concurrent jobs as the round trip is. Its caller gets the script's reply and the number of
replicas that acknowledged.

Order between calls of one caller is kept (a caller awaits each reply before its next call); calls
of different callers in one batch are independent, as they would be on separate connections.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, KeyT

__all__ = ["AutoPipeline"]

_MAX_BATCH = 32
"""Most commands in one pipeline; a bigger batch is split into pipelines sent at once."""
_NOSCRIPT_ROUNDS = 3
"""A script is reloaded at most this many times for one call (Redis restarting again and again)."""

_registry: weakref.WeakKeyDictionary[Redis, AutoPipeline] = weakref.WeakKeyDictionary()


Wait = tuple[int, int]
"""A ``WAIT``'s (numreplicas, timeout in ms)."""


class _Call:
    __slots__ = ("args", "future", "script", "wait")

    def __init__(self, args: tuple[Any, ...], script: AsyncScript | None, future: asyncio.Future[Any],
                 wait: Wait | None = None) -> None:
        self.args = args
        self.script = script
        self.future = future
        self.wait = wait


def _wait_of(calls: Sequence[_Call]) -> Wait | None:
    """The one ``WAIT`` a batch ends with: the most replicas and the longest timeout any call asked for."""
    waits = [c.wait for c in calls if c.wait is not None]
    if not waits:
        return None
    return max(w[0] for w in waits), max(w[1] for w in waits)


class AutoPipeline:
    """Batches the calls made on one Redis client while another is out (see the module doc)."""

    def __init__(self, redis: Redis, *, max_batch: int = _MAX_BATCH) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._busy = False  # a call or batch is out, waiting for Redis
        self._flushes: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, redis: Redis) -> AutoPipeline:
        """The auto-pipeline of ``redis``, created on first use: every user of one client shares it,
        so their calls coalesce with each other."""
        pipe = _registry.get(redis)
        if pipe is None:
            pipe = _registry[redis] = cls(redis)
        return pipe

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command (now, or in the next batch) and return its parsed reply (or raise its error)."""
        return await self._submit(args, None)

    async def eval(
        self, script: AsyncScript, keys: Sequence[KeyT] = (), args: Sequence[EncodableT] = (), *, now: bool = False
    ) -> Any:
        """Run a registered script (now, or in the next batch); same reply as ``await script(keys, args)``.

        ``now``: a call whose latency matters more than its cost (the last write before a paced request)
        goes at once on a connection of its own, even while a batch is out."""
        if now:
            return await script(keys=keys, args=args)
        return await self._submit(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def eval_replicated(
        self, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT], wait: Wait, *, now: bool = False,
    ) -> tuple[Any, int]:
        """Like :meth:`eval`, then ``WAIT`` for ``wait`` = (replicas, timeout ms) on the same connection:
        the script's reply and how many replicas acknowledged its writes (and the batch's) in time."""
        call_args = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if now:
            return await self._alone(call_args, script, wait)  # type: ignore[no-any-return]
        return await self._submit(call_args, script, wait)  # type: ignore[no-any-return]

    async def _alone(self, args: tuple[Any, ...], script: AsyncScript | None, wait: Wait | None) -> Any:
        replies, acked = await self._send([args], wait)
        if isinstance(replies[0], NoScriptError) and script is not None:
            await self._redis.script_load(script.script)
            replies, acked = await self._send([args], wait)
        if isinstance(replies[0], Exception):
            raise replies[0]
        return replies[0] if wait is None else (replies[0], acked)

    async def _submit(self, args: tuple[Any, ...], script: AsyncScript | None, wait: Wait | None = None) -> Any:
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending.append(_Call(args, script, future, wait))
            return await future
        # Nothing out: this call goes now, from its caller's own task, as it would without us.
        self._busy = True
        try:
            return await self._alone(args, script, wait)
        finally:
            self._next()

    def _next(self) -> None:
        """The call or batch that was out came back: send what queued meanwhile, or go idle."""
        if not self._pending:
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        calls, self._pending = self._pending, []
        # A caller cancelled before its command left: the command is not sent at all.
        calls = [c for c in calls if not c.future.done()]
        try:
            # Big batches go as several pipelines at once, on their own connections: the first replies
            # are being handled here while Redis still runs the later commands.
            step = self._max_batch
            await asyncio.gather(*(self._run(calls[i : i + step]) for i in range(0, len(calls), step)))
        except BaseException:
            # Cancelled (the process is stopping): nobody may wait for ever on a batch not sent.
            for c in (*calls, *self._pending):
                c.future.cancel()
            self._pending = []
            raise
        finally:
            self._next()

    async def _run(self, calls: list[_Call]) -> None:
        for _ in range(_NOSCRIPT_ROUNDS):
            try:
                replies, acked = await self._send([c.args for c in calls], _wait_of(calls))
            except asyncio.CancelledError:
                for c in calls:
                    c.future.cancel()
                raise
            except BaseException as exc:  # handed to every caller of the batch
                for c in calls:
                    if not c.future.done():
                        c.future.set_exception(exc)
                return
            missing: list[_Call] = []
            for call, reply in zip(calls, replies, strict=True):
                if isinstance(reply, NoScriptError) and call.script is not None:
                    missing.append(call)
                elif call.future.done():
                    continue  # its caller was cancelled meanwhile
                elif isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply if call.wait is None else (reply, acked))
            if not missing:
                return
            try:
                for script in {id(c.script): c.script for c in missing if c.script is not None}.values():
                    await self._redis.script_load(script.script)
            except BaseException as exc:
                for c in missing:
                    if not c.future.done():
                        c.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            calls = [c for c in missing if not c.future.done()]
            if not calls:
                return
        for c in calls:
            if not c.future.done():
                c.future.set_exception(NoScriptError("script not loaded after repeated attempts"))

    async def _send(self, commands: list[tuple[Any, ...]], wait: Wait | None = None) -> tuple[list[Any], int]:
        """The commands' replies (errors as values) and, with ``wait``, the replicas that acknowledged."""
        if len(commands) == 1 and wait is None:
            # A plain command is cheaper than a pipeline of one.
            try:
                return [await self._redis.execute_command(*commands[0])], 0  # type: ignore[no-untyped-call]
            except ResponseError as exc:  # the command's own error, as a pipeline would return it
                return [exc], 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in commands:
                pipe.execute_command(*args)
            if wait is not None:
                pipe.execute_command("WAIT", *wait)
            replies = await pipe.execute(raise_on_error=False)
        if wait is None:
            return replies, 0
        acked = replies.pop()
        if isinstance(acked, Exception):
            raise acked
        return replies, int(acked)
