"""Every setting of the dialer, read from ``DIALER_*`` environment variables or a ``.env`` file.

Example::

    DIALER_API_BASE_URL=https://service.besclouds.com DIALER_APP_KEY=... DIALER_APP_SECRET=... dialer worker

Invalid values fail at start-up with :class:`SettingsError`, whose message names the variable.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.callback_url import own_callback, url_problem
from worker.errors import SettingsError
from worker.numbers import REGION_RULE, valid_region

ENV_PREFIX = "DIALER_"
TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"  # noqa: S105 - a URL path, not a secret
CREATE_PATH = "/apiaccess/rest/voiceNotification/v2/createVoiceNotification"
MIN_HTTP_RATE = 0.01
"""Slowest non-zero HTTP throttle (one request per 100 s): keeps every schedule, burst included, well
inside the exact integer range of the Lua script's numbers (microseconds in a double)."""


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
               "off": False}

REDIS_URL_RULE = (
    "must be redis://[[user]:password@]host[:port][/db], rediss://... (TLS) or unix:///path/redis.sock[?db=N], "
    "with a port of 1-65535 and a numeric db; percent-encode @ : / # % ? in the user name or password "
    "(%40 %3A %2F %23 %25 %3F)"
)
"""What :func:`redis_url_is_valid` checks, as the one line a refused DIALER_REDIS_URL gives."""


def redis_url_is_valid(url: str) -> bool:
    """True when ``url`` is a Redis URL redis-py reads as meant: a known scheme, a host (or a socket
    path), a port of 1-65535, a numeric db, nothing after ``#``. (redis-py ignores a db it cannot read
    and takes a missing host as localhost, so a password typed with a bare ``/`` or ``#`` would
    otherwise connect somewhere else, or show part of itself in an error.)"""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError:
        return False
    if parts.fragment or "#" in url:
        return False
    if parts.scheme == "unix":
        return bool(parts.path) and not parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return False
    if port == 0:
        return False
    db = parts.path.removeprefix("/")
    return db == "" or (db.isascii() and db.isdigit())


