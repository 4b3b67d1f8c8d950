"""``dialer serve``: run the HTTP service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from aiohttp import web

from worker.errors import SettingsError
from worker.http import callbacks
from worker.runtime import freeze_start_up_objects
from worker.settings import Settings, load_settings
from worker.store.client import api_client

log = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT_S = 10.0
SANDBOX_PROVIDER_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "simulator"})
"""Provider hosts ``--insecure-no-auth`` accepts: this machine, or the compose sandbox's ``simulator``."""


def _real_provider_hosts(settings: Settings) -> list[str]:
    """The provider hosts (base URL, token URL) that are not the local sandbox simulator."""
    from urllib.parse import urlsplit

    hosts = {urlsplit(settings.api_base_url).hostname or "", urlsplit(settings.resolved_token_url).hostname or ""}
    return sorted(h for h in hosts if h.lower() not in SANDBOX_PROVIDER_HOSTS)


async def run_server(settings: Settings, *, insecure_no_auth: bool = False) -> None:
    """Serve on ``settings.http_host:http_port`` until SIGTERM or SIGINT, then drain and close."""
    from worker.http.app import create_app

    redis = api_client(settings)
    app = create_app(settings, redis, insecure_no_auth=insecure_no_auth)
    freeze_start_up_objects()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        for address in runner.addresses:
            host, port = address[0], address[1]
            log.info("dialer serve listening on http://%s:%s (dashboard /, API /v1, docs /openapi.json)",
                     f"[{host}]" if ":" in str(host) else host, port)
        if insecure_no_auth:
            log.warning("--insecure-no-auth: every request is allowed, without any key")
        callbacks.log_start_up(settings)
        await stop.wait()
        log.info("dialer serve stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await redis.aclose()


@click.command()
@click.option("--host", default=None, help="Address to listen on [DIALER_HTTP_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [DIALER_HTTP_PORT, default 8080].")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve without API keys (local experiments only). Refused when DIALER_API_KEYS is set.")
def serve(host: str | None, port: int | None, insecure_no_auth: bool) -> None:
    """Run the HTTP service: enqueue API (/v1), /metrics, /healthz, /readyz and the dashboard (/)."""
    from worker import logs

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    update: dict[str, object] = {}
    if host is not None:
        update["http_host"] = host
    if port is not None:
        update["http_port"] = port
    if update:
        settings = settings.model_copy(update=update)
    if not settings.api_keys and not insecure_no_auth:
        raise click.UsageError(
            "no API keys: set DIALER_API_KEYS (comma-separated or a JSON array, 16+ characters each), "
            "or pass --insecure-no-auth to serve without authentication (local experiments only)"
        )
    if settings.api_keys and insecure_no_auth:
        raise click.UsageError("--insecure-no-auth contradicts DIALER_API_KEYS; drop one of them")
    if insecure_no_auth and (real := _real_provider_hosts(settings)):
        # Anyone who reaches the port could make real calls (and read every number).
        raise click.UsageError(
            f"--insecure-no-auth is for the local simulator only, but the provider is {', '.join(real)} "
            "(DIALER_API_BASE_URL / DIALER_TOKEN_URL): set DIALER_API_KEYS instead"
        )
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(run_server(settings, insecure_no_auth=insecure_no_auth))
