"""The HTTP API's bodies as pydantic models: they validate requests and generate the OpenAPI document.

Request bodies reuse the seed's :class:`~worker.models.CallRequest` (same names, limits and messages as
the Python API and the CLI); the producer still checks the options (campaign name, ``notBefore`` <
``deadline``, deadline in the future) and the idempotency key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, RootModel
from pydantic.alias_generators import to_camel

from worker.models import CallRequest, ReleaseEvent
from worker.rules import CAMPAIGN_PATTERN, PRODUCER_ID_PATTERN


def _iso_text(v: Any) -> Any:
    # pydantic would also take a number of seconds; the API promises ISO 8601 text only.
    if v is not None and not isinstance(v, str):
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset")
    return v


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]

_CAMPAIGN_DOC = "Campaign name; with no explicit id the job id is `<campaign>:<number>` (one call per number)."
_NOT_BEFORE_DOC = "Do not dial before this time (ISO 8601 with a UTC offset)."
_DEADLINE_DOC = "Give up at this time: the job becomes `expired` and is never dialled (ISO 8601 with offset)."
_STATUS_CALLBACK_DOC = (
    "Where `dialer webhooks` POSTs this job's events (queued, sent, outcome, ...), signed (docs/webhooks.md): "
    "http(s), at most 2048 characters, no private or loopback address unless DIALER_WEBHOOK_ALLOW_PRIVATE. The "
    "dialer's own field: never sent to the provider. Default: the campaign's, if any."
)


class CallCreate(CallRequest):
    """Body of ``POST /v1/calls``: the seed's createVoiceNotification body plus scheduling options.

    The idempotency key is the ``Idempotency-Key`` header.
    """

    campaign: str | None = Field(None, description=_CAMPAIGN_DOC, json_schema_extra={"pattern": CAMPAIGN_PATTERN})
    not_before: IsoDatetime | None = Field(None, description=_NOT_BEFORE_DOC)
    deadline: IsoDatetime | None = Field(None, description=_DEADLINE_DOC)
    status_callback_url: str | None = Field(None, description=_STATUS_CALLBACK_DOC, max_length=2048,
                                            json_schema_extra={"format": "uri"})

    def seed(self) -> CallRequest:
        """The seed's body alone (what is stored and sent), without validating it again."""
        names = CallRequest.model_fields.keys()
        values = {name: getattr(self, name) for name in names}
        return CallRequest.model_construct(_fields_set=self.model_fields_set & names, **values)


class BatchItem(CallCreate):
    """One item of ``POST /v1/calls:batch``; ``id`` is its idempotency key."""

    id: str | None = Field(
        None, description="Idempotency key (job id), without ':' (ids with ':' are the dialer's own: "
        "`<campaign>:<number>`, `<id>:r<k>`); default `<campaign>:<number>` or a new id.",
        json_schema_extra={"pattern": PRODUCER_ID_PATTERN},
    )


