"""One access token for the whole fleet, kept in Redis and refreshed by one process at a time.

Every worker process on every host reads the token from ``Keys.token``; it is refreshed shortly
before it expires (``Settings.refresh_margin_s``) by whichever process takes ``Keys.token_lock``
first, while the others keep using the still-valid token or, when there is none, wait for the new
one. Inside a process a valid token is served from memory (inside the margin too, while the refresh
runs in the background), and concurrent callers share a single refresh, so 100 coroutines cause at
most one Redis read burst and one provider call::

    tokens = TokenManager(redis, settings, fetch=client.fetch_token)
    token = await tokens.get()          # Token(value=SecretStr('**********'), ...)
    ...                                 # the provider answers 401 for it:
    await tokens.invalidate(token)      # drops it everywhere, unless a newer one replaced it
    token = await tokens.get()          # refreshes (once, fleet-wide)

Times stored with the token are the Redis server's clock (seconds since the epoch), so hosts with
skewed clocks agree on when it expires; the in-process cache converts them to ``time.monotonic``.

Two fleet-wide pauses live beside the token, each a Redis key with a doubling step (1 s up to
``DIALER_TOKEN_REFUSED_RETRY_MAX_S``), and :meth:`TokenManager.send_wait_s` tells the dispatcher to hold
its jobs (no attempt used) while either lasts:

- tokenByAkSk refuses the AK/SK (``Keys.token_refused``): nobody asks it again before the pause ends;
  the next token it gives ends the pause;
- createVoiceNotification answers 401/403 even with a fresh token (``Keys.account_refused``,
  :meth:`TokenManager.account_refused`): the service is not purchased or the account is wrong. A new
  token does not end it; the next accepted request does. After it, one request per process probes
  while the others wait for its answer. Other processes learn of it at their next 401 (which then
  neither discards the token nor asks for a new one) or their next refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker import metrics
from worker.errors import AccountError, AuthError, ProviderError, RetryableError
from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys

log = logging.getLogger(__name__)

# Waiting for another process's refresh: poll Redis with a short, growing sleep.
_POLL_FIRST_S = 0.01
_POLL_MAX_S = 0.25
# The lock outlives one tokenByAkSk request by this much, so a slow but live holder keeps it.
_LOCK_SLACK_S = 2.0
# While another process refreshes (or our refresh failed) and the current token is still valid,
# keep serving it from memory and look at Redis again only after this long.
_RECHECK_OTHER_S = 0.1
_RECHECK_FAILED_S = 1.0
# Invalidated token values remembered so a racing read cannot bring one back into the cache.
_REVOKED_MEMORY = 8



# Largest share of a token's life spent refreshing it early (see Settings.refresh_margin_s).
MAX_MARGIN_SHARE = 0.1

@dataclass(frozen=True)
class Token:
    """An access token. ``value`` is a SecretStr, so the repr never shows it.

    ``expires_at`` and ``obtained_at`` are seconds since the epoch; once a token has passed through
    :class:`TokenManager` they are on the Redis server's clock.
    """

    value: SecretStr
    expires_at: float
    obtained_at: float

    @property
    def lifetime_s(self) -> float:
        return self.expires_at - self.obtained_at

    def margin_s(self, settings: Settings) -> float:
        """Refresh margin for this token: at most a tenth of its real life (the provider may shorten
        it), so a short-lived token is not refreshed twice as often as it expires."""
        return max(0.0, min(settings.refresh_margin_s, self.lifetime_s * MAX_MARGIN_SHARE))

    def _same(self, other: Token | None) -> bool:
        return other is not None and secrets.compare_digest(
            self.value.get_secret_value().encode(), other.value.get_secret_value().encode()
        )


@dataclass
class _Cached:
    token: Token
    refresh_at: float  # time.monotonic() when the margin starts
    expire_at: float  # time.monotonic() when the token is dead
    recheck_at: float = field(default=0.0)  # throttles Redis reads while inside the margin


def _decode(raw: Any) -> Token | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Token(SecretStr(str(data["v"])), float(data["exp"]), float(data["at"]))
    except (ValueError, TypeError, KeyError):
        return None


def _describe(exc: BaseException) -> str:
    # ProviderError.describe() is secret-free; other errors (Redis, bugs) are named by type only.
    return exc.describe() if isinstance(exc, ProviderError) else type(exc).__name__


@dataclass(frozen=True)
class _Pause:
    """The fleet's pause while tokenByAkSk refuses (``Keys.token_refused``): no process asks before
    ``until_ms`` (Redis clock); ``step_s`` is the wait that led to it (doubled at each refusal)."""

    until_ms: float
    step_s: float
    why: str
    status: int | None = None


def _decode_pause(raw: Any) -> _Pause | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        status = data.get("status")
        return _Pause(float(data["until"]), float(data["step"]), str(data.get("why") or "tokenByAkSk refused"),
                      int(status) if isinstance(status, int) else None)
    except (ValueError, TypeError, KeyError):
        return None


_FIRST_REFUSED_WAIT_S = 1.0
# After an account pause, one request per process probes whether the provider accepts again; the other
# jobs wait this long at a time for its answer. A job let through as the probe has this long to send it
# (else the next job probes); once sent, the probe is given up after two requests' time at most.
_PROBE_WAIT_S = 1.0


def _encode(token: Token) -> str:
    return json.dumps({"v": token.value.get_secret_value(), "exp": token.expires_at, "at": token.obtained_at})


class TokenManager:
    """The fleet-shared access token (see the module docstring).

    :param redis: the process's Redis client (bytes or decoded responses both work).
    :param settings: ``refresh_margin_s``, ``request_timeout_s`` and the key prefix are used.
    :param fetch: calls tokenByAkSk once (normally :meth:`ProviderClient.fetch_token`); its
        ``expires_at - obtained_at`` is taken as the token's lifetime.
    """

    def __init__(self, redis: Redis, settings: Settings, fetch: Callable[[], Awaitable[Token]]) -> None:
        self._redis = redis
        self._settings = settings
        self._fetch = fetch
        self._keys = Keys(settings.key_prefix)
        self._get_or_lock = scripts.register(redis, "provider/token_get_or_lock.lua")
        self._account = scripts.register(redis, "provider/token_account.lua")
        self._release = scripts.register(redis, "provider/token_release.lua")
        self._invalidate = scripts.register(redis, "provider/token_invalidate.lua")
        self._lock_ttl_ms = int((settings.request_timeout_s + _LOCK_SLACK_S) * 1000)
        self._cached: _Cached | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self._revoked: deque[Token] = deque(maxlen=_REVOKED_MEMORY)
        self.refreshes = 0
        """tokenByAkSk calls made by this process (failed ones included)."""
        self._paused_until = 0.0  # time.monotonic() until which tokenByAkSk is known to refuse
        self._pause_why = ""
        self._warned = False  # this process said (WARNING) that the fleet is paused
        # The account pause (createVoiceNotification 401/403 with a fresh token), as this process knows it.
        self._account_until = 0.0  # time.monotonic() at its end
        self._account_pause: _Pause | None = None
        self.account_known = False
        """This process knows of an account pause that no accepted request has ended yet (cheap to test)."""
        self._account_warned = False
        self._probe_until = 0.0  # time.monotonic() until which this process's probe request is out
        self._probe_s = 2 * settings.request_timeout_s + _LOCK_SLACK_S

    def pause_s(self) -> float:
        """Seconds left of the fleet's pause, as this process last saw it (0: none): tokenByAkSk refuses the
        AK/SK, or createVoiceNotification refuses the account. Costs nothing (no I/O)."""
        now = time.monotonic()
        return max(self._paused_until - now, self._account_until - now, 0.0)

    def send_wait_s(self) -> float:
        """How long a job should wait before it asks for a rate permit (0: go): :meth:`pause_s`; and once an
        account pause has ended but no request has been accepted since, the first caller goes (this process's
        probe) while the others wait for its answer, a second at a time. The dispatcher asks before every
        permit: no I/O."""
        wait = self.pause_s()
        if wait > 0 or not self.account_known:
            return wait
        now = time.monotonic()
        if now < self._probe_until:
            return min(self._probe_until - now, _PROBE_WAIT_S)
        self._probe_until = now + _PROBE_WAIT_S  # reserved; held longer once the probe is sent
        return 0.0

    def account_paused(self) -> AccountError | None:
        """Asked at the last moment before a request leaves (no I/O): the error to raise instead of sending
        while the account pause lasts, as this process knows it; None to send. A request that leaves after the
        pause, before one was accepted, is a probe: the other jobs wait for its answer."""
        if not self.account_known:
            return None
        now = time.monotonic()
        pause = self._account_pause
        if pause is not None and now < self._account_until:
            return self._account_error(pause, self._account_until - now)
        self._probe_until = max(self._probe_until, now + self._probe_s)
        return None

    async def account_check(self) -> AccountError | None:
        """After a first 401/403: is the fleet already paused for the account (another process found the
        account refused)? Then the error to raise, with no token discarded and nothing re-sent; else None."""
        try:
            raw, now_ms = await self._account(keys=[self._keys.account_refused], args=["check", 0, 0, "", 0])
        except RedisError as exc:
            log.debug("could not read the fleet's account pause: %s", type(exc).__name__)
            return None
        pause = _decode_pause(raw)
        if pause is None or pause.until_ms <= int(now_ms):
            return None
        return self._adopt_account(pause, int(now_ms), time.monotonic())

    async def account_refused(self, status: int) -> AccountError:
        """createVoiceNotification answered ``status`` (401/403) even with a fresh access token: pause the whole
        fleet (stored in Redis; a pause already on is kept, the next one after it doubles) and say so once.
        Returns the error the caller raises. The token is not discarded: it is fine, the account is not."""
        limit = self._settings.token_refused_retry_max_s
        why = f"createVoiceNotification answered HTTP {status} even with a fresh access token"
        mono = time.monotonic()
        try:
            raw, now_ms = await self._account(
                keys=[self._keys.account_refused],
                args=["refuse", min(_FIRST_REFUSED_WAIT_S, limit), limit, why, status],
            )
            pause = _decode_pause(raw)
        except RedisError as exc:
            log.debug("could not store the fleet's account pause: %s", type(exc).__name__)
            pause, now_ms = None, 0
        if pause is None:  # Redis failed us: pause this process at least
            step = min(_FIRST_REFUSED_WAIT_S, limit)
            pause, now_ms = _Pause(step * 1000, step, why, status), 0
        return self._adopt_account(pause, int(now_ms), mono)

    async def account_answered(self, status: int | None) -> None:
        """A createVoiceNotification request was answered ``status`` other than 401/403 (None: no answer) while
        this process knows of an account pause: a 2xx ends the pause fleet-wide; anything else only ends this
        process's probe, so the next job probes. The client calls this only when :attr:`account_known`."""
        if status is None or not 200 <= status < 300:
            self._probe_until = 0.0
            return
        was_on = self.account_known
        self.account_known = False
        self._account_pause = None
        self._account_until = self._probe_until = 0.0
        try:
            await self._redis.delete(self._keys.account_refused)
        except RedisError as exc:
            log.debug("could not clear the fleet's account pause: %s", type(exc).__name__)
        if was_on and self._account_warned:
            self._account_warned = False
            log.warning("createVoiceNotification accepts requests again: taking jobs again")

    def _adopt_account(self, pause: _Pause, server_now_ms: float, mono: float) -> AccountError:
        """Remember the fleet's account pause (and say so once per pause); the error for the caller."""
        wait = max(pause.until_ms - server_now_ms, 0.0) / 1000
        self._account_until = max(self._account_until, mono + wait)
        self._account_pause = pause
        self.account_known = True
        self._probe_until = 0.0  # a probe that met the pause has its answer
        if not self._account_warned:
            self._account_warned = True
            log.warning(
                "%s: the service may not be purchased for this tenant, or the account is wrong or suspended "
                "(the provider's 401: check the purchase, and the account's status with customer service); the "
                "access token itself is fine. This worker takes no jobs meanwhile (they wait, none is burnt) and "
                "tries one request again with backoff (next in %.0f s, at most every %g s)",
                pause.why, wait, self._settings.token_refused_retry_max_s,
            )
        return self._account_error(pause, wait)

    @staticmethod
    def _account_error(pause: _Pause, wait: float) -> AccountError:
        return AccountError(f"{pause.why} (service not purchased or account refused); the fleet waits "
                            f"{wait:.1f} s before trying again", status=pause.status)

    def __repr__(self) -> str:
        return f"<TokenManager key={self._keys.token!r} refreshes={self.refreshes}>"

    async def get(self) -> Token:
        """A valid token, from memory when possible.

        Inside the refresh margin the current token is still returned at once while one refresh
        runs in the background; callers wait only when there is no valid token at all. Raises the
        fetch's error (e.g. :class:`AuthError`) when no valid token can be had, or
        :class:`RetryableError` when another process's refresh did not finish in time.
        """
        cached = self._cached
        now = time.monotonic()
        if cached is not None and now < cached.expire_at:
            if now >= cached.refresh_at and now >= cached.recheck_at:
                self._start_refresh()
            return cached.token
        # A refresh that started before an invalidate() may return the token just invalidated.
        for _ in range(2):
            # shield: one caller being cancelled must not cancel the refresh the others await.
            token = await asyncio.shield(self._start_refresh())
            if not self._is_revoked(token):
                return token
        raise RetryableError("no usable access token: the refreshed one was invalidated meanwhile")

    async def invalidate(self, token: Token) -> None:
        """Forget ``token`` (the provider refused it) unless a newer token has already replaced it."""
        self._revoked.append(token)
        cached = self._cached
        if cached is not None and cached.token._same(token):
            self._cached = None
        await self._invalidate(keys=[self._keys.token], args=[token.value.get_secret_value()])

    async def close(self) -> None:
        """Cancel a refresh still running in the background (at shutdown)."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- internals ------------------------------------------------------------------------------

    def _start_refresh(self) -> asyncio.Future[Token]:
        """The refresh in flight in this process, started if there is none (single flight)."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.ensure_future(self._refresh())
            task.add_done_callback(self._refresh_done)
            self._inflight = task
        return task

    def _refresh_done(self, task: asyncio.Future[Token]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Retrieved here: a background refresh may have no awaiter; the next get() reports it.
            log.debug("access token refresh failed: %s", _describe(exc))

    def _is_revoked(self, token: Token | None) -> bool:
        return any(token is not None and bad._same(token) for bad in self._revoked)

    def _paused(self, pause: _Pause, server_now_ms: float, mono: float) -> AuthError:
        """Remember the fleet's pause (and say so once); the error for the caller: no token can be had until
        the pause ends (:meth:`pause_s`)."""
        wait = max(pause.until_ms - server_now_ms, 0.0) / 1000
        self._paused_until = mono + wait
        self._pause_why = pause.why
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: the app key or secret (DIALER_APP_KEY / DIALER_APP_SECRET) is most likely wrong; this "
                "worker takes no jobs while no access token can be had (they wait, none is burnt) and asks "
                "tokenByAkSk again with backoff (next in %.0f s, at most every %g s)",
                pause.why, wait, self._settings.token_refused_retry_max_s,
            )
        return AuthError(f"{pause.why}; the fleet waits {wait:.1f} s before asking again",
                                  status=pause.status)

    def _resumed(self) -> None:
        self._paused_until = 0.0
        if self._warned:
            self._warned = False
            log.warning("tokenByAkSk gives an access token again: taking jobs again")

    def _remember(self, token: Token, server_now_s: float, mono: float, recheck_in: float = 0.0) -> Token:
        """Cache ``token``; ``mono`` is the monotonic time at which Redis said ``server_now_s``."""
        self._resumed()
        remaining = token.expires_at - server_now_s
        self._cached = _Cached(
            token,
            refresh_at=mono + remaining - token.margin_s(self._settings),
            expire_at=mono + remaining,
            recheck_at=mono + recheck_in,
        )
        return token

    def _still_valid(self, *candidates: Token | None, server_now_s: float) -> Token | None:
        """The candidate that lives longest, if any is unexpired and not invalidated."""
        alive = [
            t for t in candidates if t is not None and t.expires_at > server_now_s and not self._is_revoked(t)
        ]
        return max(alive, key=lambda t: t.expires_at, default=None)

    def _cached_token(self) -> tuple[Token | None, float]:
        """The in-process token and its remaining life in seconds (by the monotonic clock)."""
        cached = self._cached
        if cached is None:
            return None, 0.0
        return cached.token, cached.expire_at - time.monotonic()

    async def _refresh(self) -> Token:
        try:
            return await self._refresh_shared()
        except Exception as exc:
            # Provider or Redis trouble: a token that has not expired yet still works.
            token, remaining = self._cached_token()
            if token is None or remaining <= 0 or self._is_revoked(token):
                raise
            log.warning(
                "access token refresh failed (%s); using the current token, which expires in %.0f s",
                _describe(exc),
                remaining,
            )
            cached = self._cached
            if cached is not None:
                cached.recheck_at = time.monotonic() + _RECHECK_FAILED_S
            return token

    async def _refresh_shared(self) -> Token:
        settings = self._settings
        deadline = time.monotonic() + self._lock_ttl_ms / 1000 + _LOCK_SLACK_S
        delay = _POLL_FIRST_S
        owner = secrets.token_hex(16)
        margin_ms = int(settings.refresh_margin_s * 1000)
        while True:
            res = await self._get_or_lock(
                keys=[self._keys.token, self._keys.token_lock, self._keys.token_refused, self._keys.account_refused],
                args=[owner, self._lock_ttl_ms, margin_ms],
            )
            taken, raw, now_ms = res[0], res[1], res[2]
            pause = _decode_pause(res[3] if len(res) > 3 else None)
            # TIME ran inside the script, a little before this: deadlines derived from it err early.
            mono = time.monotonic()
            account = _decode_pause(res[4] if len(res) > 4 else None)
            if account is not None and account.until_ms > int(now_ms):
                # Another process found the account refused: hold this process's jobs too (the token is fine).
                self._adopt_account(account, int(now_ms), mono)
            server_now = int(now_ms) / 1000
            stored = _decode(raw)
            if self._is_revoked(stored):
                stored = None
            if not taken:
                if stored is not None and stored.expires_at - server_now > stored.margin_s(settings):
                    return self._remember(stored, server_now, mono)
                # Another process is refreshing. Don't hold callers up while a token still works.
                cached, _ = self._cached_token()
                usable = self._still_valid(stored, cached, server_now_s=server_now)
                if usable is not None:
                    return self._remember(usable, server_now, mono, recheck_in=_RECHECK_OTHER_S)
                if pause is not None and pause.until_ms > int(now_ms):
                    # tokenByAkSk refused a moment ago: nobody asks it again before the pause ends.
                    raise self._paused(pause, int(now_ms), mono)
                if time.monotonic() > deadline:
                    raise RetryableError("timed out waiting for another worker to refresh the access token")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)
                continue
            try:
                return await self._fetch_and_store(server_now, mono, stored, pause)
            finally:
                try:
                    await self._release(keys=[self._keys.token_lock], args=[owner])
                except (RedisError, OSError) as exc:
                    # The lock's PX frees it anyway; the token we got is still good.
                    log.warning("could not release the token refresh lock: %s", _describe(exc))

    async def _fetch_and_store(
        self, server_now: float, mono: float, stored: Token | None, pause: _Pause | None = None
    ) -> Token:
        self.refreshes += 1
        try:
            fetched = await self._fetch()
        except Exception as exc:
            metrics.observe_token_refresh(False)
            # Prefer the token in Redis over ours: another process may have a newer one.
            if stored is not None and stored.expires_at > server_now:
                self._remember(stored, server_now, mono)
            elif isinstance(exc, AuthError):
                # Refused: pause the fleet (every process reads this before asking), with backoff.
                raise await self._pause_fleet(exc, server_now, mono, pause) from None
            raise
        metrics.observe_token_refresh(True)
        if pause is not None:
            await self._redis.delete(self._keys.token_refused)
        if fetched.lifetime_s <= 0:
            raise AuthError("tokenByAkSk returned a token that has already expired")
        # Restamp on the server clock, counting the lifetime from before the request (conservative).
        token = Token(fetched.value, server_now + fetched.lifetime_s, server_now)
        await self._redis.set(self._keys.token, _encode(token), pxat=int(token.expires_at * 1000))
        log.info("access token refreshed; it expires in %.0f s", token.lifetime_s)
        return self._remember(token, server_now, mono)

    async def _pause_fleet(
        self, exc: AuthError, server_now: float, mono: float, previous: _Pause | None
    ) -> AuthError:
        limit = self._settings.token_refused_retry_max_s
        step = min(previous.step_s * 2 if previous is not None else _FIRST_REFUSED_WAIT_S, limit)
        now_ms = server_now * 1000
        pause = _Pause(now_ms + step * 1000, step, str(exc), exc.status)  # our own text: no secret
        data = json.dumps({"until": pause.until_ms, "step": step, "why": pause.why, "status": exc.status})
        try:
            # Kept past its end so the next refusal doubles the step; gone by itself if nobody asks again.
            await self._redis.set(self._keys.token_refused, data, px=int((step + limit) * 1000))
        except RedisError as rexc:
            log.debug("could not store the fleet's token pause: %s", type(rexc).__name__)
        return self._paused(pause, now_ms, mono)
