"""``statusCallbackUrl``: where a job's events are POSTed (signed) by ``dialer webhooks``; its rules.

The URL is the dialer's own field, stored on the job's ledger record (``scb``) or on its campaign, and
never sent to the provider (that is ``callBackUrl``, the seed's). It is checked at enqueue, so a URL that
could never be delivered is refused with the field named instead of dead-lettering every event later::

    >>> url_problem("https://hooks.example.com/dialer?tenant=7", allow_private=False) is None
    True
    >>> url_problem("ftp://hooks.example.com/", allow_private=False)
    'must be an http:// or https:// URL'
    >>> url_problem("http://127.0.0.1:9000/hook", allow_private=False)[:60]
    'names a loopback, private or otherwise non-public address (1'
    >>> destination("https://Hooks.Example.com/a/b?c=d")
    'https://hooks.example.com:443'

Why private addresses are refused by default (SSRF): a producer who may enqueue calls could otherwise make
the delivery process POST to anything it can reach (Redis on localhost, a cloud metadata endpoint, an
internal admin API). Only literal addresses (and ``localhost``) can be judged at enqueue; a host name is
judged again when it is resolved for each delivery (``webhooks/delivery.py`` resolves through a filter), so
a name that resolves to a private address, or is re-pointed there later (DNS rebinding), is refused too.
``DIALER_WEBHOOK_ALLOW_PRIVATE=true`` lifts both checks for receivers on the same network (and tests).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = ["MAX_URL_CHARS", "address_allowed", "destination", "url_problem"]

MAX_URL_CHARS = 2048
"""Longest statusCallbackUrl accepted (what browsers and most proxies take)."""
_PRIVATE_RULE = "set DIALER_WEBHOOK_ALLOW_PRIVATE=true to allow it"
_NUMERIC_HOST = re.compile(r"[0-9.]+|0[xX][0-9a-fA-F.xX]*|[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """Whether a delivery may connect to the IP ``address``: a public (global unicast) address, or any
    with ``allow_private``. An IPv4-mapped IPv6 address is judged as its IPv4 address."""
    if allow_private:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def url_problem(url: object, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a statusCallbackUrl (the rule it breaks), or None when it can."""
    if not isinstance(url, str):
        return "must be a string"
    if len(url) > MAX_URL_CHARS:
        return f"is {len(url)} characters: at most {MAX_URL_CHARS}"
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must be ASCII without spaces or control characters (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - ValueError when the port is not a number of 0-65535
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if parts.scheme not in _DEFAULT_PORTS:
        return "must be an http:// or https:// URL"
    host = parts.hostname
    if not host:
        return "must name a host (https://host/path)"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password: the signature authenticates each delivery"
    if parts.port == 0:
        return "must not use port 0"
    if parts.fragment:
        return "must not have a #fragment (it is never sent)"
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return f"names this machine ({host}); {_PRIVATE_RULE}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if _NUMERIC_HOST.fullmatch(host):
            return f"has a numeric host that is not a dotted IPv4 address ({host}); write the address in full"
        return None  # a name: judged when it is resolved, at each delivery
    if not address_allowed(host, allow_private=False):
        return f"names a loopback, private or otherwise non-public address ({host}); {_PRIVATE_RULE}"
    return None


def destination(url: str) -> str:
    """The receiver a URL delivers to, ``scheme://host:port`` in lower case: the unit of the per-destination
    concurrency limit (``DIALER_WEBHOOK_MAX_PER_DESTINATION``)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    return f"{scheme}://{host}:{parts.port or _DEFAULT_PORTS.get(scheme, 0)}"
