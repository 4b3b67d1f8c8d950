"""API keys: ``Authorization: Bearer <key>`` for the API, a session cookie for the dashboard.

* ``DIALER_API_KEYS`` (several allowed, for rotation) may do everything; ``DIALER_DASHBOARD_KEY`` is
  read-only: it can view the dashboard, nothing else (403 elsewhere).
* A presented key is compared with every configured key by ``hmac.compare_digest``, all of them every
  time, so timing tells neither the key nor which one matched.
* The dashboard logs in with a form (or ``/?key=...``, which redirects to ``/`` at once so the key does not
  stay in the address bar or history). The cookie ``dialer_session`` never holds the key: it is
  ``<issued unix time>.<nonce>.<HMAC-SHA256(key, "dialer-session:" + issued time + "." + nonce)>`` (the
  random nonce makes each login's session its own, so a logout ends that one only), HttpOnly, SameSite=Strict,
  valid 12 h, Secure when the request came over HTTPS or ``DIALER_PUBLIC_URL`` is https, and only as
  good as the key that made it (rotate the key to revoke every session). Logout ends the session on the
  server too: the cookie's digest is kept in Redis for the rest of its life and refused from then on, on
  every replica, even if a copy of the cookie is replayed.
* API routes take the cookie only together with the header ``X-Requested-With: dialer-dashboard``,
  which a cross-site form cannot send, so the dashboard's own buttons work and CSRF does not.

Logs and metrics name a key by its ``key_id`` (first 8 hex digits of its SHA-256), never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import Enum

from aiohttp import web
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.http.errors import ApiError
from worker.http.routing import Access
from worker.rules import ascii_int
from worker.settings import Settings
from worker.store.keys import Keys

COOKIE = "dialer_session"
SESSION_TTL_S = 12 * 3600
DASHBOARD_HEADER = ("X-Requested-With", "dialer-dashboard")
_SESSION_CONTEXT = b"dialer-session:"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dialer"'}


class Role(Enum):
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Identity:
    """Who made a request: ``role``, a non-secret ``key_id``, and how (``bearer``, ``cookie``, ``none``)."""

    role: Role
    key_id: str
    via: str


ANONYMOUS_ADMIN = Identity(Role.ADMIN, "no-auth", "none")


def key_id(key: SecretStr) -> str:
    return hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:8]


@dataclass(frozen=True)
class _Key:
    secret: bytes
    role: Role
    key_id: str


class Authenticator:
    """Checks keys and session cookies. ``insecure=True`` (``--insecure-no-auth``) lets everyone in."""

    def __init__(self, settings: Settings, *, insecure: bool = False, redis: Redis | None = None) -> None:
        self._redis = redis  # where logged-out sessions are remembered (None: logout only clears the cookie)
        self._redis_keys = Keys(settings.key_prefix)
        keys = [_Key(k.get_secret_value().encode(), Role.ADMIN, key_id(k)) for k in settings.api_keys]
        if settings.dashboard_key is not None:
            dk = settings.dashboard_key
            keys.append(_Key(dk.get_secret_value().encode(), Role.VIEWER, key_id(dk)))
        self._keys = tuple(keys)
        self.insecure = insecure
        # Behind a TLS-terminating proxy the request itself looks like plain HTTP.
        self._https = (settings.public_url or "").startswith("https://")

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def check_key(self, presented: str) -> Identity | None:
        """The identity of a presented key, or None."""
        raw = presented.encode("utf-8", "surrogateescape")
        found: _Key | None = None
        for key in self._keys:  # no early exit: every key is compared every time
            if hmac.compare_digest(raw, key.secret) and found is None:
                found = key
        return None if found is None else Identity(found.role, found.key_id, "bearer")

    def bearer(self, request: web.Request) -> Identity | None:
        """The identity from ``Authorization: Bearer``; None when the header is absent; 401 when wrong."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "Use Authorization: Bearer <key>.", headers=_CHALLENGE)
        identity = self.check_key(value.strip())
        if identity is None:
            raise ApiError(401, "Unknown API key.", headers=_CHALLENGE)
        return identity

    # --- dashboard session ---------------------------------------------------------------------

    def session_value(self, identity_key: str, now: float | None = None) -> str:
        """A session cookie value for a key that :meth:`check_key` accepted."""
        issued = str(int(time.time() if now is None else now)) + "." + secrets.token_hex(8)
        return issued + "." + _mac(identity_key.encode("utf-8", "surrogateescape"), issued)

    def from_session(self, value: str, now: float | None = None) -> Identity | None:
        issued, _, mac = value.rpartition(".")  # issued = "<unix time>.<nonce>"
        when, _, nonce = issued.partition(".")
        stamp = ascii_int(when)  # str.isdigit() took "²", which int() then refused with a 500
        if stamp is None or len(when) > 12 or not mac or not (0 < len(nonce) <= 32 and nonce.isascii()):
            return None
        age = (time.time() if now is None else now) - stamp
        if not (-60 <= age <= SESSION_TTL_S):
            return None
        found: _Key | None = None
        for key in self._keys:
            if hmac.compare_digest(mac.encode(), _mac(key.secret, issued).encode()) and found is None:
                found = key
        return None if found is None else Identity(found.role, found.key_id, "cookie")

    def set_session(self, response: web.StreamResponse, request: web.Request, key: str) -> None:
        response.set_cookie(
            COOKIE, self.session_value(key), max_age=SESSION_TTL_S, path="/", httponly=True,
            samesite="Strict", secure=request.secure or self._https,
        )

    @staticmethod
    def clear_session(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")

    def _revoked_key(self, value: str) -> str:
        return self._redis_keys.session_revoked(hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest())

    async def end_session(self, request: web.Request) -> None:
        """Logout: the request's session cookie (if valid) is refused from now on, on every replica."""
        value = request.cookies.get(COOKIE)
        if self._redis is None or not value or self.from_session(value) is None:
            return
        issued = ascii_int(value.partition(".")[0]) or 0
        remaining_ms = int((issued + SESSION_TTL_S + 60 - time.time()) * 1000)
        if remaining_ms > 0:
            await self._redis.set(self._revoked_key(value), "1", px=remaining_ms)

    async def session_live(self, request: web.Request, identity: Identity | None) -> bool:
        """False when ``identity`` came from a session cookie that was logged out. Redis unreachable:
        refused too (fail closed; the API key still works)."""
        if identity is None or identity.via != "cookie" or self._redis is None:
            return True
        value = request.cookies.get(COOKIE, "")
        try:
            return not await self._redis.exists(self._revoked_key(value))
        except (RedisError, OSError):
            return False

    # --- per-route check -----------------------------------------------------------------------

    def identify(self, request: web.Request, *, cookie: bool) -> Identity | None:
        """Who is calling, from the bearer header or (if ``cookie``) the session; None if neither."""
        if self.insecure:
            return ANONYMOUS_ADMIN
        identity = self.bearer(request)
        if identity is None and cookie and (value := request.cookies.get(COOKIE)):
            identity = self.from_session(value)
            if identity is None:
                raise ApiError(401, "The dashboard session has expired; log in again.", headers=_CHALLENGE)
        return identity

    def authorize(self, request: web.Request, access: Access) -> Identity | None:
        """Enforce ``access`` for this request (401 no or bad key, 403 read-only key); the identity."""
        if access is Access.OPEN:
            return None
        name, value = DASHBOARD_HEADER
        cookie = access is Access.VIEW or request.headers.get(name) == value
        identity = self.identify(request, cookie=cookie)
        if identity is None:
            raise ApiError(401, headers=_CHALLENGE)
        if access is Access.API and identity.role is not Role.ADMIN:
            raise ApiError(403, "The dashboard key is read-only; use an API key.")
        return identity


def _mac(secret: bytes, issued: str) -> str:
    return hmac.new(secret, _SESSION_CONTEXT + issued.encode(), hashlib.sha256).hexdigest()
