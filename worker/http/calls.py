"""``/v1/calls``: enqueue one call, a batch, and read a job's ledger record.

::

    curl -H "Authorization: Bearer $KEY" -H "Idempotency-Key: order-4711" \\
         -d '{"called":"13800000001","playList":[{"voiceId":"100001"}],"priority":"1"}' \\
         -H 'Content-Type: application/json' http://127.0.0.1:8080/v1/calls
    # 202 {"id":"order-4711","status":"accepted","state":"queued","job":{...}}; again: 200 "duplicate"

A repeated key with a *different* call is refused with 409 (``idempotency_conflict``); nothing is stored.
Everything is validated and stored by :class:`~worker.ledger.producer.Producer`, one atomic script
per job, so an item is never stored in part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.errors import FieldError, InvalidRequest
from worker.http.common import LEDGER, PRODUCER, REDIS, SETTINGS, read_json
from worker.http.errors import ApiError, rename_fields
from worker.http.routing import Access, Param, Reply, Route
from worker.http.schemas import (
    BatchCreate,
    BatchItem,
    BatchItemResult,
    BatchReply,
    CallCreate,
    EnqueueReply,
    FieldErrorView,
    JobView,
)
from worker.ledger.producer import CallJob, EnqueueResult
from worker.ledger.record import JobRecord
from worker.metrics import observe_enqueued
from worker.models import CallRequest, field_errors
from worker.rules import JOB_ID_PATTERN, PRODUCER_ID_PATTERN
from worker.settings import Settings
from worker.store.decode import as_dict
from worker.store.keys import Keys

# The producer names options as Python does; the API uses the seed's camelCase.
_SINGLE_RENAME = {"not_before": "notBefore", "id": "Idempotency-Key", "status_callback_url": "statusCallbackUrl"}
_BATCH_RENAME = {"not_before": "notBefore", "status_callback_url": "statusCallbackUrl"}
_CONFLICT_RULE = "already used for a different call"



def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _same_call(record: JobRecord, request: CallRequest, campaign: str | None,
               status_callback_url: str | None = None) -> bool:
    """Whether a stored job is this call (defaults filled in on both sides, so an explicit
    ``"priority": "9"`` equals no priority), with the same campaign and statusCallbackUrl."""
    if (record.campaign or None) != (campaign or None):
        return False
    if (record.status_callback_url or None) != (status_callback_url or None):
        return False
    try:
        stored = record.request()
    except InvalidRequest:
        return False
    return stored.model_dump(exclude_none=True) == request.model_dump(exclude_none=True)


# --- POST /v1/calls --------------------------------------------------------------------------------


async def create_call(request: web.Request) -> web.Response:
    payload = await read_json(request)
    key = request.headers.get("Idempotency-Key")
    try:
        if not isinstance(payload, dict):
            raise ApiError.refused([FieldError("body", "must be a JSON object")])
        try:
            call = CallCreate.model_validate(payload)
        except ValidationError as exc:
            raise ApiError.refused(field_errors(exc)) from None
        seed = call.seed()
        try:
            result = await request.app[PRODUCER].enqueue(
                seed, job_id=key, campaign=call.campaign, not_before=call.not_before, deadline=call.deadline,
                status_callback_url=call.status_callback_url,
            )
        except InvalidRequest as exc:
            raise ApiError.invalid(exc, _SINGLE_RENAME) from None
    except ApiError:
        observe_enqueued("rejected")
        raise
    assert result.job_id is not None
    record = await request.app[LEDGER].get(result.job_id)
    if record is None:  # only if the record expired between the two calls
        raise ApiError(503, "The job was stored but could not be read back; GET it shortly.")
    if result.status == "duplicate" and not _same_call(record, seed, call.campaign, call.status_callback_url):
        observe_enqueued("conflict")
        field = "Idempotency-Key" if key is not None else "campaign"
        raise ApiError(409, f"Job {result.job_id!r} already exists with a different call.",
                       code="idempotency_conflict", fields=[FieldError(field, _CONFLICT_RULE)])
    observe_enqueued(result.status)
    reply = EnqueueReply(id=result.job_id, status=result.status,
                         state=record.state, job=JobView.model_validate(record.as_dict()))
    status = 202 if result.status == "accepted" else 200
    return _json(reply.model_dump(mode="json"), status, {"Location": f"/v1/calls/{result.job_id}"})


# --- POST /v1/calls:batch --------------------------------------------------------------------------


_Parsed = tuple[int, CallJob, CallRequest, str | None]


def _parse_items(items: Sequence[Any]) -> tuple[list[_Parsed], dict[int, list[FieldError]]]:
    parsed: list[_Parsed] = []
    rejected: dict[int, list[FieldError]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            rejected[index] = [FieldError("body", "must be a JSON object")]
            continue
        try:
            it = BatchItem.model_validate(item)
        except ValidationError as exc:
            rejected[index] = field_errors(exc)
            continue
        seed = it.seed()
        job = CallJob(request=seed, job_id=it.id, campaign=it.campaign, not_before=it.not_before,
                      deadline=it.deadline, status_callback_url=it.status_callback_url)
        parsed.append((index, job, seed, it.campaign))
    return parsed, rejected


async def _records(request: web.Request, job_ids: list[str]) -> list[JobRecord | None]:
    if not job_ids:
        return []
    keys = Keys(request.app[SETTINGS].key_prefix)
    async with request.app[REDIS].pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        raws = await pipe.execute()
    out: list[JobRecord | None] = []
    for job_id, raw in zip(job_ids, raws, strict=True):
        try:
            out.append(JobRecord.from_hash(job_id, as_dict(raw)) if raw else None)
        except (KeyError, ValueError):
            out.append(None)
    return out


async def create_batch(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError.refused([FieldError("body", "must be a JSON object")])
    if isinstance(payload.get("items"), list) and len(payload["items"]) > settings.http_max_batch:
        raise ApiError.refused([FieldError("items", f"must have at most {settings.http_max_batch} items "
                                                    "(DIALER_HTTP_MAX_BATCH)")])
    try:
        batch = BatchCreate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError.refused(field_errors(exc)) from None

    parsed, rejected = _parse_items(batch.items)
    try:
        results = await request.app[PRODUCER].enqueue_many(
            [job for _, job, _, _ in parsed],
            campaign=batch.campaign, not_before=batch.not_before, deadline=batch.deadline,
            status_callback_url=batch.status_callback_url,
        )
    except InvalidRequest as exc:  # the batch-wide options themselves
        raise ApiError.invalid(exc, _BATCH_RENAME) from None

    by_index: dict[int, BatchItemResult] = {
        i: BatchItemResult(index=i, status="rejected", id=None, state=None,
                           errors=[FieldErrorView(field=e.field, rule=e.rule) for e in errs])
        for i, errs in rejected.items()
    }
    duplicates: list[tuple[int, EnqueueResult, CallRequest, str | None, str | None]] = []
    for (index, job, seed, own_campaign), res in zip(parsed, results, strict=True):
        if res.status == "rejected":
            errs = rename_fields(res.errors, _BATCH_RENAME)
            by_index[index] = BatchItemResult(index=index, status="rejected", id=job.job_id, state=None,
                                              errors=[FieldErrorView(field=e.field, rule=e.rule) for e in errs])
        elif res.status == "duplicate":
            scb = job.status_callback_url if job.status_callback_url is not None else batch.status_callback_url
            duplicates.append((index, res, seed, own_campaign if own_campaign is not None else batch.campaign, scb))
        else:
            by_index[index] = BatchItemResult(index=index, status="accepted", id=res.job_id, state=res.state,
                                              errors=[])
    records = await _records(request, [str(res.job_id) for _, res, _, _, _ in duplicates])
    for (index, res, seed, campaign, scb), record in zip(duplicates, records, strict=True):
        same = record is not None and _same_call(record, seed, campaign, scb)
        by_index[index] = BatchItemResult(
            index=index, status="duplicate" if same else "conflict", id=res.job_id, state=res.state,
            errors=[] if same else [FieldErrorView(field="id", rule=_CONFLICT_RULE)],
        )
    ordered = [by_index[i] for i in range(len(batch.items))]
    counts = {s: sum(1 for r in ordered if r.status == s) for s in ("accepted", "duplicate", "conflict", "rejected")}
    for status, n in counts.items():
        observe_enqueued(status, n)
    return _json(BatchReply(results=ordered, **counts).model_dump(mode="json"))


# --- GET /v1/calls/{job_id} ------------------------------------------------------------------------


async def get_call(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    record = await request.app[LEDGER].get(job_id) if 0 < len(job_id) <= 128 else None
    if record is None:
        raise ApiError(404, f"No job {job_id!r}." if len(job_id) <= 128 else "No such job.")
    return _json(JobView.model_validate(record.as_dict()).model_dump(mode="json"))


# --- the route table -------------------------------------------------------------------------------


def _batch_schema(settings: Settings) -> dict[str, Any]:
    schema = BatchCreate.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    schema["properties"]["items"] = {
        "type": "array", "minItems": 1, "maxItems": settings.http_max_batch,
        "items": {"$ref": "#/components/schemas/BatchItem"},
        "description": f"1 to {settings.http_max_batch} calls (DIALER_HTTP_MAX_BATCH).",
    }
    return schema


def routes(settings: Settings) -> list[Route]:
    job_id_param = Param("job_id", "path", "The job id (the idempotency key).", required=True,
                         schema={"type": "string", "pattern": JOB_ID_PATTERN})
    idem = Param("Idempotency-Key", "header",
                 "The job id. A repeat with the same call returns the first job (200); with a different "
                 "call, 409. No ':' (ids with ':' are the dialer's own: `<campaign>:<number>`, `<id>:r<k>`). "
                 "Default: `<campaign>:<number>` when a campaign is given, else a new id.",
                 schema={"type": "string", "pattern": PRODUCER_ID_PATTERN})
    return [
        Route(
            "POST", "/v1/calls", create_call, "Enqueue one call", Access.API, tag="calls",
            operation_id="createCall", body=CallCreate, parameters=(idem,),
            description="Validates the body against the seed's table, then stores the job and queues it on "
            "its priority's queue, all at once.",
            responses={
                202: Reply("A new job was queued.", EnqueueReply, headers={"Location": "The job's URL."}),
                200: Reply("The key was used before for this same call: the first job.", EnqueueReply,
                           headers={"Location": "The job's URL."}),
            },
            errors=(400, 409, 413, 415, 422),
        ),
        Route(
            "POST", "/v1/calls:batch", create_batch, "Enqueue many calls", Access.API, tag="calls",
            operation_id="createCalls", body=BatchCreate, body_schema=_batch_schema(settings),
            extra_models=(BatchItem,),
            description="One result per item, in order: accepted, duplicate, conflict or rejected (with "
            "field errors). Each item is stored whole or not at all; bad items do not stop the others.",
            responses={200: Reply("Per-item results.", BatchReply)},
            errors=(400, 413, 415, 422),
        ),
        Route(
            "GET", "/v1/calls/{job_id}", get_call, "Get a job", Access.API, tag="calls",
            operation_id="getCall", parameters=(job_id_param,),
            responses={200: Reply("The job's ledger record.", JobView)},
            errors=(404,),
        ),
    ]
