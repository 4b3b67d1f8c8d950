"""The states of a ledger record and of a sent call's outcome."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINAL_STATES", "OUTCOMES", "STALE_ERROR", "State"]

STALE_ERROR = "worker died mid-request"

OUTCOMES = ("answered", "unanswered", "failed_to_connect")
"""Outcomes of a sent call, from its result callback; each is also a campaign counter."""

class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"


FINAL_STATES: frozenset[State] = frozenset(State) - {State.QUEUED, State.SENDING}
