"""``dialer demo``: a whole local system in one command, against the built-in provider simulator.

Starts a private ``redis-server`` (always: never a Redis a fleet may share), the simulator with signed result
callbacks, ``dialer serve`` (a generated API key; its dashboard URL is printed) and worker processes;
writes a CSV of generated numbers with mixed priorities and launches it as a campaign (the same path as
``dialer campaign launch``) that redials unanswered calls once after a short delay; shows live progress
from the campaign's status; prints the final status JSON (answered / unanswered / redials included)
reconciled with the simulator's request and callback logs; writes the campaign's export (``dialer campaign
export``, one row per number) to ``<temp dir>/<campaign>-export.csv``, which outlives the demo, with a
one-line tally reconciled with the simulator's log; prints the tally of a webhook receiver (an aiohttp server
in the demo's own process, the campaign's ``statusCallbackUrl``, fed by a ``dialer webhooks`` child and
checking every signature) reconciled with the event stream and the simulator's log; and cleans everything up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.campaigns.control import Campaigns
from worker.campaigns.export import CampaignExport, filename
from worker.campaigns.launch import LaunchOptions, launch_file
from worker.ledger.events import events
from worker.settings import Settings
from worker.store.client import cli_client
from worker.webhooks.signing import verify

_ENV_PREFIX = "DIALER_"
_CALLBACK_GRACE_S = 20.0
"""Once nothing is left to send, how long to wait for the last result callbacks."""


@dataclass(frozen=True)
class DemoOptions:
    calls: int = 2000
    workers: int = 2
    rate: float = 200.0
    latency_ms: float = 40.0
    answer_rate: float = 0.75
    """Share of the simulator's calls that are answered; the rest end unanswered (releaseReason 4)."""
    ring_time_s: float = 0.5
    redial: int = 1
    redial_after: str = "2s"
    export_dir: Path | None = None
    """Where the campaign's export is written (default: the system's temp directory; the demo's own
    directory is removed when it ends)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _DemoSettings(Settings):
    """The demo's settings: defaults and what the demo sets, never the environment or a ``.env`` file (an
    exported DIALER_REDIS_URL may name a real fleet's Redis, DIALER_API_BASE_URL a real provider)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _child_env() -> dict[str, str]:
    """The environment of the demo's children: this one without any DIALER_* variable (the demo sets its
    own); they run in the demo's own directory, so no ``.env`` is read either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIX)}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def _redis_server(workdir: str) -> Iterator[str]:
    """A throwaway redis-server on a free port, whatever DIALER_REDIS_URL says."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(
            "dialer demo needs redis-server on PATH (Debian/Ubuntu: apt-get install redis-server); it always "
            "starts a private one. ./scripts/demo installs it for you."
        )
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _write_csv(path: Path, n: int) -> None:
    """``n`` generated numbers: mostly routine traffic, a tenth urgent (enough to watch priority 1
    overtake the backlog), each with its own template parameters."""
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as f:
        f.write("called,priority,templateParams\n")
        for i in range(n):
            priority = 1 if i % 10 == 0 else rng.choice((5, 9, 9, 9))
            f.write(f"1380{i:07d},{priority},{i}|10:30\n")