class BatchCreate(BaseModel):
    """Body of ``POST /v1/calls:batch``. Options here apply to every item that does not set its own."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    # Items are validated one by one (a bad item is reported, not fatal); the document shows BatchItem.
    items: list[Any] = Field(..., min_length=1, description="The calls, each a BatchItem.")
    campaign: str | None = Field(None, description=_CAMPAIGN_DOC, json_schema_extra={"pattern": CAMPAIGN_PATTERN})
    not_before: IsoDatetime | None = Field(None, description=_NOT_BEFORE_DOC)
    deadline: IsoDatetime | None = Field(None, description=_DEADLINE_DOC)
    status_callback_url: str | None = Field(None, description=_STATUS_CALLBACK_DOC, max_length=2048,
                                            json_schema_extra={"format": "uri"})


# --- replies ---------------------------------------------------------------------------------------


class FieldErrorView(BaseModel):
    field: str = Field(..., description="The refused field, with its path: `playList[0].templateParams[1]`.")
    rule: str = Field(..., description="The rule it broke.")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Stable machine-readable code, e.g. `validation_failed`.")
    message: str
    fields: list[FieldErrorView]


class ErrorBody(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class JobView(BaseModel):
    """A job's ledger record (the same JSON as ``dialer job``). Times are ISO 8601 UTC or null."""

    model_config = ConfigDict(extra="allow")

    id: str
    state: str = Field(..., description="queued, sending, sent, failed, dead, unknown, cancelled, expired, suppressed")
    priority: int
    called: str
    campaign: str | None
    attempts: int
    last_error: str | None
    call_serial_no: str | None
    created_at: str | None
    updated_at: str | None
    sent_at: str | None
    not_before: str | None
    deadline: str | None
    body: dict[str, Any] = Field(..., description="The createVoiceNotification body as stored.")
    outcome: str | None = Field(None, description="From the result callback: answered, unanswered, "
                                "failed_to_connect; null until it arrives.")
    release_reason: str | None = Field(None, description="The callback's releaseReason.")
    talk_duration_s: int | None = Field(None, description="The callback's talkDuration.")
    redial_of: str | None = Field(None, description="For a redial: the first job of its number.")
    redials: list[str] = Field(default_factory=list, description="For a first call: its redials' ids, in order.")
    evidence: Literal["release", "none"] | None = Field(
        None, description="`release`: the provider's release event proved a call the ledger had as unknown (or "
        "pending); `none`: an unknown call got no release event within DIALER_UNKNOWN_GRACE_S.")
    grace_redialled: bool = Field(
        False, description="Redialled once after its grace period (DIALER_REDIAL_AMBIGUOUS=after-grace).")
    status_callback_url: str | None = Field(
        None, description="The job's own statusCallbackUrl (null: none, or its campaign's is used).")


class EnqueueReply(BaseModel):
    """``accepted`` (202): a new job. ``duplicate`` (200): the key was used before for this same call."""

    id: str
    status: Literal["accepted", "duplicate"]
    state: str
    job: JobView


class BatchItemResult(BaseModel):
    index: int = Field(..., description="Position of the item in `items`, from 0.")
    status: Literal["accepted", "duplicate", "conflict", "rejected"] = Field(
        ..., description="conflict: the id exists with a different call; rejected: see errors. "
        "Nothing is stored for conflict and rejected items."
    )
    id: str | None
    state: str | None = Field(..., description="The job's ledger state (null when rejected).")
    errors: list[FieldErrorView]


class BatchReply(BaseModel):
    results: list[BatchItemResult]
    accepted: int
    duplicate: int
    conflict: int
    rejected: int


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "unready"]
    checks: dict[str, str] = Field(..., description="Each check: `ok` or why it failed.")


# --- campaigns -------------------------------------------------------------------------------------

_NAME_DOC = "Campaign name: 1-64 characters of A-Z a-z 0-9 . _ - (part of its job ids: `<name>:<number>`)."


