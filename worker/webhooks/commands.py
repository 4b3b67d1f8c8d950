"""``dialer webhooks`` (the delivery process), ``dialer webhooks status`` and ``dialer webhooks dead ...``.

Registered lazily on the main group in ``worker/cli.py``; Redis, aiohttp and pydantic are imported inside
the commands, so ``dialer --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    from worker import logs
    from worker.errors import DialerError
    from worker.settings import load_settings

    try:
        settings = load_settings()
    except DialerError as exc:
        raise click.ClickException(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _with_redis(fn: Callable[[Redis, Settings], Awaitable[T]]) -> T:
    """Run ``fn(redis, settings)`` with a CLI connection of its own (fails fast when Redis is away)."""
    from worker.store.client import UNREACHABLE, cli_client, unreachable

    settings = _settings()

    async def go() -> T:
        redis = cli_client(settings)
        try:
            return await fn(redis, settings)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except UNREACHABLE as exc:
        raise click.ClickException(unreachable(settings, exc)) from None


@click.group("webhooks", invoke_without_command=True)
@click.option("--check", is_flag=True, help="Health check: exit 0 if a dialer webhooks process on this host is alive.")
@click.pass_context
def webhooks_group(ctx: click.Context, check: bool) -> None:
    """Deliver each job's events to its statusCallbackUrl, signed; status and dead letters.

    \b
    Without a subcommand: run a delivery process until SIGTERM/SIGINT (run several
    to share the work; each POSTs at most DIALER_WEBHOOK_CONCURRENCY at once and a
    receiver gets at most DIALER_WEBHOOK_MAX_PER_DESTINATION across all of them).
    Needs DIALER_WEBHOOK_SECRET (or DIALER_WEBHOOK_INSECURE_UNSIGNED=true).
    How to verify a delivery, retries, order, dead letters: docs/webhooks.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    from worker.errors import SettingsError
    from worker.store.client import UNREACHABLE, unreachable
    from worker.webhooks.delivery import check_health, run_webhooks

    settings = _settings()
    if check:
        try:
            ok = asyncio.run(check_health(settings))
        except UNREACHABLE as exc:
            raise click.ClickException(unreachable(settings, exc)) from None
        click.echo("healthy" if ok else "unhealthy: no live dialer webhooks heartbeat on this host")
        sys.exit(0 if ok else 1)
    try:
        asyncio.run(run_webhooks(settings))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@webhooks_group.command("status")
def status_cmd() -> None:
    """Print the delivery backlog as JSON: intake lag, jobs waiting, in flight, dead letters, processes."""
    from worker.webhooks.queue import WebhookQueue

    async def go(redis: Redis, settings: Settings) -> dict[str, Any]:
        return await WebhookQueue(redis, settings).status()

    click.echo(json.dumps(_with_redis(go), sort_keys=True))


@webhooks_group.group("dead")
def dead_group() -> None:
    """Webhooks dead-lettered (410, a refused address, or out of retry time)."""


@dead_group.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, the event sent included.")
def dead_list(limit: int, as_json: bool) -> None:
    """List dead-lettered webhooks, newest first: event id, job, type, attempts, reason."""
    from worker.webhooks.queue import WebhookQueue

    async def go(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
        return await WebhookQueue(redis, settings).dead(limit)

    for rec in _with_redis(go):
        if as_json:
            click.echo(json.dumps(rec, sort_keys=True, separators=(",", ":")))
        else:
            click.echo(f"{rec['id']}\t{rec['job_id']}\t{rec['type']}\t{rec['attempts']}\t{rec['dead_at']}\t"
                       f"{rec['reason']}")


@dead_group.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead-lettered webhook.")
def dead_replay(event_ids: tuple[str, ...], all_: bool) -> None:
    """Deliver dead-lettered webhooks again (each after its job's queued events; attempts start again)."""
    from worker.webhooks.queue import WebhookQueue

    if bool(event_ids) == all_:
        raise click.UsageError("give EVENT_ID(s) or --all")

    async def go(redis: Redis, settings: Settings) -> tuple[int, list[str]]:
        queue = WebhookQueue(redis, settings)
        if all_:
            return await queue.replay_all(), []
        missing = [i for i in event_ids if await queue.replay([i]) == 0]
        return len(event_ids) - len(missing), missing

    count, missing = _with_redis(go)
    click.echo(f"replayed {count} webhook(s)")
    for i in missing:
        click.echo(f"not replayed: {i} (not a dead letter)", err=True)
    if missing:
        sys.exit(1)
