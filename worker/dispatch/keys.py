"""Names of every Redis key the dialer owns, in one place so producers in any language can match them.

All keys start with ``settings.key_prefix`` (default ``dialer:``), except arq's own job keys
(``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:retry:<id>``, ``arq:result:<id>``), which arq fixes.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

PRIORITY_LEVELS = range(1, 10)
DIAL_FUNCTION = "dial"

__all__ = [
    "DIAL_FUNCTION",
    "PRIORITY_LEVELS",
    "Keys",
    "in_progress_key_prefix",
    "job_key_prefix",
    "result_key_prefix",
    "retry_key_prefix",
]


class Keys:
    """Key builder for one prefix. ``Keys("dialer:").queue(1) == "dialer:queue:1"``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def queue(self, priority: int) -> str:
        """arq queue (sorted set scored by run-at ms) of one priority level."""
        return f"{self.prefix}queue:{priority}"

    def job(self, job_id: str) -> str:
        """Ledger record (hash) of one job."""
        return f"{self.prefix}job:{job_id}"

    def arq_job(self, job_id: str) -> str:
        return job_key_prefix + job_id

    def serial(self, call_serial_no: str) -> str:
        """callSerialNo -> job id, for the callback receiver."""
        return f"{self.prefix}serial:{call_serial_no}"

    @property
    def dead(self) -> str:
        """Dead-letter set: job ids scored by the time they died."""
        return f"{self.prefix}dead"

    @property
    def token(self) -> str:
        return f"{self.prefix}token"

    @property
    def token_lock(self) -> str:
        return f"{self.prefix}token:lock"

    def rate(self, name: str) -> str:
        """GCRA state (theoretical arrival time) of one limit: "global" or "campaign:<name>"."""
        return f"{self.prefix}rl:{name}"

    @property
    def in_flight(self) -> str:
        """Sorted set of in-flight leases scored by their expiry."""
        return f"{self.prefix}inflight"
