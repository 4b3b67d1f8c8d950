"""A real webhook receiver (an aiohttp server on 127.0.0.1) and helpers for the webhook tests."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from worker.settings import Settings
from worker.store.keys import Keys
from worker.webhooks.delivery import WebhookProcess

ROOT = Path(__file__).resolve().parents[2]
SECRET = "wh-test-secret-7Qm2xK9pLr4Tz8Vb"


def webhook_settings(settings: Settings, **update: Any) -> Settings:
    """Settings for delivery tests: a secret, 127.0.0.1 allowed, fast retries, a short timeout."""
    base: dict[str, Any] = {"webhook_secret": SecretStr(SECRET), "webhook_allow_private": True,
                            "webhook_retry_base_s": 0.05, "webhook_retry_max_backoff_s": 0.25,
                            "webhook_timeout_s": 3.0}
    return settings.model_copy(update={**base, **update})


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def event_id(self) -> str:
        return self.headers["X-Dialer-Event-Id"]


@dataclass
class Receiver:
    """What the receiver answers (``answer(hit_number) -> status``, ``delay_s``) and what it got."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    answer: Callable[[int], int] = lambda n: 200
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def delivered_ids(self) -> list[str]:
        return [h.event_id for h in self.delivered()]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status = self.answer(len(self.hits))
            self.hits.append(Hit(request.path, dict(request.headers), body, status, time.monotonic()))
            return web.Response(status=status, text="ok")
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def receiving(path: str = "/hook") -> AsyncIterator[Receiver]:
    """A receiver on a free port of 127.0.0.1; its URL (with ``path``) is ``.url``."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = str(server.make_url(path))
    try:
        yield rec
    finally:
        await server.close()


@asynccontextmanager
async def delivering(settings: Settings, n: int = 1) -> AsyncIterator[list[WebhookProcess]]:
    """``n`` delivery processes running in this event loop for the block, stopped (gracefully) after it."""
    procs = [WebhookProcess(settings, consumer=f"test:{i}") for i in range(n)]
    tasks = [asyncio.ensure_future(p.run()) for p in procs]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def add_events(redis: aioredis.Redis, settings: Settings, job: str, kinds: list[str],
                     campaign: str = "") -> list[str]:
    """Append events of ``job`` to the stream as ledger/events.lua does (the same seven fields)."""
    key = Keys(settings.key_prefix).events
    ids = []
    for n, kind in enumerate(kinds):
        entry = {"type": kind, "job": job, "campaign": campaign, "state": "queued", "attempt": str(n),
                 "ts": str(int(time.time() * 1000)), "data": json.dumps({"n": n})}
        ids.append((await redis.xadd(key, entry)).decode())  # type: ignore[arg-type]
    return ids


async def give_url(redis: aioredis.Redis, settings: Settings, job: str, url: str) -> None:
    """A ledger record with just the statusCallbackUrl field, enough for the intake's look-up."""
    await redis.hset(Keys(settings.key_prefix).job(job), "scb", url)


def doc_example() -> str:
    """The receiver-side verify example of docs/webhooks.md, verbatim (the first python block of its
    "Verifying a delivery" section)."""
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    section = doc.split("## Verifying a delivery", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/webhooks.md: no python block under 'Verifying a delivery'"
    return match.group(1)
