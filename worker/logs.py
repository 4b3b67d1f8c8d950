"""Logging set-up: human-readable lines for terminals, one JSON object per line for log shippers.

Secrets never reach a log record in the first place (they are SecretStr and never formatted); this
module chooses the shape of the line and, as a second line of defence, masks any ``extra=`` field whose
name says it holds a secret (``authorization``, ``token``, ``api_key``, ...).

Events about one job carry the same fields, passed with ``extra=`` (build them with :func:`job_fields`)::

    log.info("job %s -> %s", job_id, state, extra=job_fields(job_id, campaign=campaign, priority=3,
                                                             attempt=2, outcome="sent", latency_s=0.041))

JSON: ``{"ts": ..., "level": "info", "logger": ..., "msg": "job a -> sent", "job_id": "a", "campaign":
"spring", "priority": 3, "attempt": 2, "outcome": "sent", "latency_ms": 41.0}``; text mode appends the
same fields as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs in the line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}

SECRET_FIELDS = frozenset(
    {"authorization", "token", "access_token", "app_secret", "secret", "password", "api_key", "api_keys",
     "dashboard_key", "cookie", "set_cookie"}
)
"""``extra=`` field names whose values are never written, whatever they hold."""
_MASK = "[redacted]"

JOB_FIELDS = ("job_id", "campaign", "priority", "attempt", "outcome", "latency_ms", "status", "ret_code", "serial",
              "error")
"""The fields of a job event, in the order text mode prints them."""


def job_fields(
    job_id: str,
    *,
    campaign: str | None = None,
    priority: int | str | None = None,
    attempt: int | None = None,
    outcome: str | None = None,
    latency_s: float | None = None,
    status: int | None = None,
    ret_code: str | None = None,
    error: str | None = None,
    serial: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` dict of one job event; None values are left out. ``error`` must be secret-free
    (``ProviderError.describe()`` is) and is for failures only; a created call's callSerialNo goes in
    ``serial``; ``latency_s`` is written as ``latency_ms``."""
    data: dict[str, Any] = {"job_id": job_id}
    if campaign is not None:
        data["campaign"] = campaign
    if priority is not None:
        data["priority"] = int(priority)
    if attempt is not None:
        data["attempt"] = attempt
    if outcome is not None:
        data["outcome"] = outcome
    if latency_s is not None:
        data["latency_ms"] = round(latency_s * 1000, 1)
    if status is not None:
        data["status"] = status
    if ret_code is not None:
        data["ret_code"] = ret_code
    if serial is not None:
        data["serial"] = serial
    if error is not None:
        data["error"] = error
    return data


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = _MASK if key.lower() in SECRET_FIELDS else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        # default=str: SecretStr prints as '**********', datetimes as ISO text.
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """``2025-01-02 03:04:05,678 INFO    worker.x: message  job_id=a outcome=sent latency_ms=41.0``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in _extras(record).items() if v is not None}
        if not extras:
            return line
        ordered = [k for k in JOB_FIELDS if k in extras] + sorted(k for k in extras if k not in JOB_FIELDS)
        tail = " ".join(f"{k}={_text_value(extras[k])}" for k in ordered)
        first, nl, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{first}  {tail}{nl}{rest}"


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


class _NoRequestBytes(logging.Filter):
    """aiohttp's HTTP parser errors (a header over 8 KB, a malformed request line) quote the raw bytes
    they choked on, an ``Authorization`` or ``Cookie`` value included, and aiohttp logs them with a
    traceback at ERROR. Such a record keeps its message and the error's type, never the bytes: no
    traceback, at WARNING (a client sent something the server refused with 400)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions"):
            record.msg = f"{record.getMessage()}: {type(exc).__name__} (refused with 400; its bytes are not logged)"
            record.args = ()
            record.exc_info, record.exc_text = None, None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _install_filters() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _NoRequestBytes) for f in server.filters):
        server.addFilter(_NoRequestBytes())


_install_filters()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # arq logs every job start/finish at INFO; at our volumes that is noise, our own lines carry outcomes.
    logging.getLogger("arq").setLevel(max(logging.WARNING, root.level))
    # Our access log (worker.http.access) replaces aiohttp's.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
