"""The HTTP API's bodies as pydantic models: they validate requests and generate the OpenAPI document.

Request bodies reuse the seed's :class:`~worker.models.CallRequest` (same names, limits and messages as
the Python API and the CLI); the producer still checks the options (campaign name, ``notBefore`` <
``deadline``, deadline in the future) and the idempotency key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from worker.models import CallRequest

# The producer's rules for these, repeated here only for the document (the producer enforces them).
CAMPAIGN_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"



def _iso_text(v: Any) -> Any:
    # pydantic would also take a number of seconds; the API promises ISO 8601 text only.
    if v is not None and not isinstance(v, str):
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset")
    return v


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]

_CAMPAIGN_DOC = "Campaign name; with no explicit id the job id is `<campaign>:<called>` (one call per number)."
_NOT_BEFORE_DOC = "Do not dial before this time (ISO 8601 with a UTC offset)."
_DEADLINE_DOC = "Give up at this time: the job becomes `expired` and is never dialled (ISO 8601 with offset)."


class CallCreate(CallRequest):
    """Body of ``POST /v1/calls``: the seed's createVoiceNotification body plus scheduling options.

    The idempotency key is the ``Idempotency-Key`` header.
    """

    campaign: str | None = Field(None, description=_CAMPAIGN_DOC, json_schema_extra={"pattern": CAMPAIGN_PATTERN})
    not_before: IsoDatetime | None = Field(None, description=_NOT_BEFORE_DOC)
    deadline: IsoDatetime | None = Field(None, description=_DEADLINE_DOC)

    def seed(self) -> CallRequest:
        """The seed's body alone (what is stored and sent), without validating it again."""
        names = CallRequest.model_fields.keys()
        values = {name: getattr(self, name) for name in names}
        return CallRequest.model_construct(_fields_set=self.model_fields_set & names, **values)


class BatchItem(CallCreate):
    """One item of ``POST /v1/calls:batch``; ``id`` is its idempotency key."""

    id: str | None = Field(
        None, description="Idempotency key (job id); default `<campaign>:<called>` or a new id.",
        json_schema_extra={"pattern": JOB_ID_PATTERN},
    )


class BatchCreate(BaseModel):
    """Body of ``POST /v1/calls:batch``. Options here apply to every item that does not set its own."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    # Items are validated one by one (a bad item is reported, not fatal); the document shows BatchItem.
    items: list[Any] = Field(..., min_length=1, description="The calls, each a BatchItem.")
    campaign: str | None = Field(None, description=_CAMPAIGN_DOC, json_schema_extra={"pattern": CAMPAIGN_PATTERN})
    not_before: IsoDatetime | None = Field(None, description=_NOT_BEFORE_DOC)
    deadline: IsoDatetime | None = Field(None, description=_DEADLINE_DOC)


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
    campaigns: list[dict[str, Any]] = Field(..., description="Campaign progress (filled by the campaigns module).")
