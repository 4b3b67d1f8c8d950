"""``POST /v1/callbacks/release``: the provider's release event (provider-api.md §3) when a call ends.

::

    curl -sS http://127.0.0.1:8080/v1/callbacks/release -H 'Content-Type: application/json' \\
         -d '{"callSerialNo": "1197765398201387012", "releaseReason": "1", "talkDuration": "6", ...}'
    # 200 {"retCode": "0", "retMsg": "success"}

The route is authenticated by the event's **signature**, not by API keys (the provider has none): with
``DIALER_CALLBACK_SHARED_KEY`` set, an event whose signature does not verify (digest chosen by
``DIALER_CALLBACK_SIGNATURE_MODE``), or whose signed ``timestamp`` is more than a day old or five minutes
ahead, is refused with 401 and nothing is recorded. Without a shared key every event is refused (401
``unsigned_callback``), unless the operator opts out with ``DIALER_CALLBACK_INSECURE_UNSIGNED=true`` (then
anyone who can reach the route can record outcomes for calls whose callSerialNo they know; ``dialer serve``
says so with a WARNING at start-up).

A known callSerialNo gets its outcome recorded (see :mod:`worker.campaigns.outcomes` for the
releaseReason mapping and redials) and the provider's expected answer; an unknown one is 404 (the
provider retries, which also covers a callback that overtakes the worker's write of the callSerialNo).
A replayed event changes nothing: recording is idempotent and a redial is made once. Every refusal is
logged (never the body or the signature) and answered with the API's error JSON.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.callback_url import CALLBACK_PATH, job_from_segment
from worker.campaigns.outcomes import EvidenceMismatch, Outcomes
from worker.errors import FieldError
from worker.http.common import REDIS, SETTINGS
from worker.http.errors import ApiError
from worker.http.routing import Access, Param, Reply, Route
from worker.http.schemas import CallbackReply, ReleaseCallback
from worker.models import field_errors
from worker.provider.signature import ambiguities, verify
from worker.rules import ascii_int
from worker.settings import Settings

__all__ = ["MAX_AGE_S", "MAX_AHEAD_S", "UNSIGNED_REFUSED", "log_start_up", "routes", "setup"]

log = logging.getLogger(__name__)

MAX_AGE_S = 86_400.0
"""A signed event older than this is refused: the provider retries for minutes, not days."""
MAX_AHEAD_S = 300.0
"""... and so is one stamped more than this in the future (clock skew allowance)."""

OUTCOMES: web.AppKey[Outcomes] = web.AppKey("outcomes", Outcomes)
_SUCCESS = {"retCode": "0", "retMsg": "success"}


def _show(value: Any) -> str:
    """A short, log-safe rendering of an untrusted value."""
    return repr(value)[:80]


UNSIGNED_REFUSED = ("Unsigned result callbacks are refused: set DIALER_CALLBACK_SHARED_KEY to the provider's "
                    "shared key (or, insecure, DIALER_CALLBACK_INSECURE_UNSIGNED=true).")


def log_start_up(settings: Settings) -> None:
    """Say at ``dialer serve``'s start-up how result callbacks are authenticated (loudly when they are not)."""
    if settings.callback_shared_key is not None:
        log.info("result callbacks: signed events only (DIALER_CALLBACK_SIGNATURE_MODE=%s)",
                 settings.callback_signature_mode)
    elif settings.callback_insecure_unsigned:
        log.warning("INSECURE: DIALER_CALLBACK_INSECURE_UNSIGNED=true and no DIALER_CALLBACK_SHARED_KEY: result "
                    "callbacks are accepted UNSIGNED, so anyone who can reach %s and knows a callSerialNo can "
                    "record a call's outcome and get its number redialled", CALLBACK_PATH)
    else:
        log.info("result callbacks: every event is refused (401 unsigned_callback) because "
                 "DIALER_CALLBACK_SHARED_KEY is not set; set it to the provider's shared key to record outcomes")


