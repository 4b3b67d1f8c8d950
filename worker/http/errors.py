"""Every error the HTTP API answers has one JSON shape::

    {"error": {"code": "validation_failed", "message": "2 fields refused",
               "fields": [{"field": "playList[0].voiceId", "rule": "String should have at least 1 character"}]}}

``code`` is stable (clients branch on it); ``message`` is for people; ``fields`` is empty unless input
was refused. Handlers raise :class:`ApiError`; :func:`error_middleware` turns it, aiohttp's own HTTP
errors (404, 405, 413), Redis outages and a full Redis (503) and anything unexpected (500, no internals) into
that shape. No log line it writes carries a request body or an exception's text (which may hold one).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import FieldError, InvalidRequest, NotReplicated
from worker.http.routing import Handler

log = logging.getLogger(__name__)

CODES: Mapping[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "A valid API key is required: Authorization: Bearer <key>."),
    403: ("forbidden", "This key may not do that."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflicts with the current state."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Send Content-Type: application/json."),
    422: ("validation_failed", "The request was refused; see fields."),
    429: ("too_many_requests", "Too many requests."),
    500: ("internal", "Internal error; it has been logged."),
    503: ("unavailable", "A backing service is unavailable; try again shortly."),
}
"""Default code and message of each status."""

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
_RETRY_AFTER_S = "5"


class ApiError(Exception):
    """An error answer. ``fields`` name refused input (seed names, e.g. ``playList[0].templateParams``)."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        fields: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        default_code, default_message = CODES.get(status, ("error", "Error."))
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        self.fields = list(fields)
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.code}: {self.message}")

    @classmethod
    def refused(cls, errors: Iterable[FieldError], rename: Mapping[str, str] | None = None) -> ApiError:
        """422 naming each refused field, renaming Python option names to the API's (``not_before``)."""
        fields = rename_fields(errors, rename or {})
        return cls(422, _summary(len(fields)), fields=fields)

    @classmethod
    def invalid(cls, exc: InvalidRequest, rename: Mapping[str, str] | None = None) -> ApiError:
        """422 from an :class:`InvalidRequest`."""
        return cls.refused(exc.errors, rename)

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.fields, self.headers)


def _summary(n: int) -> str:
    return f"{n} field{'s' if n != 1 else ''} refused" if n else "the request was refused"


def rename_fields(errors: Iterable[FieldError], rename: Mapping[str, str]) -> list[FieldError]:
    """Rename the first path part of each field (``not_before`` -> ``notBefore``)."""
    out = []
    for e in errors:
        cut = next((i for i, c in enumerate(e.field) if c in ".["), len(e.field))
        head = e.field[:cut]
        out.append(FieldError(rename[head] + e.field[cut:], e.rule) if head in rename else e)
    return out


def error_body(code: str, message: str, fields: Iterable[FieldError] = ()) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "fields": [{"field": f.field, "rule": f.rule} for f in fields]}}


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    fields: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    default_code, default_message = CODES.get(status, ("error", "Error."))
    body = error_body(code or default_code, message or default_message, fields)
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and other non-errors pass through
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, headers=headers)
    except NotReplicated as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error_response(503, "not_replicated", f"Not acknowledged: {exc}.",
                              headers={"Retry-After": _RETRY_AFTER_S})
    except REDIS_DOWN as exc:
        log.warning("%s %s: Redis unavailable (%s)", request.method, request.path, type(exc).__name__)
        return error_response(503, "redis_unavailable", "Redis is unavailable; try again shortly.",
                              headers={"Retry-After": _RETRY_AFTER_S})
    except Exception as exc:
        if redis_is_full(exc):
            log.warning("%s %s: Redis is full (maxmemory reached, writes refused)", request.method, request.path)
            return error_response(503, "redis_full", "Redis is full (out of memory); try again later.",
                                  headers={"Retry-After": _RETRY_AFTER_S})
        # Where it failed goes to the log, not the exception's text: redis-py puts a failed pipeline's
        # command and arguments (request bodies, phone numbers) in it. The client learns only that it
        # was our fault.
        log.error("%s %s: unhandled error %s\n%s", request.method, request.path, type(exc).__name__,
                  _frames(exc))
        return error_response(500)


def redis_is_full(exc: BaseException) -> bool:
    """True for Redis's refusal of a write under ``maxmemory`` with ``noeviction`` (``-OOM``), from a
    command, a script or a pipeline."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc)


def _frames(exc: BaseException) -> str:
    """The traceback's frames (file, line, function, source line) without the exception's message."""
    return "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__))).rstrip()