class Settings(BaseSettings):
    """The dialer's configuration; one instance is shared by everything in a process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- Redis -------------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding queues, ledger and token: redis://[[user]:password@]host[:port][/db], "
        "rediss:// for TLS, or unix:///path/redis.sock. Every worker on every host must use the same Redis.",
    )
    key_prefix: str = Field(
        "dialer:", min_length=1,
        description="Prefix of every Redis key we own (two fleets may share one Redis with different prefixes).",
    )
    redis_tls_ca_file: str | None = Field(
        None, description="PEM file of the CA(s) that signed the Redis server's certificate (`rediss://` only); "
        "unset = the system's trusted CAs. The server's certificate and host name are always verified.",
    )
    redis_tls_cert_file: str | None = Field(
        None, description="PEM client certificate presented to Redis (`rediss://` with `tls-auth-clients yes`).",
    )
    redis_tls_key_file: str | None = Field(
        None, description="PEM private key of DIALER_REDIS_TLS_CERT_FILE (unset: the key is in the certificate file).",
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Redis Sentinels as `host:port,host:port,...` (empty: no Sentinel). When set, every component "
        "finds the primary through them and follows a failover; DIALER_REDIS_URL then gives only the scheme "
        "(`rediss://` for TLS, to the Sentinels too), user, password and db: its host and port are not used.",
    )
    redis_sentinel_master: str = Field(
        "mymaster", min_length=1, description="The name the Sentinels monitor the primary under.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinels themselves (their `requirepass`); unset: none. The data "
        "nodes' password is in DIALER_REDIS_URL.",
    )
    redis_wait_replicas: int | Literal["auto"] = Field(
        "auto", description="Replicas that must acknowledge a job's `sending` mark before its request leaves, "
        "and an enqueue before it is acknowledged (Redis `WAIT`): a failover then never loses either. `auto`: 1 "
        "with Sentinel, 0 (no wait) without. 0 turns the wait off.",
    )
    redis_wait_timeout_ms: int = Field(
        500, ge=1, le=60_000, description="How long a `WAIT` may take (ms). A `sending` mark not acknowledged in time: "
        "the call is not sent and the job waits; an enqueue not acknowledged in time: refused as not durable "
        "(the producer retries with the same id).",
    )

    # --- Provider ----------------------------------------------------------------------------------
    api_base_url: str = Field(
        "http://127.0.0.1:8090",
        description="Base URL of the CEC API; the default is the built-in simulator (`dialer simulator`), so "
        "nothing real is dialled by accident.",
    )
    token_url: str | None = Field(
        None, description="tokenByAkSk URL (the auth module may sit on its own host/port, e.g. 28070); "
        "unset = base URL + `" + TOKEN_PATH + "`.",
    )
    app_key: str = Field(
        "sim-app-key", description="AK; sent as `app_key` and `X-APP-Key`. The default is the simulator's sandbox key."
    )
    app_secret: SecretStr = Field(
        SecretStr("sim-app-secret"),
        description="SK; a secret: never logged or shown. The default is the simulator's sandbox secret.",
    )
    token_lifetime_s: int = Field(
        600, ge=1, le=3600, description="Requested token lifetime in seconds, sent as `X-Token-Expire` (1-3600)."
    )
    token_refresh_margin_s: float = Field(
        60.0, ge=0, description="Refresh this long before the token expires (capped at a tenth of its lifetime)."
    )
    token_refused_retry_max_s: float = Field(
        30.0, gt=0, description="While tokenByAkSk refuses the AK/SK the fleet takes no jobs and asks again "
        "after 1 s, doubling up to this long; jobs wait, none is dead-lettered."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Total time allowed for one provider request.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Time allowed to open a connection.")
    callback_url_base64: bool = Field(
        False, description="Send `callBackUrl` Base64-encoded (cec_07_2802); plain by default, as in the seed. "
        "Either way a callBackUrl may hold only `a-zA-Z0-9-:./_#?&`; Base64-encoded it must fit 256 characters "
        "(192 before encoding). Refused at enqueue, and at start-up for DIALER_PUBLIC_URL.",
    )
    provider_http_500: Literal["retry", "permanent"] = Field(
        "retry", description="What HTTP 500 from createVoiceNotification means. provider-api.md: a transient "
        "\"business failure\", `retry` (with backoff, bounded by DIALER_RETRY_MAX_ATTEMPTS and "
        "DIALER_RETRY_MAX_TOTAL_S). The seed: \"check the values of parameters in the request\", `permanent` "
        "(the job fails at once). Either way the provider created no call.",
    )

    # --- Retries -----------------------------------------------------------------------------------
    retry_max_attempts: int = Field(6, ge=1, description="Provider attempts per job, the first one included.")
    retry_base_s: float = Field(
        0.5, gt=0, description="First backoff ceiling; doubles per attempt (full jitter: uniform 0..ceiling)."
    )
    retry_max_backoff_s: float = Field(60.0, gt=0, description="Largest single backoff ceiling.")
    retry_max_total_s: float = Field(
        900.0, gt=0, description="Give up (dead-letter the job) this long after the first try."
    )
    retry_inprocess_max_s: float = Field(
        2.0, ge=0, description="Backoffs up to this are slept in the worker; longer ones put the job back on its queue."
    )

    # --- Dispatch ----------------------------------------------------------------------------------
    rate_limit: float = Field(10.0, ge=0, description="Provider calls/s across the whole fleet; 0 = no limit.")
    rate_burst: int = Field(1, ge=1, description="Calls allowed back to back above the steady rate.")
    rate_reserve_ahead_s: float = Field(
        2.0, ge=0, description="How far ahead a priority-1 call may book a send slot; lower priorities "
        "book proportionally less (priority 9: about one interval), so a backlog of them cannot hold the "
        "schedule against urgent calls.",
    )
    max_in_flight: int = Field(50, ge=1, description="Concurrent provider requests across the whole fleet.")
    redial_ambiguous: Literal["never", "after-grace", "always"] = Field(
        "never", description="What becomes of a job whose outcome is unknown (a worker died, or the answer was "
        "lost, mid-request): `never` redial it; `after-grace` redial it once when no release event proved the "
        "call within DIALER_UNKNOWN_GRACE_S (a call that existed but whose event is later still rings twice); "
        "`always` treat it as retryable at once (may call a person twice). `true`/`false` mean `always`/`never`.",
    )
    unknown_grace_s: float = Field(
        900.0, ge=1, description="How long an `unknown` job waits for the provider's release event (ring time plus "
        "callback delay) before it is reported `unknown, no evidence` (and, with "
        "DIALER_REDIAL_AMBIGUOUS=after-grace, redialled once).",
    )
    worker_concurrency: int = Field(100, ge=1, description="Jobs one worker process runs at once per queue.")
    poll_delay_s: float = Field(
        0.05, gt=0, description="How often an idle worker polls its queues. A job enqueued due now (or requeued "
        "from the dead letters, or resumed with its campaign) also wakes its queue's workers at once (Redis pub/sub "
        "on `dialer:wake`), so this bounds idle latency only while that subscription is down, and for jobs that "
        "become due later (deferrals, pacing).",
    )
    job_timeout_s: float = Field(
        120.0, ge=10, description="Longest one run of a job may take (rate waits, in-process retries, the "
        "request). A killed worker's jobs run again this long + 10 s after it died.",
    )
    job_ttl_s: int = Field(
        7 * 86400, ge=60,
        description="arq's job key, written when a worker claims the job, lives this long (extended on deferral).",
    )
    ledger_ttl_s: int = Field(
        30 * 86400, ge=60, description="Ledger records, and so the dedupe memory, live this long."
    )
    drain_timeout_s: int = Field(
        30, ge=1, description="On SIGTERM, let in-flight calls finish for this long. Keep it at least 10 s below "
        "docker compose's DIALER_STOP_GRACE_PERIOD, or Docker kills workers mid-request.",
    )
    number_cap_calls: int = Field(
        0, ge=0, description="Campaign calls allowed to one number per DIALER_NUMBER_CAP_DAYS, across campaigns; "
        "0 = no cap.",
    )
    number_cap_days: float = Field(
        0.0, ge=0, description="Length of the per-number cap's sliding window, in days (may be fractional; "
        "required when the cap is on).",
    )
    default_region: str | None = Field(
        None, description="ISO 3166 alpha-2 region (e.g. `CN`) of numbers written without `+` or an international "
        "prefix. With `CN`, `13800000001` and `008613800000001` are `+8613800000001` (E.164) for the do-not-call "
        "list, the per-number cap, campaign job ids and `--timezone auto`. Unset: such numbers are keyed by their "
        "digits, as before (see docs/campaigns.md, Numbers and time zones). The number dialled is never rewritten.",
    )

    # --- HTTP service (`dialer serve`) and metrics ------------------------------------------------
    http_host: str = Field(
        "127.0.0.1", min_length=1,
        description="Address `dialer serve` (and a worker's metrics port) listens on; `0.0.0.0` in containers.",
    )
    http_port: int = Field(8080, ge=0, le=65535, description="Port of `dialer serve` (0 = any free port).")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys accepted as `Authorization: Bearer <key>`, comma-separated or a JSON array, 16+ "
        "characters each; secrets, never logged. `dialer serve` refuses to start without one (unless "
        "`--insecure-no-auth`).",
    )
    dashboard_key: SecretStr | None = Field(
        None, description="Optional read-only key (a secret, 16+ characters): opens the dashboard, nothing else."
    )
    http_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body `dialer serve` reads (413 above)."
    )
    http_max_batch: int = Field(
        1000, ge=1, le=100_000, description="Most items in one `POST /v1/calls:batch` (422 above)."
    )
    http_rate_limit: float = Field(
        50.0, ge=0, le=1_000_000, allow_inf_nan=False,
        description="Requests/s each API key (and the dashboard key) may make to `dialer serve`, across every "
        "replica sharing the Redis (429 with `Retry-After` above); 0 = no throttle. `/healthz`, `/readyz`, "
        "`/metrics`, `/openapi.json` and the provider callback are never throttled.",
    )
    http_rate_burst: int = Field(
        100, ge=1, le=100_000,
        description="Requests an idle key may make back to back before DIALER_HTTP_RATE_LIMIT paces it.",
    )
    public_url: str | None = Field(
        None, description="Base URL at which the provider and clients reach `dialer serve` (listed in "
        "`/openapi.json`); campaign calls get `<public url>/v1/callbacks/release` as their callBackUrl (needed "
        "for outcomes and redials).",
    )
    callback_shared_key: SecretStr | None = Field(
        None, description="Shared key of the provider's release-event signature; a secret. Unset: the callback "
        "route refuses every event (401 `unsigned_callback`), unless DIALER_CALLBACK_INSECURE_UNSIGNED is true.",
    )
    callback_insecure_unsigned: bool = Field(
        False, description="INSECURE: with no DIALER_CALLBACK_SHARED_KEY, accept unsigned result callbacks, so "
        "anyone who can reach the route and knows a callSerialNo can record an outcome (and get a number "
        "redialled). For a provider that does not sign, behind a network that only it can reach; `dialer "
        "serve` logs a WARNING at start-up. Ignored when the shared key is set.",
    )
    callback_signature_mode: Literal["sha256", "hmac-sha256"] = Field(
        "sha256", description="Digest of that signature: `sha256` (SHA-256 of `key_timestamp_nonce_fields`) or "
        "`hmac-sha256` (HMAC keyed with the shared key); which one the provider uses is unconfirmed.",
    )
    events_max_len: int = Field(
        1_000_000, ge=0, le=100_000_000, description="The event stream (`<prefix>events`, one entry per ledger "
        "transition a producer cares about) keeps about this many entries, the oldest trimmed first (roughly; "
        "Redis trims whole nodes); 0 = no event stream. An entry takes about 100-150 bytes of Redis memory.",
    )
    events_max_age_s: float = Field(
        7 * 86400.0, gt=0, description="... and entries older than this are trimmed too (by the worker "
        "processes, every minute). A consumer group reading slower than this loses what was trimmed.",
    )
    callback_signature_spaces: Literal["keep", "strip"] = Field(
        "keep", description="Spaces in the release event's signed string: `keep` them (provider-api.md) or "
        "`strip` every space before hashing (what a Java reference implementation does). Unconfirmed which one "
        "the provider uses: check a real signed callback with tests/provider/vectors/ (docs/operations.md).",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Each worker process serves `/metrics` and `/healthz` on this port; 0 = off."
    )

    # --- Webhooks (`dialer webhooks`) ------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature on every webhook POST (`X-Dialer-Signature`, "
        "docs/webhooks.md); a secret, 16+ random characters, never logged. Unset: `dialer webhooks` refuses to "
        "start, unless DIALER_WEBHOOK_INSECURE_UNSIGNED is true.",
    )
    webhook_insecure_unsigned: bool = Field(
        False, description="INSECURE: with no DIALER_WEBHOOK_SECRET, deliver webhooks unsigned, so a receiver "
        "cannot tell them from forgeries. `dialer webhooks` logs a WARNING at start-up. Ignored when the secret "
        "is set.",
    )
    webhook_allow_private: bool = Field(
        False, description="Allow statusCallbackUrls on loopback, private, link-local and other non-public "
        "addresses (refused at enqueue when literal, and at delivery after DNS). Off by default so that whoever "
        "may enqueue calls cannot make the dialer POST into its own network (SSRF); `dialer webhooks` logs a "
        "WARNING at start-up when on.",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Total time allowed for one webhook POST (connect, send, answer); longer "
        "is a failed attempt, retried.",
    )
    webhook_concurrency: int = Field(
        64, ge=1, le=10_000, description="Webhook POSTs one `dialer webhooks` process has in flight at most.",
    )
    webhook_max_per_destination: int = Field(
        8, ge=1, le=1000, description="Webhook POSTs in flight to one receiver (scheme, host and port) across "
        "every `dialer webhooks` process: a slow receiver holds this many, never the others' share.",
    )
    webhook_retry_base_s: float = Field(
        1.0, gt=0, description="First webhook retry ceiling; doubles per failed attempt (full jitter: uniform "
        "0..ceiling).",
    )
    webhook_retry_max_backoff_s: float = Field(
        600.0, gt=0, description="Largest single wait between two attempts of one webhook.",
    )
    webhook_retry_max_s: float = Field(
        6 * 3600.0, gt=0, description="Retry a webhook for this long after its first attempt, then dead-letter it "
        "(`dialer webhooks dead list` / `replay`). A job's later events wait behind it meanwhile (order per job).",
    )
    webhook_dead_max_len: int = Field(
        100_000, ge=1, le=100_000_000, description="Webhook dead letters kept (the oldest dropped first).",
    )

    # --- Logging -----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` for terminals, `json` for one JSON object per line."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        # The message never repeats the value: a password typed without percent-encoding would show.
        if not redis_url_is_valid(v):
            raise ValueError(REDIS_URL_RULE)
        return v

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinel_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            host, _, port = address.rpartition(":")
            if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} must be host:port with a port of 1-65535")
        return v

    @field_validator("redis_wait_replicas", mode="before")
    @classmethod
    def _wait_replicas(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        if isinstance(v, str) and not (v.strip().isascii() and v.strip().isdigit()):
            raise ValueError("must be `auto` or a number of replicas >= 0")
        if isinstance(v, int | str) and int(v) < 0:
            raise ValueError("must be `auto` or a number of replicas >= 0")
        return v

    @property
    def wait_replicas(self) -> int:
        """Replicas a ``WAIT`` asks for (0: no wait): DIALER_REDIS_WAIT_REPLICAS with ``auto`` resolved."""
        if self.redis_wait_replicas == "auto":
            return 1 if self.redis_sentinels else 0
        return self.redis_wait_replicas

    @field_validator("default_region", mode="before")
    @classmethod
    def _region(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        if not isinstance(v, str) or not valid_region(v.strip().upper()):
            raise ValueError(REGION_RULE)
        return v.strip().upper()

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file", mode="before")
    @classmethod
    def _empty_file_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, v: Any) -> Any:
        # From the environment: a JSON array, or keys separated by commas (keys never contain commas).
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("must be a JSON array of strings or comma-separated keys") from None
            return [k.strip() for k in text.split(",") if k.strip()]
        return v

    @field_validator("api_keys")
    @classmethod
    def _key_length(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 16 for k in v):
            raise ValueError("every API key must be at least 16 characters")
        for i, k in enumerate(v, 1):
            if (why := weak_key(k.get_secret_value())) is not None:
                raise ValueError(f"API key {i} of {len(v)} {why}")
        return v

    @field_validator("dashboard_key", "callback_shared_key", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("dashboard_key")
    @classmethod
    def _dashboard_key_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        if v is not None and (why := weak_key(v.get_secret_value())) is not None:
            raise ValueError(why)
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_strength(cls, v: SecretStr | None) -> SecretStr | None:
        # Ours to choose (receivers store a copy): as strong as an API key.
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        if v is not None and (why := weak_key(v.get_secret_value())) is not None:
            raise ValueError(why)
        return v

    @field_validator("callback_shared_key")
    @classmethod
    def _callback_key_strength(cls, v: SecretStr | None) -> SecretStr | None:
        # The provider chooses this one: only the trivially guessable is refused.
        if v is not None and (why := weak_key(v.get_secret_value(), min_bits=0, min_distinct=4)) is not None:
            raise ValueError(why)
        return v

    @field_validator("redial_ambiguous", mode="before")
    @classmethod
    def _redial_bool(cls, v: Any) -> Any:
        # The setting was a boolean before it had a third value.
        if isinstance(v, bool):
            return "always" if v else "never"
        if isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:
            return "always" if _BOOL_WORDS[v.strip().lower()] else "never"
        return v

    @field_validator("http_rate_limit")
    @classmethod
    def _http_rate(cls, v: float) -> float:
        if 0 < v < MIN_HTTP_RATE:
            raise ValueError(f"must be 0 (off) or at least {MIN_HTTP_RATE} requests/s")
        return v

    @field_validator("api_base_url", "token_url", "public_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _margin_below_lifetime(self) -> Settings:
        tls_files = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if any(tls_files) and not self.redis_url.startswith("rediss://"):
            raise ValueError("DIALER_REDIS_TLS_* files are set but DIALER_REDIS_URL does not start with rediss://")
        if self.redis_tls_key_file and not self.redis_tls_cert_file:
            raise ValueError("DIALER_REDIS_TLS_KEY_FILE needs DIALER_REDIS_TLS_CERT_FILE")
        if self.redis_sentinels and self.redis_url.startswith("unix:"):
            raise ValueError("DIALER_REDIS_SENTINELS needs a redis:// or rediss:// DIALER_REDIS_URL (a Sentinel names "
                             "the primary by host and port, not by socket)")
        if self.retry_base_s > self.retry_max_backoff_s:
            raise ValueError("DIALER_RETRY_BASE_S must not exceed DIALER_RETRY_MAX_BACKOFF_S")
        if self.webhook_retry_base_s > self.webhook_retry_max_backoff_s:
            raise ValueError("DIALER_WEBHOOK_RETRY_BASE_S must not exceed DIALER_WEBHOOK_RETRY_MAX_BACKOFF_S")
        if self.number_cap_calls > 0 and self.number_cap_days <= 0:
            raise ValueError("DIALER_NUMBER_CAP_DAYS must be > 0 when DIALER_NUMBER_CAP_CALLS is set")
        if self.public_url is not None:
            # Checked as the provider will see it: with a job id appended (callback_url.for_job).
            own = own_callback(self.public_url) or ""
            problem = url_problem(own + "/x", base64=self.callback_url_base64)
            if problem is not None:
                raise ValueError(f"DIALER_PUBLIC_URL: the callBackUrl {own}/<job id> {problem}")
        if self.job_timeout_s < self.request_timeout_s + self.connect_timeout_s + 5:
            raise ValueError(
                "DIALER_JOB_TIMEOUT_S must exceed DIALER_REQUEST_TIMEOUT_S + DIALER_CONNECT_TIMEOUT_S + 5"
            )
        return self

    @property
    def resolved_token_url(self) -> str:
        return self.token_url or self.api_base_url + TOKEN_PATH

    @property
    def create_url(self) -> str:
        return self.api_base_url + CREATE_PATH

    @property
    def refresh_margin_s(self) -> float:
        """Refresh margin, never more than a tenth of a token's life (the default 60 s of 600 s): a
        refresh takes milliseconds and the old token stays in use while it runs, so a larger share only
        multiplies tokenByAkSk calls for short-lived tokens."""
        return min(self.token_refresh_margin_s, self.token_lifetime_s * 0.1)


_SEQUENCES = ("0123456789abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789",
              "qwertyuiopasdfghjklzxcvbnm", "1234567890qwertyuiop")
_RANDOM_KEY_HINT = "use a random key, e.g. `openssl rand -hex 24`"


def weak_key(value: str, *, min_bits: float = 48.0, min_distinct: int = 8) -> str | None:
    """Why a key is too easy to guess (a phrase naming the rule, never the key), or None: one character
    or a short pattern repeated, an alphabet or keyboard run, too few different characters, or less
    than ``min_bits`` of character entropy (Shannon, times the length)."""
    n = len(value)
    if n == 0:
        return None
    if any(value == (value[:p] * (n // p + 1))[:n] for p in range(1, n // 2 + 1)):
        return f"is a repeated pattern, too easy to guess: {_RANDOM_KEY_HINT}"
    low = value.lower()
    if n >= 6 and any(low in seq or low in seq[::-1] for seq in _SEQUENCES):
        return f"is an alphabet or keyboard sequence, too easy to guess: {_RANDOM_KEY_HINT}"
    if len(set(value)) < min_distinct:
        return f"has fewer than {min_distinct} different characters, too easy to guess: {_RANDOM_KEY_HINT}"
    counts = [value.count(c) for c in set(value)]
    bits = -sum(c * math.log2(c / n) for c in counts)
    if bits < min_bits:
        return f"is too easy to guess (about {bits:.0f} bits of entropy, need {min_bits:.0f}): {_RANDOM_KEY_HINT}"
    return None


NOT_SETTINGS = frozenset({
    "DIALER_API_PORT", "DIALER_SIMULATOR_PORT", "DIALER_IMAGE", "DIALER_STOP_GRACE_PERIOD",  # docker compose's
    "DIALER_SERVICES", "DIALER_EXE", "DIALER_FAULTS", "DIALER_FAULTS_REPORT",  # scripts' and the fault suite's
})
"""DIALER_* names that are not settings but are read by compose, the scripts or the tests."""


def unknown_variables(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> list[str]:
    """DIALER_* names in the environment or ``env_file`` that are no setting (a misspelling is otherwise
    silently ignored), each with the closest setting's name when there is one: names only, never values."""
    names = {n for n in (os.environ if environ is None else environ) if n.upper().startswith(ENV_PREFIX)}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        names |= {n for n in dotenv_values(env_file) if n.upper().startswith(ENV_PREFIX)}
    known = {ENV_PREFIX + f.upper() for f in Settings.model_fields}
    out = []
    for name in sorted(names):
        if name.upper() in known or name.upper() in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings`, turning validation errors into a message that names each variable. Unknown
    DIALER_* names (environment and ``.env``) are named in one WARNING."""
    if unknown := unknown_variables():
        logging.getLogger(__name__).warning(
            "ignoring unknown DIALER_* variable(s), not settings (see docs/settings.md): %s", ", ".join(unknown))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{ENV_PREFIX}{field.upper()}: {msg}" if field else msg)
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