def _check_signature(data: dict[str, Any], settings: Settings, remote: str | None) -> None:
    key = settings.callback_shared_key
    serial = _show(data.get("callSerialNo"))
    if key is None:
        if settings.callback_insecure_unsigned:
            return
        log.warning("callback refused: unsigned callbacks are refused without DIALER_CALLBACK_SHARED_KEY "
                    "(callSerialNo %s, from %s)", serial, remote)
        raise ApiError(401, UNSIGNED_REFUSED, code="unsigned_callback")
    ambiguous = ambiguities(data)
    if ambiguous:
        # The provider's signed string joins k=v with commas; these values could be regrouped under one signature.
        log.warning("callback refused: fields %s would make the signed string ambiguous (callSerialNo %s, "
                    "from %s)", ", ".join(_show(f) for f, _ in ambiguous[:5]), serial, remote)
        raise ApiError(400, "The body cannot be authenticated: its signed string could be read more than one "
                            "way.", code="ambiguous_callback", fields=[FieldError(f, r) for f, r in ambiguous])
    if not verify(data, key.get_secret_value(), settings.callback_signature_mode,
                  spaces=settings.callback_signature_spaces):
        log.warning("callback refused: bad or missing signature (callSerialNo %s, from %s)", serial, remote)
        raise ApiError(401, "The signature does not match (DIALER_CALLBACK_SHARED_KEY, "
                            "DIALER_CALLBACK_SIGNATURE_MODE).", code="bad_signature")
    stamp = data.get("timestamp")
    ms = ascii_int(stamp)  # ASCII digits only (int() would take "١٦٤٥...", " 1645..." or "1_645...")
    age = float("inf") if ms is None else time.time() - ms / 1000
    if not -MAX_AHEAD_S <= age <= MAX_AGE_S:
        log.warning("callback refused: signed timestamp %s is outside the accepted window (callSerialNo %s, "
                    "from %s)", _show(stamp), serial, remote)
        raise ApiError(401, "The signed timestamp is more than a day old or in the future.", code="stale_callback")


async def release(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    limit = settings.http_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"The body may be at most {limit} bytes.")
    raw = await request.read()
    # Any content type: the provider's is not documented; the body must be a JSON object either way.
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        log.warning("callback refused: the body is not JSON (from %s)", request.remote)
        raise ApiError(400, "The body is not valid JSON.", code="malformed_json") from None
    if not isinstance(data, dict):
        raise ApiError.refused([FieldError("body", "must be a JSON object")])
    _check_signature(data, settings, request.remote)
    try:
        event = ReleaseCallback.model_validate(data)
    except ValidationError as exc:
        log.warning("callback refused: %s (from %s)", "; ".join(map(str, field_errors(exc)))[:300], request.remote)
        raise ApiError.refused(field_errors(exc)) from None
    hint = None
    if (segment := request.match_info.get("job")) is not None:
        hint = job_from_segment(segment)
        if hint is None:
            log.warning("callback refused: the URL names no valid job id %s (from %s)", _show(segment), request.remote)
            raise ApiError(404, "The callback URL names no valid job id.", code="unknown_call")
    try:
        done = await request.app[OUTCOMES].record(event, job_hint=hint)
    except EvidenceMismatch as exc:
        log.warning("callback refused: %s (callSerialNo %s, job %s, from %s)", exc, _show(event.call_serial_no),
                    hint, request.remote)
        raise ApiError(409, "The event does not belong to the job its callback URL names; nothing was recorded.",
                       code="evidence_mismatch", fields=[FieldError(exc.field, exc.rule)]) from None
    if done is None:
        log.warning("callback refused: no job has callSerialNo %s%s (from %s)", _show(event.call_serial_no),
                    f" or id {hint}" if hint else "", request.remote)
        raise ApiError(404, f"No call has callSerialNo {event.call_serial_no[:64]!r}.", code="unknown_call")
    return web.json_response(_SUCCESS)


def routes(settings: Settings) -> list[Route]:
    description = ("The provider's release event when a call ends. Authenticated by its signature "
                   "(DIALER_CALLBACK_SHARED_KEY; unsigned events are refused unless DIALER_CALLBACK_INSECURE_UNSIGNED "
                   "is true); records the outcome on the job that got the callSerialNo, and makes the campaign's "
                   "redial when one is due. Idempotent.")
    return [
        Route(
            "POST", CALLBACK_PATH, release, "Receive a result callback", Access.OPEN, tag="callbacks",
            operation_id="releaseCallback", body=ReleaseCallback, description=description,
            responses={200: Reply("Recorded (or recorded before).", CallbackReply)},
            errors=(400, 401, 404, 413, 422),
        ),
        Route(
            "POST", CALLBACK_PATH + "/{job}", release, "Receive a result callback for a named job", Access.OPEN,
            tag="callbacks", operation_id="releaseCallbackForJob", body=ReleaseCallback,
            parameters=(Param("job", "path", "The job id the dialer put in the callBackUrl it sent ('@' written "
                              "'&')", required=True),),
            description=description + " The job id in the path (the callBackUrl the dialer sends for its own "
            "route carries it) finds the job even when the ledger never learnt the callSerialNo (a worker killed "
            "mid-request): the event, whose `called` must be the job's number, moves an `unknown` job to `sent`.",
            responses={200: Reply("Recorded (or recorded before).", CallbackReply)},
            errors=(400, 401, 404, 409, 413, 422),
        ),
    ]


def setup(app: web.Application) -> None:
    """Per-app state of this module (called by create_app)."""
    app[OUTCOMES] = Outcomes(app[REDIS], app[SETTINGS])