async def _wait_http(url: str, wait_s: float = 15) -> None:
    deadline = time.monotonic() + wait_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def run_demo(base: Settings | None, options: DemoOptions) -> int:
    """Run the demo. ``base`` is ignored (kept for callers): the demo's settings never come from the
    environment, so an exported DIALER_* variable cannot point it at a real fleet or provider."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="dialer-demo-") as tmp, _redis_server(tmp) as redis_url:
        sim_port, serve_port = _free_port(), _free_port()
        # Throwaway secrets of this run: the API key opens the dashboard; the shared key signs callbacks.
        api_key, shared_key = secrets.token_hex(16), secrets.token_hex(16)
        hooks = _WebhookTally(secrets.token_hex(16))  # the campaign's statusCallbackUrl, on this machine
        public_url = f"http://127.0.0.1:{serve_port}"
        settings: Settings = _DemoSettings(
            redis_url=redis_url, api_base_url=f"http://127.0.0.1:{sim_port}", token_url=None,
            rate_limit=options.rate, public_url=public_url, webhook_allow_private=True,
        )
        env = {**_child_env(), "DIALER_REDIS_URL": redis_url, "DIALER_API_BASE_URL": settings.api_base_url,
               "DIALER_RATE_LIMIT": str(options.rate), "DIALER_LOG_LEVEL": "WARNING",
               "DIALER_METRICS_PORT": "0",  # several workers on one host: no shared metrics port
               "DIALER_PUBLIC_URL": public_url, "DIALER_CALLBACK_SHARED_KEY": shared_key,
               "DIALER_CALLBACK_SIGNATURE_MODE": "sha256"}
        serve_env = {**env, "DIALER_API_KEYS": api_key, "DIALER_HTTP_HOST": "127.0.0.1",
                     "DIALER_HTTP_PORT": str(serve_port)}
        cmd = [sys.executable, "-m", "worker.cli"]
        quiet = subprocess.DEVNULL
        children = [
            subprocess.Popen([*cmd, "simulator", "--port", str(sim_port), "--latency-ms", str(options.latency_ms),
                              "--jitter-ms", "40", "--fail-500-rate", "0.03", "--callbacks"],
                             env=env, stdout=quiet, stderr=quiet, cwd=tmp),
            subprocess.Popen([*cmd, "serve"], env=serve_env, stdin=quiet, stdout=quiet, stderr=quiet, cwd=tmp),
            # Its loopback receiver needs DIALER_WEBHOOK_ALLOW_PRIVATE (whose start-up WARNING is not for the demo).
            subprocess.Popen([*cmd, "webhooks"], stdin=quiet, stdout=quiet, stderr=quiet, cwd=tmp,
                             env={**env, "DIALER_WEBHOOK_SECRET": hooks.secret,
                                  "DIALER_WEBHOOK_ALLOW_PRIVATE": "true"}),
        ]
        try:
            await hooks.start()
            await _wait_http(f"{settings.api_base_url}/_sim/health")
            await _configure_simulator(settings.api_base_url, options, shared_key)
            await _wait_http(f"{public_url}/healthz")
            children += [subprocess.Popen([*cmd, "worker"], env=env, stdin=subprocess.DEVNULL, cwd=tmp)
                         for _ in range(options.workers)]
            console.print(f"dashboard: {public_url}/?key={api_key}  (a throwaway key of this demo)", soft_wrap=True)
            return await _drive(console, settings, options, Path(tmp), hooks)
        finally:
            await hooks.stop()
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(45)
                except subprocess.TimeoutExpired:
                    child.kill()


async def _configure_simulator(url: str, options: DemoOptions, shared_key: str) -> None:
    patch = {"answer_rate": options.answer_rate, "ring_time_s": options.ring_time_s,
             "callback_shared_key": shared_key, "callback_signature_mode": "sha256"}
    async with aiohttp.ClientSession() as s, s.post(url + "/_sim/config", json=patch) as r:
        r.raise_for_status()


async def _drive(console: Console, settings: Settings, options: DemoOptions, workdir: Path,
                 hooks: _WebhookTally) -> int:
    client = cli_client(settings)
    try:
        name = f"demo-{int(time.time())}"
        csv_path = workdir / "demo.csv"
        _write_csv(csv_path, options.calls)
        t0 = time.monotonic()
        report = await launch_file(
            client, settings, csv_path,
            LaunchOptions(name=name, template_id="tpl-reminder", caller_present="4001234567",
                          redial=options.redial, redial_after=options.redial_after, status_callback_url=hooks.url),
        )
        console.print(f"launched campaign {name!r}: {report.enqueued} calls enqueued in {report.seconds:.2f}s "
                      f"({options.workers} workers, limit {options.rate:g}/s; unanswered calls are redialled "
                      f"{options.redial}x after {options.redial_after})")
        status = await _follow(console, Campaigns(client, settings), name, report.enqueued)
        elapsed = time.monotonic() - t0
        async with aiohttp.ClientSession() as s, s.get(settings.api_base_url + "/_sim/log") as r:
            sim_log = await r.json()
        created = sum(1 for q in sim_log["requests"] if q["outcome"] == "created")
        delivered = sum(1 for c in sim_log["callbacks"] if c["status"] == 200)
        console.print_json(json.dumps(status))
        outcomes = status["outcomes"]
        console.print(f"{status['total']} calls ({report.enqueued} + {status['redials']} redials) in {elapsed:.1f}s; "
                      f"simulator created {created} calls, answered {len(sim_log['requests']) - created} retryable "
                      f"errors, issued {sim_log['tokens_issued']} token(s)")
        console.print(f"result callbacks: {delivered} signed callbacks accepted; answered {outcomes['answered']}, "
                      f"unanswered {outcomes['unanswered']}, failed to connect {outcomes['failed_to_connect']}; "
                      f"{status['redials']} redials made")
        sent = status["states"]["sent"]
        ok = (sent == created == status["total"] == report.enqueued + status["redials"]
              and sum(outcomes.values()) == sent == delivered)
        console.print("[green]reconciled: every job sent exactly once, every call's outcome recorded" if ok
                      else "[red]NOT reconciled")
        exported = await _export(console, client, settings, name, options.export_dir or Path(tempfile.gettempdir()),
                                 numbers=report.enqueued, created=created)
        webhooks_ok = await _webhook_tally(console, client, settings, name, hooks, created=created, callbacks=delivered)
        return 0 if ok and exported and webhooks_ok else 1
    finally:
        await client.aclose()


async def _export(console: Console, redis: Redis, settings: Settings, name: str, directory: Path, *,
                  numbers: int, created: int) -> bool:
    """Write the campaign's CSV export to ``directory`` and print its path and a one-line tally, reconciled
    with the simulator's log: a row per number, every row sent, and the rows' calls (each number's first
    call and its redials) as many as the calls the simulator created. True when it reconciles."""
    path = directory / filename(name, "csv")
    export = CampaignExport(redis, settings, name, fmt="csv")
    with path.open("wb") as out:
        async for data in export.stream():
            out.write(data)
    calls = export.rows + export.redials
    tally = " ".join(f"{k}={v}" for k, v in sorted(export.by_state.items())) or "-"
    ok = export.rows == numbers and export.by_state["sent"] == export.rows and calls == created
    console.print(f"export: {path}", soft_wrap=True, markup=False)
    console.print(f"export tally: {export.rows} rows ({tally}), {export.rows} first calls + {export.redials} "
                  f"redials = {calls} calls; simulator created {created}: "
                  + ("[green]reconciled" if ok else "[red]NOT reconciled"), soft_wrap=True)
    return ok


class _WebhookTally:
    """The demo's webhook receiver: verifies each delivery's signature, counts events once by id (delivery is
    at least once) and by type."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.url = ""
        self.types: dict[str, str] = {}  # event id -> type
        self.deliveries = 0
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries += 1
        if not verify(self.secret.encode(), request.headers.get("X-Dialer-Timestamp", ""), body,
                      request.headers.get("X-Dialer-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        self.types[event["id"]] = event["type"]
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = _free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/webhooks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _webhook_tally(console: Console, redis: Redis, settings: Settings, name: str, hooks: _WebhookTally, *,
                         created: int, callbacks: int) -> bool:
    """Wait (up to _CALLBACK_GRACE_S) for the receiver to have every event of the campaign's stream, then print
    its tally, reconciled: the same events as the stream, a `sent` per call the simulator created and an
    `outcome` per callback it delivered, every signature valid. True when it reconciles."""
    stream = {e.id for e in [e async for e in events(redis, settings, campaign=name)]}
    for _ in range(int(_CALLBACK_GRACE_S / 0.2)):
        if stream <= hooks.types.keys():
            break
        await asyncio.sleep(0.2)
    kinds: dict[str, int] = {}
    for kind in hooks.types.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    tally = " ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "-"
    ok = (set(hooks.types) == stream and kinds.get("sent", 0) == created and kinds.get("outcome", 0) == callbacks
          and hooks.bad_signatures == 0)
    console.print(f"webhooks: {len(hooks.types)} events received, signatures verified ({tally}; "
                  f"{hooks.deliveries} deliveries); stream {len(stream)} events, simulator created {created} calls "
                  f"and delivered {callbacks} callbacks: " + ("[green]reconciled" if ok else "[red]NOT reconciled"),
                  soft_wrap=True)
    return ok


async def _follow(console: Console, campaigns: Campaigns, name: str, enqueued: int) -> dict[str, Any]:
    """Live progress until nothing is left to send and every sent call's outcome is in (or the last
    callbacks are late by more than _CALLBACK_GRACE_S)."""
    columns = (TextColumn("[bold]calls"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    idle_since: float | None = None
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=enqueued)
        while True:
            status = await campaigns.status(name)
            done = status["total"] - status["remaining"]
            busy = " ".join(f"{k}={v}" for k, v in status["states"].items() if v)
            heard = sum(status["outcomes"].values())
            progress.update(task, completed=done, total=status["total"],
                            description=f"{busy} outcomes={heard} redials={status['redials']}  "
                                        f"{status['send_rate_per_s']:.0f}/s  ETA {status['eta_s'] or 0}s")
            if status["remaining"] == 0:
                # A callback records its redial before its outcome: all outcomes in means no redial to come.
                if heard >= status["states"]["sent"]:
                    return status
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > _CALLBACK_GRACE_S:
                    return status
            else:
                idle_since = None
            await asyncio.sleep(0.25)