class CampaignOptions(BaseModel):
    """The options of ``dialer campaign launch``, with the API's names. In a JSON body they sit next to
    ``rows``; with a CSV or JSONL upload they are query parameters."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(..., description=_NAME_DOC, json_schema_extra={"pattern": CAMPAIGN_PATTERN})
    priority: int | None = Field(None, ge=1, le=9, description="Priority of rows without one, 1..9.")
    voice_id: str | None = Field(None, description="Default recording ID.")
    template_id: str | None = Field(None, description="Default TTS template ID.")
    voice_file_name: str | None = Field(None, description="Default recording file name.")
    template_params: list[str] | None = Field(None, description="Default template parameters, in order.")
    caller_present: str | None = Field(None, description="Default number shown to the callee.")
    play_times: int | None = Field(None, ge=1, le=5, description="Default times the message plays.")
    rate: float | None = Field(None, gt=0, lt=1e6, description="Calls/s for this campaign, under the fleet limit.")
    window: str | None = Field(None, description="Calling window, HH:MM-HH:MM in the callees' time zone.")
    days: str | None = Field(None, description="Weekdays the window opens: mon-fri, sat,sun, all ...")
    timezone: str | None = Field(None, description="IANA time zone of the callees (required with window/days), "
                                 "or `auto`: each number's own zone, derived from the number (docs/campaigns.md).")
    default_timezone: str | None = Field(None, description="With timezone `auto`: the zone of numbers that map to "
                                         "several zones or none (without it such a row is rejected when a window "
                                         "is set).")
    deadline: str | None = Field(None, description="ISO 8601 time after which unsent calls expire.")
    redial: int | None = Field(None, ge=1, le=10, description="Redial unanswered calls (releaseReason 4, 6, 8, "
                               "9) up to this many times; needs DIALER_PUBLIC_URL.")
    redial_after: str | None = Field(None, description="Delay before each redial: 30m (default), 90s, 2h, 1h30m.")
    status_callback_url: str | None = Field(
        None, max_length=2048, json_schema_extra={"format": "uri"},
        description="Where `dialer webhooks` POSTs the events of the campaign's jobs (rows without their own "
        "`statusCallbackUrl`), signed (docs/webhooks.md); never sent to the provider.")
    dry_run: bool = Field(False, description="Validate and report only; store nothing.")
    strict: bool = Field(False, description="All or nothing: a rejected row refuses the launch (422).")


class CampaignCreate(CampaignOptions):
    """Body of ``POST /v1/campaigns`` as JSON: the options and the rows."""

    rows: list[dict[str, Any]] = Field(
        ..., min_length=1, description="The calls: each a createVoiceNotification body (fields it leaves out "
        "come from the options) plus optional `id` (idempotency key) and `timezone`. Rows are validated one by "
        "one: a bad row is reported (or, with strict, refuses the launch), it does not fail the request.",
    )


class RejectedRow(BaseModel):
    line: int = Field(..., description="Line of the file (header = line 1), or the row's position in `rows` from 1.")
    field: str
    rule: str


class LaunchReply(BaseModel):
    """What a launch did (the JSON of ``dialer campaign launch --json``)."""

    campaign: str
    file: str
    rows: int
    valid: int
    rejected_rows: int
    rejected: list[RejectedRow]
    duplicates_in_file: int
    suppressed: int
    enqueued: int
    already_enqueued: int
    dry_run: bool
    strict_refused: bool
    nothing_valid: bool = Field(..., description="No row was valid: nothing stored, the campaign not created "
                                "(a launch answers 422 `no_valid_rows` then; a dry run reports it).")
    campaign_created: bool
    seconds: float
    zones: dict[str, int] = Field(default_factory=dict, description="Valid rows per IANA zone their calling "
                                  "window is applied in (a row's own, the one `auto` derived, else the campaign's).")
    zone_defaulted: int = Field(0, description="With timezone `auto`: valid rows given defaultTimezone because "
                                "their number maps to several zones or none.")


class CampaignSettingsView(BaseModel):
    priority: int | None
    rate: float | None
    window: str | None
    days: str | None
    timezone: str | None
    deadline: str | None
    defaults: dict[str, Any]
    callback_url: str | None
    redial: dict[str, Any] | None = Field(..., description='`{"max": N, "after_s": seconds}` or null.')
    status_callback_url: str | None = Field(None, description="Where the campaign's events are POSTed "
                                            "(`dialer webhooks`), or null.")


class CampaignStatus(BaseModel):
    """A campaign's status (the JSON of ``dialer campaign status --json``)."""

    name: str
    status: Literal["active", "paused", "cancelled"]
    created_at: str | None
    settings: CampaignSettingsView
    total: int = Field(..., description="Numbers and jobs in the campaign, redials included: pending + the states.")
    pending: int = Field(..., description="Rows launched and stored compactly, not yet made jobs (the hopper "
                         "makes them jobs a window ahead of the senders).")
    states: dict[str, int] = Field(..., description="Jobs per ledger state; with pending they sum to total.")
    parked: int = Field(..., description="Queued jobs held by a pause.")
    outcomes: dict[str, int] = Field(..., description="Result callbacks: answered, unanswered, failed_to_connect.")
    redials: int = Field(..., description="Redial jobs made (counted in total).")
    unknown: dict[str, int] = Field(
        ..., description="What became of unknown outcomes: `resolved_by_event` (a release event proved the call; "
        "the job is sent now), `no_evidence` (no event within DIALER_UNKNOWN_GRACE_S; a later event still counts "
        "in resolved_by_event).")
    remaining: int = Field(..., description="pending + queued + sending.")
    send_rate_per_s: float
    eta_s: int | None
    as_of: str


