"""The seed's createVoiceNotification V2 body, its response, and the release-event callback.

Python names are snake_case; the wire names (and every error message) use the seed's names::

    >>> req = CallRequest.model_validate({"called": "8899", "playList": [{"voiceId": "100001"}]})
    >>> req.body()
    {'called': '8899', 'playList': [{'voiceId': '100001'}]}
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from worker.errors import FieldError, InvalidRequest

CALLED_RE = re.compile(r"(?:\+[0-9]{1,31}|[0-9]{1,32})")
"""``called`` (used with ``fullmatch``): digits with an optional leading '+', at most 32 characters in all
(the seed's ``string(32)``: 32 digits, or '+' and 31). The pattern says the length itself, so the OpenAPI
document's ``pattern`` (``^...$``) holds without ``maxLength``."""
CALLBACK_URL_RE = re.compile(r"https?://[^/\s]+(?:/\S*)?")
FORBIDDEN_PARAM_CHARS = frozenset("${}")
SOURCE_RULE = "needs exactly one of voiceId, voiceFileName, templateId"
"""The rule a ``playList`` item breaks with none or several sources (the error names the item: ``playList[0]``)."""
PRIORITIES = tuple(str(p) for p in range(1, 10))
DEFAULT_PRIORITY = "9"


class _SeedModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


def _check_param(p: str) -> str:
    if len(p.encode()) > 32:
        raise ValueError("is over 32 bytes (UTF-8)")
    if FORBIDDEN_PARAM_CHARS & set(p):
        raise ValueError("may not contain '$', '{' or '}' (retCode 14)")
    return p


TemplateParam = Annotated[str, Field(min_length=1), AfterValidator(_check_param)]


class PlayItem(_SeedModel):
    """One entry of ``playList``: exactly one of voiceId, voiceFileName, templateId (the sound it plays; an
    item naming several is ambiguous, and the provider refuses it)."""

    voice_id: str | None = Field(None, min_length=1, max_length=64)
    voice_file_name: str | None = Field(None, min_length=1, max_length=256)
    template_id: str | None = Field(None, min_length=1, max_length=64)
    template_params: list[TemplateParam] | None = Field(None, min_length=1, max_length=10)

    @model_validator(mode="after")
    def _one_source(self) -> PlayItem:
        given = [v for v in (self.voice_id, self.voice_file_name, self.template_id) if v is not None]
        if len(given) != 1:
            raise ValueError(SOURCE_RULE)
        return self


class CallRequest(_SeedModel):
    """The body of createVoiceNotification V2, with every limit of the seed's table."""

    called: str = Field(..., min_length=1, max_length=32)
    play_list: list[PlayItem] = Field(..., min_length=1, max_length=5)
    call_back_url: str | None = Field(None, min_length=1, max_length=256)
    caller_present: str | None = Field(None, min_length=1, max_length=32)
    play_times: StrictInt | None = Field(None, ge=1, le=5)
    priority: str = Field(DEFAULT_PRIORITY)

    @field_validator("called")
    @classmethod
    def _called(cls, v: str) -> str:
        if not CALLED_RE.fullmatch(v):
            raise ValueError("must be digits with an optional leading '+'")
        return v

    @field_validator("call_back_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not CALLBACK_URL_RE.fullmatch(v):
            raise ValueError("must be an http:// or https:// URL with a host (no blanks or line breaks)")
        return v

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError('must be "1".."9"')
        s = str(v)
        if s not in PRIORITIES:
            raise ValueError('must be "1".."9" (1 is most urgent)')
        return s

    @property
    def priority_level(self) -> int:
        return int(self.priority)

    def body(self) -> dict[str, Any]:
        """The JSON body with the seed's exact field names, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_unset=True)


class CallResult(BaseModel):
    """The provider's answer; ``retCode`` "0" with a callSerialNo is the only success."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    ret_code: str | None = Field(None, alias="retCode")
    ret_msg: str | None = Field(None, alias="retMsg")
    result: dict[str, Any] | None = None

    @field_validator("ret_code", mode="before")
    @classmethod
    def _as_str(cls, v: Any) -> Any:
        return None if v is None else str(v)

    @property
    def call_serial_no(self) -> str | None:
        if self.result and self.result.get("callSerialNo") is not None:
            return str(self.result["callSerialNo"])
        return None


class ReleaseEvent(BaseModel):
    """The release event POSTed to callBackUrl when a call ends (provider-api.md §3)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    call_serial_no: str = Field(..., alias="callSerialNo", min_length=1)
    called: str | None = None
    caller_present: str | None = Field(None, alias="callerPresent")
    create_call_time: str | None = Field(None, alias="createCallTime")
    alerting_time: str | None = Field(None, alias="alertingTime")
    talking_time: str | None = Field(None, alias="talkingTime")
    release_time: str | None = Field(None, alias="releaseTime")
    talk_duration: str | None = Field(None, alias="talkDuration")
    release_reason: str | None = Field(None, alias="releaseReason")
    recordfile: str | None = None
    location_id: str | None = Field(None, alias="locationId")
    timestamp: str | None = None
    nonce: str | None = None
    signature: str | None = None


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Turn a pydantic error into seed-named fields (``playList[0].templateParams``) and rules."""
    out = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += ("." if path else "") + str(part)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(FieldError(path or "body", msg))
    return out


def parse_request(data: Any) -> CallRequest:
    """Validate a seed-shaped body (dict) or pass a CallRequest through; raise InvalidRequest."""
    if isinstance(data, CallRequest):
        return data
    if not isinstance(data, dict):
        raise InvalidRequest([FieldError("body", "must be a JSON object")])
    try:
        return CallRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(field_errors(exc)) from None
