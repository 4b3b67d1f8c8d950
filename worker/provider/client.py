"""HTTP client for the provider: tokenByAkSk and createVoiceNotification V2 (provider-api.md §1-2).

One :class:`ProviderClient` per process, owning one ``aiohttp.ClientSession`` (connections are
reused) and the fleet-shared :class:`TokenManager`::

    async with ProviderClient.open(settings, redis) as client:
        accepted = await client.create_voice_notification(request)   # one logical attempt
        print(accepted.call_serial_no)

Every failure is a :class:`ProviderError` subclass that says what the caller may do next:

- :class:`RetryableError`: nothing was created (HTTP 500/503/429, retCode 1 or 3, the connection
  could not be opened): try again later.
- :class:`PermanentError`: the provider refused the request (400, 404, any other retCode; HTTP 500 with
  ``DIALER_PROVIDER_HTTP_500=permanent``, the seed's reading: "check the values of parameters").
- :class:`AuthError`: tokenByAkSk refused the AK/SK; :class:`AccountError` (a subclass): still 401/403
  with a fresh token, the seed's "service not purchased, or the account's status": the fleet pauses
  (:meth:`TokenManager.account_refused`) until a request is accepted again. No call was created.
- :class:`AmbiguousError`: the request left but no usable answer came back (timeout, disconnect,
  garbled 200, a 200 without retCode, retCode 0 without callSerialNo, 5xx from a gateway): the call
  may exist, so it must not be redialed blindly. ``call_serial_no`` keeps any serial the answer had.

Nothing here logs or puts in an exception the app secret, a token or the Authorization header.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar

import aiohttp
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis

from worker import metrics
from worker.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    ProviderError,
    RetryableError,
)
from worker.models import CallRequest, CallResult
from worker.provider.token import Token, TokenManager
from worker.settings import Settings

log = logging.getLogger(__name__)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class RequestGate(Protocol[R_co]):
    """What stands between a call and the wire: the dispatcher's rate permit, in-flight slot and last
    checks. :meth:`ProviderClient.create_voice_notification` asks it before each request."""

    async def open(self, *, resend: bool) -> R_co | None:
        """Awaited immediately before a request leaves (``resend``: the one after a 401/403). None lets
        it leave; anything else is a refusal, returned to the caller with nothing sent."""

    def refused(self) -> None:
        """The first request was answered 401/403: nothing is out until the re-send."""


RETRYABLE_RET_CODES = frozenset({"1", "3"})
# 500 is the provider's documented "business failure"; 503 and 429 mean the request was turned away.
RETRYABLE_STATUSES = frozenset({429, 500, 503})
# Idle connections are closed before typical server/LB idle timeouts (60 s and up), so a POST is
# rarely written into a connection the server is closing, which would make the call ambiguous.
KEEPALIVE_S = 15.0
# The provider grants at most 3600 s; anything far beyond that is a garbled answer, not a promise.
_MAX_LIFETIME_S = 86400.0
# Room for tokenByAkSk requests beside max_in_flight createVoiceNotification requests.
_SPARE_CONNECTIONS = 2


@dataclass(frozen=True)
class Accepted:
    """The provider created the call.

    ``latency_s`` is the duration of the HTTP request that succeeded; ``attempts`` counts logical
    attempts: always 1, since :meth:`ProviderClient.create_voice_notification` makes one and the
    dispatcher does the retrying (with :func:`worker.provider.retry.backoff_delay`).
    """

    call_serial_no: str
    ret_msg: str | None
    latency_s: float
    attempts: int


# --- knowing whether a request left ----------------------------------------------------------------
# aiohttp raises a bare TimeoutError when the total timeout fires, whether it fired while waiting
# for a pooled connection (nothing sent: safe to retry) or while waiting for the answer (the call may
# exist). A trace hook that runs just before the headers are written tells the two apart.


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    state = ctx.trace_request_ctx
    if isinstance(state, _SendState):
        state.sent = True


class _SendState:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


_SENT_TRACE = aiohttp.TraceConfig()
_SENT_TRACE.on_request_headers_sent.append(_on_headers_sent)


def _net_error_text(exc: BaseException) -> str:
    # Connection errors name host and port only, never headers or bodies.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _ret_fields(data: Any) -> tuple[str | None, str | None]:
    if not isinstance(data, dict):
        return None, None
    code, msg = data.get("retCode"), data.get("retMsg")
    return (None if code is None else str(code)), (None if msg is None else str(msg))


class ProviderClient:
    """createVoiceNotification and tokenByAkSk over one shared ``aiohttp.ClientSession``.

    Build it with :meth:`open`. When constructed directly, the caller owns ``session`` (``close``
    leaves it open) and must supply ``tokens``, or set it afterwards::

        client = ProviderClient(settings, session)
        client.tokens = TokenManager(redis, settings, fetch=client.fetch_token)
    """

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, tokens: TokenManager | None = None
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self._session = session
        self._owns_session = False
        # Without our trace hook a total timeout cannot be placed, and is treated as ambiguous.
        self._traced = _SENT_TRACE in session.trace_configs

    def __repr__(self) -> str:
        return f"<ProviderClient {self.settings.create_url!r}>"

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, redis: Redis) -> AsyncIterator[ProviderClient]:
        """A client with its own session and a :class:`TokenManager` on ``redis``; closed on exit."""
        connector = aiohttp.TCPConnector(
            limit=settings.max_in_flight + _SPARE_CONNECTIONS,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
            ),
            trace_configs=[_SENT_TRACE],
            raise_for_status=False,
        )
        client = cls(settings, session)
        client._owns_session = True
        client.tokens = TokenManager(redis, settings, fetch=client.fetch_token)
        try:
            yield client
        finally:
            await client.close()

    async def close(self) -> None:
        """Stop a background token refresh, and close the session if this client opened it."""
        if self.tokens is not None and self._owns_session:
            await self.tokens.close()
        if self._owns_session and not self._session.closed:
            await self._session.close()

    # --- tokenByAkSk --------------------------------------------------------------------------------

    async def fetch_token(self) -> Token:
        """Call tokenByAkSk once. The lifetime is the response's ``Expires`` (seconds, a string).

        Raises :class:`AuthError` for a non-200 answer or a body without ``AccessToken``, and
        :class:`RetryableError` when the token endpoint cannot be reached or does not answer.
        """
        s = self.settings
        payload = json.dumps({"app_key": s.app_key, "app_secret": s.app_secret.get_secret_value()})
        headers = {"Content-Type": "application/json", "X-Token-Expire": str(s.token_lifetime_s)}
        obtained_at = time.time()
        started = time.monotonic()
        try:
            async with self._session.post(
                s.resolved_token_url, data=payload.encode(), headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            metrics.observe_provider_response(None, None, None, endpoint="token")
            # A token request creates nothing, so any network failure is safe to retry.
            raise RetryableError(f"tokenByAkSk failed ({_net_error_text(exc)})") from None
        metrics.observe_provider_response(status, None, time.monotonic() - started, endpoint="token")
        if status != 200:
            raise AuthError(f"tokenByAkSk refused (HTTP {status})", status=status)
        data = _parse_json(raw)
        value = data.get("AccessToken") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise AuthError("tokenByAkSk answered without an AccessToken", status=status)
        lifetime = self._lifetime(data.get("Expires") if isinstance(data, dict) else None)
        return Token(SecretStr(value), obtained_at + lifetime, obtained_at)

    def _lifetime(self, expires: Any) -> float:
        try:
            lifetime = float(expires)
        except (TypeError, ValueError):
            log.warning(
                "tokenByAkSk answer has no usable Expires; assuming the requested %s s",
                self.settings.token_lifetime_s,
            )
            return float(self.settings.token_lifetime_s)
        if not (lifetime > 0 and math.isfinite(lifetime)):
            raise AuthError(f"tokenByAkSk returned a token with Expires={expires!r}", status=200)
        return min(lifetime, _MAX_LIFETIME_S)

    # --- createVoiceNotification --------------------------------------------------------------------

    async def create_voice_notification(
        self, request: CallRequest, *, gate: RequestGate[R] | None = None
    ) -> Accepted | R:
        """One logical attempt: one HTTP request, plus one more with a fresh token after a 401/403 (unless the
        fleet is already paused for the account). 401/403 again raises :class:`AccountError` and pauses the
        fleet (:meth:`TokenManager.account_refused`); while that pause lasts nothing is sent.

        ``gate`` (the dispatcher's) is asked immediately before each HTTP request whether it may leave
        (it takes its rate permit and in-flight slot there); when it refuses, nothing is sent and its
        refusal is returned. It is told as soon as the first request is answered 401/403, before the
        wait for a fresh token (from then on no request is out until the re-send). Raises a
        :class:`ProviderError` subclass on failure.
        """
        tokens = self.tokens
        if tokens is None:
            raise RuntimeError("ProviderClient.tokens is not set; build the client with ProviderClient.open")
        body = self._encode_body(request)
        token = await tokens.get()
        for auth_try in (1, 2):
            if gate is not None and (refusal := await gate.open(resend=auth_try == 2)) is not None:
                return refusal
            if (paused := tokens.account_paused()) is not None:
                # The fleet paused for the account while this request waited for its gate: nothing is sent.
                raise paused
            started = time.monotonic()
            try:
                status, raw = await self._post_create(token, body)
            except ProviderError:
                if tokens.account_known:
                    await tokens.account_answered(None)
                raise
            latency = time.monotonic() - started
            if status not in (401, 403):
                if tokens.account_known:  # cheap: only while this process knows of an account pause
                    await tokens.account_answered(status)
                return self._classify(status, raw, latency)
            if auth_try == 1 and gate is not None:
                gate.refused()
            if auth_try == 2:
                # Refused again with a fresh token: the seed's 401 ("purchase the service, check the account").
                # The token stays (it is fine); the fleet pauses instead of every job discarding it in turn.
                raise await tokens.account_refused(status)
            if (paused := await tokens.account_check()) is not None:
                # Another process found the account refused: this 401 is that, not an expired token.
                raise paused
            await tokens.invalidate(token)
            log.info("createVoiceNotification got HTTP %s; retrying once with a fresh access token", status)
            token = await tokens.get()
        raise AssertionError("unreachable")

    def _encode_body(self, request: CallRequest) -> bytes:
        body = request.body()
        url = body.get("callBackUrl")
        if self.settings.callback_url_base64 and isinstance(url, str):
            body["callBackUrl"] = base64.b64encode(url.encode("utf-8")).decode("ascii")
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def _post_create(self, token: Token, body: bytes) -> tuple[int, bytes]:
        headers = {
            "Authorization": "Bearer " + token.value.get_secret_value(),
            "X-APP-Key": self.settings.app_key,
            "Content-Type": "application/json",
        }
        state = _SendState()
        try:
            async with self._session.post(
                self.settings.create_url,
                data=body,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=state,
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            metrics.observe_provider_response(None, None, None)
            # Raised while opening the connection: the request never left.
            raise RetryableError(f"could not connect ({_net_error_text(exc)})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            metrics.observe_provider_response(None, None, None)
            if self._traced and not state.sent:
                raise RetryableError(f"request not sent ({_net_error_text(exc)})") from None
            # from None: some aiohttp errors carry the request, Authorization header included.
            raise AmbiguousError(f"no answer after sending ({_net_error_text(exc)})") from None

    def _classify(self, status: int, raw: bytes, latency: float) -> Accepted:
        data = _parse_json(raw)
        ret_code, ret_msg = _ret_fields(data)
        metrics.observe_provider_response(status, ret_code, latency)
        log.debug("createVoiceNotification: HTTP %s retCode %s in %.3f s", status, ret_code, latency)
        if 200 <= status < 300:
            return self._classify_ok(status, data, latency)
        kwargs: dict[str, Any] = {"status": status, "ret_code": ret_code, "ret_msg": ret_msg}
        if status == 500 and self.settings.provider_http_500 == "permanent":
            # The seed's reading of 500: "Business failure. Check the values of parameters in the request."
            raise PermanentError("createVoiceNotification refused (HTTP 500: check the values of the request's "
                                 "parameters; DIALER_PROVIDER_HTTP_500=permanent)", **kwargs)
        if status in RETRYABLE_STATUSES:
            raise RetryableError(f"createVoiceNotification failed (HTTP {status})", **kwargs)
        if status >= 500:
            # Other 5xx come from gateways (502/504) that may have passed the request on.
            raise AmbiguousError(f"createVoiceNotification got HTTP {status} from the gateway", **kwargs)
        raise PermanentError(f"createVoiceNotification refused (HTTP {status})", **kwargs)

    def _classify_ok(self, status: int, data: Any, latency: float) -> Accepted:
        try:
            result = CallResult.model_validate(data)
        except ValidationError:
            result = None
        if result is None:
            raise AmbiguousError(f"HTTP {status} with a body the dialer cannot read (not the seed's JSON object)",
                                 status=status)
        code, msg = result.ret_code or None, result.ret_msg
        serial = result.call_serial_no or None
        if code == "0" and serial:
            return Accepted(call_serial_no=serial, ret_msg=msg, latency_s=latency, attempts=1)
        kwargs: dict[str, Any] = {"status": status, "ret_code": code, "ret_msg": msg}
        if code is None:
            # No result code says neither success nor failure: the call may exist (a serial says it likely does).
            raise AmbiguousError(f"HTTP {status} without a retCode", call_serial_no=serial, **kwargs)
        if code == "0":
            # "Success" without the call's serial: the call may exist, and nothing can find it.
            raise AmbiguousError("createVoiceNotification retCode 0 without a callSerialNo", **kwargs)
        text = f"createVoiceNotification retCode {code}" + (f": {msg}" if msg else "")
        if code in RETRYABLE_RET_CODES:
            raise RetryableError(text, **kwargs)
        raise PermanentError(text, **kwargs)