class CampaignList(RootModel[list[CampaignStatus]]):
    """Every campaign's status, oldest first (the JSON of ``dialer campaign list --json``)."""


class CampaignAction(BaseModel):
    """The answer to pause, resume or cancel: the status before, what moved, and the status now."""

    action: Literal["pause", "resume", "cancel"]
    previous: str = Field(..., description="The campaign's status before (active, paused, cancelled).")
    moved: int | None = Field(..., description="resume: parked jobs put back on their queues.")
    left: int | None = Field(..., description="resume: jobs still parked (their runs were finishing): resume again.")
    cancelled: int | None = Field(..., description="cancel: jobs of the campaign now cancelled.")
    campaign: CampaignStatus


class CampaignDeleted(BaseModel):
    """The answer to ``DELETE /v1/campaigns/{name}``."""

    deleted: str = Field(..., description="The campaign's name, free to be launched again.")


# --- result callbacks ------------------------------------------------------------------------------


class ReleaseCallback(ReleaseEvent):
    """The provider's release event (provider-api.md §3); every value is a string. ``signature``,
    ``timestamp`` and ``nonce`` are checked when ``DIALER_CALLBACK_SHARED_KEY`` is set."""

    release_reason: str = Field(..., alias="releaseReason", min_length=1,
                                description="0/1 answered, 4 unanswered, 6/8/9/10/999 failed to connect.")


class CallbackReply(BaseModel):
    retCode: Literal["0"]  # the provider's wire names
    retMsg: str


# --- dashboard -------------------------------------------------------------------------------------


class QueueView(BaseModel):
    priority: int
    depth: int = Field(..., description="Jobs on the queue, due or deferred.")
    ready: int = Field(..., description="Jobs due now.")
    worker: bool = Field(..., description="A live worker serves this queue (arq heartbeat).")


class RateView(BaseModel):
    limit: float = Field(..., description="DIALER_RATE_LIMIT (0 = none).")
    window_s: int
    start: int = Field(..., description="Unix second of the first point.")
    attempts: list[int] = Field(..., description="Provider requests in each second.")
    sent: list[int] = Field(..., description="Calls created in each second.")


class InFlightView(BaseModel):
    held: int
    cap: int


class ErrorsView(BaseModel):
    window_s: int
    by_kind: dict[str, int] = Field(..., description="Failed attempts in the window by kind.")
    dead_total: int
    dead_by_kind: dict[str, int] = Field(..., description="The most recent dead letters, by kind.")


class TokenView(BaseModel):
    present: bool
    age_s: float | None
    expires_in_s: float | None


class DashboardData(BaseModel):
    now: float = Field(..., description="Redis server time, Unix seconds.")
    role: str
    queues: list[QueueView]
    rate: RateView
    in_flight: InFlightView
    errors: ErrorsView
    token: TokenView
    campaigns: list[CampaignStatus] = Field(
        ..., description="Progress of the newest campaigns, oldest first (filled by the campaigns module)."
    )
