"""One exception hierarchy for everything the dialer raises, so callers catch at the level they care about.

::

    DialerError
    ├── SettingsError          a DIALER_* variable is invalid
    ├── InvalidRequest         input refused; .errors names each field and the rule it broke
    ├── NotReplicated          an enqueue reached the Redis primary but not enough replicas in time:
    │                          not acknowledged (enqueue again with the same ids: nothing is doubled)
    └── ProviderError          a provider call did not succeed
        ├── RetryableError     nothing was created; worth trying again (HTTP 500, retCode 1/3, refused)
        │   └── RetriesExhausted   ... and the attempts/time budget ran out
        ├── AuthError          no access token (tokenByAkSk refused the AK/SK): no call was created
        │   └── AccountError   401/403 again with a fresh token: the service is not purchased or the
        │                      account is wrong (the seed's 401); the fleet pauses, no call was created
        ├── PermanentError     400/404/other retCodes (HTTP 500 with DIALER_PROVIDER_HTTP_500=permanent)
        └── AmbiguousError     the request left but no usable answer came (or a 200 without retCode, or
                               retCode 0 without callSerialNo): the call may exist; .call_serial_no is
                               any serial the answer carried
"""

from __future__ import annotations

from dataclasses import dataclass


class DialerError(Exception):
    """Base of every error raised by voice-dialer."""


class SettingsError(DialerError):
    """A setting is invalid; the message names the ``DIALER_*`` variable."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One refused field: ``field`` is the seed's name with a path (``playList[0].templateParams[1]``)."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidRequest(DialerError):
    """Input refused before anything was stored."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors) or "invalid request")


class NotReplicated(DialerError):
    """Enqueued on the Redis primary, but fewer replicas than DIALER_REDIS_WAIT_REPLICAS acknowledged it
    within DIALER_REDIS_WAIT_TIMEOUT_MS: a failover now could lose it, so it is not acknowledged. The
    jobs may well be stored; enqueueing them again with the same ids is safe (duplicates are answered
    as such), while items without an id would be enqueued anew."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        self.acked, self.wanted, self.timeout_ms = acked, wanted, timeout_ms
        super().__init__(
            f"enqueued on the Redis primary but acknowledged by {acked} of the {wanted} replica(s) required "
            f"(DIALER_REDIS_WAIT_REPLICAS) within {timeout_ms} ms: not acknowledged; enqueue again with the same ids"
        )


class ProviderError(DialerError):
    """A provider call failed. ``status`` is the HTTP status (None when no answer came)."""

    kind = "provider"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        ret_code: str | None = None,
        ret_msg: str | None = None,
    ) -> None:
        self.status = status
        self.ret_code = ret_code
        self.ret_msg = ret_msg
        super().__init__(message)

    def describe(self) -> str:
        """Short, secret-free text for the ledger and dead-letter records."""
        parts = [self.kind, str(self)]
        if self.status is not None:
            parts.append(f"http={self.status}")
        if self.ret_code is not None:
            parts.append(f"retCode={self.ret_code}")
        return " ".join(parts)


class RetryableError(ProviderError):
    kind = "retryable"


class RetriesExhausted(RetryableError):
    kind = "retryable-exhausted"


class AuthError(ProviderError):
    """No call was created for want of access: the job waits (no attempt used, the wait not charged to its
    retry time budget)."""

    kind = "auth"


class AccountError(AuthError):
    """createVoiceNotification answered 401/403 again with a fresh access token. The token is fine; the seed's
    401 says the service is not purchased or the account is wrong. The fleet pauses (see
    :meth:`worker.provider.token.TokenManager.account_refused`) until a request is accepted again."""

    kind = "account"


class PermanentError(ProviderError):
    kind = "permanent"


class AmbiguousError(ProviderError):
    """The call may exist. ``call_serial_no`` is a callSerialNo the answer carried although it was not a
    success (kept on the job, so the call's release event finds it); None when there was none."""

    kind = "ambiguous"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        ret_code: str | None = None,
        ret_msg: str | None = None,
        call_serial_no: str | None = None,
    ) -> None:
        self.call_serial_no = call_serial_no
        super().__init__(message, status=status, ret_code=ret_code, ret_msg=ret_msg)

    def describe(self) -> str:
        text = super().describe()
        return text if self.call_serial_no is None else f"{text} serial={self.call_serial_no}"
