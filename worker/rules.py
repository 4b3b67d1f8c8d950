"""Pure rules of the product, defined once: what a priority, a job id, a campaign name, a time zone
and a phone number may be. The producer, the campaign launcher, the HTTP schemas (their OpenAPI
patterns) and the metrics' label guard all use these, so they cannot drift apart.

    >>> valid_job_id("order-4711"), valid_producer_id("spring:8899"), valid_campaign_name("spring sale")
    (True, False, False)
    >>> normalize_number(" +86 (138) 0000-0001 ")
    '8613800000001'
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "CAMPAIGN_PATTERN",
    "JOB_ID_PATTERN",
    "PRIORITY_LEVELS",
    "PRODUCER_ID_PATTERN",
    "PRODUCER_ID_RULE",
    "ascii_int",
    "normalize_number",
    "strip_number_formatting",
    "valid_campaign_name",
    "valid_job_id",
    "valid_producer_id",
    "valid_timezone",
]

PRIORITY_LEVELS = range(1, 10)
"""A call's priority, 1 (most urgent) to 9; one queue per level."""

JOB_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
PRODUCER_ID_PATTERN = r"^[A-Za-z0-9._@-]{1,128}$"
"""A job id a producer chooses (``Idempotency-Key``, a batch item's or a file row's ``id``, ``job_id=``,
``dialer enqueue --id``): a job id without ':'. Every id the dialer derives for itself has a ':'
(``<campaign>:<number>`` for a campaign row, ``<first id>:r<k>`` for a redial; campaign names have none),
so no producer can take one in advance and silently suppress a campaign row or a redial."""
PRODUCER_ID_RULE = ("must be 1-128 characters of A-Z a-z 0-9 . _ @ - (no ':': ids with ':' are reserved "
                    "for those the dialer derives, <campaign>:<number> and <id>:r<k>)")
CAMPAIGN_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN.strip("^$"))
_PRODUCER_ID_RE = re.compile(PRODUCER_ID_PATTERN.strip("^$"))
_CAMPAIGN_RE = re.compile(CAMPAIGN_PATTERN.strip("^$"))
_FORMATTING = re.compile(r"[ \t\n\r\f\v\-.()]")
"""What a written number may hold besides its digits and leading '+': ASCII blanks, '-', '.', '(' and ')'
(the same set as ``number_key`` in ``worker/ledger/gate.lua``; ``tests/test_rules.py`` compares them)."""
_DIGITS = re.compile(r"[0-9]{1,32}")


def valid_job_id(job_id: object) -> bool:
    """1-128 of ``A-Z a-z 0-9 . _ : @ -`` (the whole string; it becomes part of Redis keys and URLs)."""
    return isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) is not None


def valid_producer_id(job_id: object) -> bool:
    """A job id a producer may choose: :func:`valid_job_id` without ':' (see ``PRODUCER_ID_PATTERN``)."""
    return isinstance(job_id, str) and _PRODUCER_ID_RE.fullmatch(job_id) is not None


def valid_campaign_name(name: object) -> bool:
    """1-64 of ``A-Z a-z 0-9 . _ -`` (the whole string)."""
    return isinstance(name, str) and _CAMPAIGN_RE.fullmatch(name) is not None


def valid_timezone(name: object) -> bool:
    """True for an IANA time zone name this host knows (``Europe/Paris``, ``UTC``)."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def strip_number_formatting(raw: str) -> str:
    """A written number without its formatting (``" +86 (138) 0000-0001 "`` -> ``"+8613800000001"``):
    what a campaign file's ``called`` cell becomes before it is validated as the seed's ``called``."""
    return _FORMATTING.sub("", raw)


def normalize_number(raw: str) -> str:
    """The do-not-call, per-number-cap and campaign job-id key of a phone number: its digits, without
    formatting or the leading '+'. The one place numbers are normalised (``gate.lua``'s ``number_key``
    agrees); raises ValueError naming the rule."""
    if not isinstance(raw, str):
        raise ValueError("must be a string of digits")
    text = strip_number_formatting(raw).removeprefix("+")
    if not _DIGITS.fullmatch(text):
        raise ValueError("must be 1-32 digits, with an optional leading '+' (spaces, '-', '.', '(', ')' ignored)")
    return text


_ASCII_INT = re.compile(r"[0-9]{1,18}")


def ascii_int(text: object) -> int | None:
    """The value of a string of 1-18 ASCII digits, else None (never raises).

    ``str.isdigit`` accepts ``"²"`` (which ``int`` then refuses) and ``int`` accepts ``"٣"``, ``" 3"``,
    ``"+3"`` and ``"1_000"``: input from outside (callbacks, cookies, ledger fields written by other
    producers) is read with this instead.

    >>> ascii_int("42"), ascii_int("²"), ascii_int("٣"), ascii_int(" 3"), ascii_int("-1"), ascii_int(7)
    (42, None, None, None, None, None)
    """
    if not isinstance(text, str) or _ASCII_INT.fullmatch(text) is None:
        return None
    return int(text)
