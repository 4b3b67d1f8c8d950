"""Names of every Redis key the dialer owns, in one place so producers in any language can match them.

All keys start with ``settings.key_prefix`` (default ``dialer:``), except arq's own job keys
(``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:retry:<id>``, ``arq:result:<id>``), which arq fixes.

The ledger scripts derive a job's campaign keys, queue and suppression keys from the prefix and the
job's record (a campaign's counters are found from the job alone, e.g. by the callback receiver), so
they assume one Redis instance, as arq does; the formats here and in ``ledger/*.lua`` and
``campaigns/*.lua`` must stay in step (``tests/store/test_scripts.py`` checks each script).
"""

from __future__ import annotations

# The queue engine's own per-job keys (arq 0.28's, which it fixes). Only the engine seam
# (worker/dispatch/engine.py) runs arq, but the ledger's requeue and a campaign's resume and cancel
# move a job's engine keys in the same atomic script as its record, so they need the names; the
# seam's contract test holds these equal to arq's own constants.
job_key_prefix = "arq:job:"
in_progress_key_prefix = "arq:in-progress:"
retry_key_prefix = "arq:retry:"
result_key_prefix = "arq:result:"

__all__ = [
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

    def queue_health(self, priority: int) -> str:
        """The heartbeat a live worker of that queue refreshes every few seconds (arq's health check)."""
        return f"{self.prefix}queue:{priority}:health-check"

    def job(self, job_id: str) -> str:
        """Ledger record (hash) of one job."""
        return f"{self.prefix}job:{job_id}"

    def arq_job(self, job_id: str) -> str:
        """arq's job of one job id (a string, arq's JSON job). Not written at enqueue: the worker's claim
        (``dispatch/claim.lua``) writes it when it starts the job, and arq deletes it when the run ends."""
        return job_key_prefix + job_id

    def serial(self, call_serial_no: str) -> str:
        """callSerialNo -> job id, for the callback receiver."""
        return f"{self.prefix}serial:{call_serial_no}"

    @property
    def wake(self) -> str:
        """Pub/sub channel: enqueue.lua publishes a queue's key when it stores a job due now on it, and
        that queue's workers poll at once instead of at their next poll."""
        return f"{self.prefix}wake"

    @property
    def seq(self) -> str:
        """Enqueue sequence counter: breaks ties between jobs enqueued in the same millisecond."""
        return f"{self.prefix}seq"

    @property
    def dead(self) -> str:
        """Dead-letter set: job ids scored by the time they died."""
        return f"{self.prefix}dead"

    @property
    def events(self) -> str:
        """The event stream: one entry per ledger transition a producer cares about (``ledger/events.lua``)."""
        return f"{self.prefix}events"

    @property
    def unknown(self) -> str:
        """Jobs whose outcome became ``unknown``, scored by when (ms): each waits there for the provider's
        release event, until its grace period ends (``ledger/unknowns.py``)."""
        return f"{self.prefix}unknown"

    @property
    def token(self) -> str:
        return f"{self.prefix}token"

    @property
    def token_lock(self) -> str:
        return f"{self.prefix}token:lock"

    def session_revoked(self, digest: str) -> str:
        """A dashboard session ended by logout (``digest``: SHA-256 of the cookie), kept for its remaining life."""
        return f"{self.prefix}session:revoked:{digest}"

    @property
    def token_refused(self) -> str:
        """The fleet's pause while tokenByAkSk refuses the AK/SK: JSON {"until": ms, "step": s}, with a TTL."""
        return f"{self.prefix}token:refused"

    @property
    def account_refused(self) -> str:
        """The fleet's pause while createVoiceNotification answers 401/403 even with a fresh access token (the
        service not purchased, or the account wrong): JSON {"until": ms, "step": s}, with a TTL. Not ended by
        a new token; ended by the next accepted request (``provider/token_account.lua``)."""
        return f"{self.prefix}account:refused"

    def rate(self, name: str) -> str:
        """GCRA state (theoretical arrival time) of one limit: "global" or "campaign:<name>"."""
        return f"{self.prefix}rl:{name}"

    @property
    def in_flight(self) -> str:
        """Sorted set of in-flight leases scored by their expiry."""
        return f"{self.prefix}inflight"

    # --- campaigns (worker/campaigns) ---------------------------------------------------------------

    @property
    def campaigns(self) -> str:
        """Index of campaigns: sorted set of names scored by creation time (ms)."""
        return f"{self.prefix}campaigns"

    def campaign(self, name: str) -> str:
        """A campaign's configuration and state (hash): status, created, rate, window, pace, ..."""
        return f"{self.prefix}campaign:{name}"

    def campaign_counts(self, name: str) -> str:
        """Exact per-state and per-outcome job counts of a campaign (hash), kept by the ledger scripts."""
        return f"{self.prefix}campaign:{name}:counts"

    def campaign_jobs(self, name: str) -> str:
        """Every job id of a campaign, in enqueue order (list)."""
        return f"{self.prefix}campaign:{name}:jobs"

    def campaign_parked(self, name: str) -> str:
        """Jobs held by a pause (sorted set scored by their queue score, so resume keeps their order)."""
        return f"{self.prefix}campaign:{name}:parked"

    def campaign_sent(self, name: str) -> str:
        """Calls sent per second over the last two minutes (hash ring: second % 120 -> "second:count")."""
        return f"{self.prefix}campaign:{name}:sent"

    def campaign_window_slots(self, name: str) -> str:
        """Next free send slot per (window opening, priority) for jobs deferred to an opening (hash)."""
        return f"{self.prefix}campaign:{name}:wz"

    def campaign_rows(self, name: str) -> str:
        """A campaign's rows not yet materialised as jobs, in launch order (list of chunk blobs, RPUSHed by the
        launcher; format in ``worker/campaigns/rows.py``)."""
        return f"{self.prefix}campaign:{name}:rows"

    def campaign_rows_taken(self, name: str) -> str:
        """Chunks a hopper has taken from ``campaign_rows`` and not yet finished (crash recovery; see
        ``worker/campaigns/hopper.py``)."""
        return f"{self.prefix}campaign:{name}:rows:taken"

    def campaign_numbers(self, name: str, bucket: int | str) -> str:
        """One bucket of a campaign's number set (small hash kept listpack-encoded: member -> short status;
        members and buckets in ``worker/campaigns/rows.py``, ``campaigns/number_set.lua``)."""
        return f"{self.prefix}campaign:{name}:n:{bucket}"

    # --- webhooks (worker/webhooks; the Lua there builds the same names from the prefix) ---------------

    def webhook_queue(self, job_id: str) -> str:
        """A job's undelivered events, oldest first (list; each entry ``dest \\x1f id \\x1f url \\x1f body``)."""
        return f"{self.prefix}webhooks:q:{job_id}"

    def webhook_due(self, destination: str) -> str:
        """Jobs whose next event waits for a receiver (``scheme://host:port``), scored by when it is due (ms)."""
        return f"{self.prefix}webhooks:due:{destination}"

    def webhook_busy(self, destination: str) -> str:
        """Jobs whose next event is being POSTed to a receiver, scored by when that lease expires (ms)."""
        return f"{self.prefix}webhooks:busy:{destination}"

    @property
    def webhook_destinations(self) -> str:
        """Receivers with events to deliver, scored by when a delivery process should look at them next."""
        return f"{self.prefix}webhooks:dests"

    @property
    def webhook_tries(self) -> str:
        """job id -> ``<failed attempts>:<first attempt ms>`` of its next event (hash; absent: none yet)."""
        return f"{self.prefix}webhooks:tries"

    @property
    def webhook_dead(self) -> str:
        """Dead-lettered webhooks: event id -> JSON (job, entry, reason, attempts) (hash)."""
        return f"{self.prefix}webhooks:dead"

    @property
    def webhook_dead_ids(self) -> str:
        """Dead-lettered webhooks' event ids, scored by when they died (ms)."""
        return f"{self.prefix}webhooks:dead:ids"

    @property
    def webhook_intake(self) -> str:
        """Lock of the one delivery process that moves events from the stream's group to the job queues."""
        return f"{self.prefix}webhooks:intake"

    def webhook_alive(self, consumer: str) -> str:
        """Heartbeat of one ``dialer webhooks`` process (``<host>:<pid>``), with a TTL."""
        return f"{self.prefix}webhooks:alive:{consumer}"

    @property
    def suppress(self) -> str:
        """Do-not-call set of normalized numbers, fleet-wide (see campaigns.suppression.normalize_number)."""
        return f"{self.prefix}suppress"

    def number_calls(self, number: str) -> str:
        """Calls made to one normalized number within the per-number cap window (sorted set job id -> ms)."""
        return f"{self.prefix}calls:{number}"
