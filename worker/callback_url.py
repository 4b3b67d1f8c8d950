"""The ``callBackUrl`` the dialer sends: the provider's rules for it, and the job id in its path.

The provider POSTs a call's release event to its ``callBackUrl``. When that URL is the dialer's own
(``DIALER_PUBLIC_URL`` + :data:`CALLBACK_PATH`), the dialer sends it with the job id appended as one more
path segment, so that a release event names its job even when the ledger never learnt the call's
callSerialNo (a worker killed while its request was out)::

    >>> for_job("https://dialer.example.com/v1/callbacks/release", "spring:8613800000001")
    'https://dialer.example.com/v1/callbacks/release/spring:8613800000001'
    >>> job_from_segment("user&example.com")
    'user@example.com'

Rules (seed: ``string(256)``; cec_07_2802: only ``a-zA-Z0-9-:./_#?&``, and Base64-encoded when the
tenant wants it): :func:`url_problem` checks a URL as it will be sent, in either mode, so that a URL
the provider would refuse on every attempt is refused at enqueue instead. Job ids may hold ``@``, which
is not among the allowed characters: in the path it is written ``&`` (which no job id holds).
"""

from __future__ import annotations

import re

from worker.rules import valid_job_id

__all__ = [
    "CALLBACK_PATH",
    "MAX_URL_CHARS",
    "URL_CHARS_RULE",
    "for_job",
    "job_from_segment",
    "max_job_id_chars",
    "own_callback",
    "sent_url",
    "url_problem",
]

CALLBACK_PATH = "/v1/callbacks/release"
"""Path of the release-event route of ``dialer serve``; campaign calls get ``DIALER_PUBLIC_URL`` + this."""
MAX_URL_CHARS = 256
"""The seed's limit on ``callBackUrl``; in Base64 mode it applies to the encoded text (4 per 3 bytes)."""
URL_CHARS_RULE = "may contain only a-z A-Z 0-9 and - : . / _ # ? & (cec_07_2802)"
_URL_RE = re.compile(r"https?://[A-Za-z0-9\-.:_]+(?:[/?#][A-Za-z0-9\-:./_#?&]*)?")
_ALLOWED = re.compile(r"[A-Za-z0-9\-:./_#?&]*")


def _encoded_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def url_problem(url: str, *, base64: bool) -> str | None:
    """Why the provider would refuse ``url`` as a callBackUrl (the rule, naming the limit), or None.

    >>> url_problem("http://10.0.0.1:8800/cb", base64=False) is None
    True
    >>> url_problem("http://10.0.0.1:8800/cb?a=1", base64=False)
    'may contain only a-z A-Z 0-9 and - : . / _ # ? & (cec_07_2802)'
    >>> url_problem("http://h/" + "x" * 200, base64=True)
    'is 209 characters, 280 Base64-encoded (DIALER_CALLBACK_URL_BASE64): at most 256 encoded, so 192 before'
    """
    if _ALLOWED.fullmatch(url) is None:
        return URL_CHARS_RULE
    if _URL_RE.fullmatch(url) is None:
        return "must be an http:// or https:// URL with a host"
    if base64:
        encoded = _encoded_len(len(url))
        if encoded > MAX_URL_CHARS:
            return (f"is {len(url)} characters, {encoded} Base64-encoded (DIALER_CALLBACK_URL_BASE64): at most "
                    f"{MAX_URL_CHARS} encoded, so {MAX_URL_CHARS * 3 // 4} before")
    elif len(url) > MAX_URL_CHARS:
        return f"is {len(url)} characters: at most {MAX_URL_CHARS}"
    return None


def own_callback(public_url: str | None) -> str | None:
    """The callBackUrl of ``dialer serve``'s release route (``public_url`` + path), or None without one."""
    return None if public_url is None else public_url + CALLBACK_PATH


def for_job(base: str, job_id: str) -> str:
    """``base`` with ``job_id`` as one more path segment (``@`` written ``&``)."""
    return f"{base}/{job_id.replace('@', '&')}"


def job_from_segment(segment: str) -> str | None:
    """The job id a callback path segment names, or None when it names none."""
    job_id = segment.replace("&", "@")
    return job_id if valid_job_id(job_id) else None


def sent_url(url: str | None, job_id: str, public_url: str | None) -> str | None:
    """The callBackUrl a job's request carries: its own ``url``, with the job id appended when ``url`` is
    the dialer's own callback route (any other URL belongs to the producer and is sent as it is)."""
    if url is not None and public_url is not None and url == public_url + CALLBACK_PATH:
        return for_job(url, job_id)
    return url


def max_job_id_chars(public_url: str, *, base64: bool) -> int:
    """How long a job id may be for the dialer's own callBackUrl with it to fit the provider's limit."""
    base = len(own_callback(public_url) or "") + 1
    room = (MAX_URL_CHARS * 3 // 4 if base64 else MAX_URL_CHARS) - base
    return max(room, 0)
