"""``/v1/campaigns``: launch, list, follow, pause, resume, cancel and delete campaigns over HTTP.

The same operations and JSON as ``dialer campaign ...`` (both call :mod:`worker.campaigns`)::

    curl -sS http://127.0.0.1:8080/v1/campaigns -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
         -d '{"name": "spring", "templateId": "tpl-1", "rate": 20, "rows": [{"called": "13800000001"}]}'
    # 201 the launch report (`dialer campaign launch --json`); Location: /v1/campaigns/spring
    curl -sS 'http://127.0.0.1:8080/v1/campaigns?name=spring&templateId=tpl-1' -H "Authorization: Bearer $KEY" \\
         -H 'Content-Type: text/csv' --data-binary @spring.csv          # or -F file=@spring.csv (multipart)
    curl -sS http://127.0.0.1:8080/v1/campaigns/spring -H "Authorization: Bearer $KEY"   # status --json
    curl -sS -X POST http://127.0.0.1:8080/v1/campaigns/spring:pause -H "Authorization: Bearer $KEY"
    curl -sS -OJ 'http://127.0.0.1:8080/v1/campaigns/spring/export?format=csv&state=failed,dead' \\
         -H "Authorization: Bearer $KEY"                                  # spring-export.csv, streamed

A launch answers 201 when it created the campaign, 200 otherwise (a re-run adds nothing twice; a dry
run stores nothing); rejected rows are listed in the report, or, with ``strict``, refuse the launch with
422 naming each row (``rows[3].called`` for JSON rows, ``line[12].templateParams[1]`` for an upload).
A launch with no valid row stores nothing, creates no campaign and answers 422 ``no_valid_rows`` (the
rows named the same way). ``DELETE /v1/campaigns/{name}`` deletes a campaign with no work left (409
``campaign_busy`` otherwise).
Bad options are 422 naming the option; a campaign that exists with other settings or was cancelled is
409; an unknown campaign is 404; resuming or pausing a cancelled campaign is 409.
``GET /v1/campaigns/{name}/export`` streams ``dialer campaign export`` (:mod:`worker.campaigns.export`) as a
chunked download; it is a VIEW route, so the dashboard's session cookie can follow its link.

The module also feeds the dashboard's campaign rows (``CAMPAIGNS_FEED``): the newest campaigns' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.campaigns.control import CampaignBusy, CampaignError, Campaigns, UnknownCampaign, valid_name
from worker.campaigns.export import (
    COLUMNS,
    FORMATS,
    MEDIA_TYPES,
    STATES,
    CampaignExport,
    ExportOptionError,
    check_format,
    filename,
    parse_states,
)
from worker.campaigns.launch import LaunchError, LaunchOptions, LaunchReport, launch_rows, launch_text
from worker.errors import FieldError
from worker.http.common import CAMPAIGNS_FEED, REDIS, SETTINGS, read_json
from worker.http.errors import ApiError
from worker.http.routing import Access, Param, Reply, Route
from worker.http.schemas import (
    CampaignAction,
    CampaignCreate,
    CampaignDeleted,
    CampaignList,
    CampaignOptions,
    CampaignStatus,
    LaunchReply,
)
from worker.models import field_errors
from worker.rules import CAMPAIGN_PATTERN
from worker.settings import Settings

__all__ = ["DASHBOARD_CAMPAIGNS", "export_path", "routes", "setup"]

log = logging.getLogger(__name__)

DASHBOARD_CAMPAIGNS = 20
"""How many campaigns (the newest) the dashboard shows."""
RESUME_WAIT_S = 10.0
"""How long a resume over HTTP waits for jobs still ending their runs; the rest is reported as ``left``."""

CAMPAIGNS: web.AppKey[Campaigns] = web.AppKey("campaigns", Campaigns)
# A name cannot hold ":", so "/v1/campaigns/x:pause" is never the status route of a campaign "x:pause"
# (and its Allow header lists POST only).
_NAME_PATH = "/v1/campaigns/{name:[A-Za-z0-9._-]+}"

# The launch code names its options as the CLI does; the API uses its own names.
_RENAME = {
    "--name": "name", "--priority": "priority", "--voice-id": "voiceId", "--template-id": "templateId",
    "--voice-file-name": "voiceFileName", "--param": "templateParams", "--caller-present": "callerPresent",
    "--play-times": "playTimes", "--rate": "rate", "--window": "window", "--days": "days",
    "--timezone": "timezone", "--default-timezone": "defaultTimezone", "--deadline": "deadline",
    "--redial": "redial", "--redial-after": "redialAfter",
    "--status-callback-url": "statusCallbackUrl",
    "--voice-id/--template-id/--voice-file-name": "voiceId/templateId/voiceFileName", "FILE": "file",
}
_UPLOAD_TYPES = {"text/csv": False, "application/x-ndjson": True, "application/jsonl": True}
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_BOOL_QUERY = {"true": True, "false": False}
_EXPORT_QUERY = ("format", "state")


def export_path(name: str) -> str:
    """The URL path of a campaign's export (the dashboard links it)."""
    return f"/v1/campaigns/{name}/export"


def _launch_options(o: CampaignOptions) -> LaunchOptions:
    return LaunchOptions(
        name=o.name, priority=o.priority, voice_id=o.voice_id, template_id=o.template_id,
        voice_file_name=o.voice_file_name, params=tuple(o.template_params or ()), caller_present=o.caller_present,
        play_times=o.play_times, rate=o.rate, window=o.window, days=o.days, timezone=o.timezone,
        default_timezone=o.default_timezone, deadline=o.deadline, dry_run=o.dry_run, strict=o.strict,
        redial=o.redial, redial_after=o.redial_after,
        status_callback_url=o.status_callback_url,
    )


def _query_options(request: web.Request) -> CampaignOptions:
    """The options of an upload, from the query string (``templateParams`` may repeat)."""
    data: dict[str, Any] = {}
    errors: list[FieldError] = []
    for key in dict.fromkeys(request.query.keys()):
        values = request.query.getall(key)
        if key == "templateParams":
            data[key] = list(values)
        elif len(values) > 1:
            errors.append(FieldError(key, "given more than once"))
        elif key in ("dryRun", "strict"):
            if values[0] not in _BOOL_QUERY:
                errors.append(FieldError(key, "must be true or false"))
            else:
                data[key] = _BOOL_QUERY[values[0]]
        else:
            data[key] = values[0]
    if errors:
        raise ApiError.refused(errors)
    try:
        return CampaignOptions.model_validate(data)
    except ValidationError as exc:
        raise ApiError.refused(field_errors(exc)) from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError.refused([FieldError("file", "must be UTF-8 text")]) from None


async def _upload(request: web.Request) -> tuple[str, bool | None, str]:
    """(text, jsonl or None to guess, source name) of a multipart upload with one part named ``file``."""
    try:
        form = await request.post()
    except ValueError as exc:  # a malformed multipart body
        raise ApiError(400, f"The multipart body is malformed ({exc}).") from None
    unknown = [k for k in form if k != "file"]
    if unknown:
        raise ApiError.refused([FieldError(k, "unknown form field: send the file as `file`, the options as "
                                              "query parameters") for k in dict.fromkeys(unknown)])
    parts = form.getall("file", [])
    if len(parts) != 1:
        raise ApiError.refused([FieldError("file", "required once: the CSV or JSONL file")])
    part = parts[0]
    if isinstance(part, web.FileField):
        name = PurePath(part.filename or "upload").name or "upload"
        jsonl = True if name.lower().endswith(_JSONL_SUFFIXES) else None
        return _decode(part.file.read()), jsonl, name
    return (part if isinstance(part, str) else _decode(bytes(part))), None, "upload"


async def create_campaign(request: web.Request) -> web.Response:
    app = request.app
    redis, settings = app[REDIS], app[SETTINGS]
    ctype = request.content_type.lower()
    launch: Callable[[], Awaitable[LaunchReport]]
    if ctype == "application/json" or ctype.endswith("+json"):
        if request.query:
            raise ApiError.refused([FieldError(k, "with a JSON body the options go in the body")
                                    for k in dict.fromkeys(request.query)])
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise ApiError.refused([FieldError("body", "must be a JSON object")])
        try:
            body = CampaignCreate.model_validate(payload, strict=True)
        except ValidationError as exc:
            raise ApiError.refused(field_errors(exc)) from None
        opts = _launch_options(body)

        def launch() -> Awaitable[LaunchReport]:
            return launch_rows(redis, settings, body.rows, opts)

        json_rows = True
    elif ctype in _UPLOAD_TYPES or ctype == "multipart/form-data":
        opts = _launch_options(_query_options(request))
        if ctype == "multipart/form-data":
            text, jsonl, source = await _upload(request)
        else:
            text, jsonl, source = _decode(await request.read()), _UPLOAD_TYPES[ctype], "upload"

        def launch() -> Awaitable[LaunchReport]:
            return launch_text(redis, settings, text, opts, jsonl=jsonl, source=source)

        json_rows = False
    else:
        raise ApiError(415, "Send application/json (options and rows), or a file as text/csv, "
                            "application/x-ndjson or multipart/form-data (options as query parameters).")
    try:
        report = await launch()
    except LaunchError as exc:
        raise ApiError.refused(exc.errors, _RENAME) from None
    except CampaignError as exc:
        raise ApiError(409, str(exc), code="campaign_conflict") from None
    fields = [FieldError(f"rows[{e.line - 1}].{e.field}" if json_rows else f"line[{e.line}].{e.field}", e.rule)
              for e in report.rejected]
    if report.strict_refused:
        raise ApiError(422, f"{report.rejected_rows} row(s) rejected; strict: nothing was enqueued.",
                       code="rows_rejected", fields=fields)
    if report.nothing_valid and not report.dry_run:
        raise ApiError(422, f"No valid row ({report.rows} row(s), {report.rejected_rows} rejected): nothing was "
                            "stored and the campaign was not created.", code="no_valid_rows", fields=fields)
    return web.json_response(report.as_dict(), status=201 if report.campaign_created else 200,
                             headers={"Location": f"/v1/campaigns/{opts.name}"})


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise ApiError(404, "No such campaign: names are 1-64 characters of A-Z a-z 0-9 . _ -.")
    return name


async def list_campaigns(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CAMPAIGNS].statuses())


async def get_campaign(request: web.Request) -> web.Response:
    name = _name(request)
    try:
        return web.json_response(await request.app[CAMPAIGNS].status(name))
    except UnknownCampaign as exc:
        raise ApiError(404, str(exc)) from None


async def delete_campaign(request: web.Request) -> web.Response:
    name = _name(request)
    try:
        await request.app[CAMPAIGNS].delete(name)
    except UnknownCampaign as exc:
        raise ApiError(404, str(exc)) from None
    except CampaignBusy as exc:
        raise ApiError(409, str(exc), code="campaign_busy") from None
    return web.json_response(CampaignDeleted(deleted=name).model_dump(mode="json"))


async def export_campaign(request: web.Request) -> web.StreamResponse:
    """Stream the export; 404 before the first byte for an unknown campaign, 422 for a bad parameter.

    The client's pace sets the reading: a slice of the job list is read from Redis only when the previous
    one has been written, so a client that goes away stops the reads at its next write."""
    name = _name(request)
    errors = [FieldError(k, "unknown query parameter: use format and state") for k in dict.fromkeys(request.query)
              if k not in _EXPORT_QUERY]
    formats = request.query.getall("format", ["csv"])
    fmt = "csv"
    if len(formats) > 1:
        errors.append(FieldError("format", "given more than once"))
    else:
        try:
            fmt = check_format(formats[0], "format")
        except ExportOptionError as exc:
            errors.append(FieldError("format", exc.rule))
    states = None
    try:
        states = parse_states(request.query.getall("state", []), "state")
    except ExportOptionError as exc:
        errors.append(FieldError("state", exc.rule))
    if errors:
        raise ApiError.refused(errors)
    export = CampaignExport(request.app[REDIS], request.app[SETTINGS], name, fmt=fmt, states=states)
    try:
        await export.check()
    except UnknownCampaign as exc:
        raise ApiError(404, str(exc)) from None
    response = web.StreamResponse(headers={
        "Content-Type": MEDIA_TYPES[fmt],
        "Content-Disposition": f'attachment; filename="{filename(name, fmt)}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    async with contextlib.aclosing(export.stream()) as chunks:
        try:
            async for data in chunks:
                await response.write(data)
        except ConnectionResetError:  # the client went away: stop reading (aclosing cancels the read ahead)
            log.info("export of campaign %s: the client left after %d rows", name, export.rows)
            return response
        except asyncio.CancelledError:  # the same, where the server cancels the handler (or is stopping)
            log.info("export of campaign %s: cancelled after %d rows", name, export.rows)
            raise
        except Exception as exc:
            # The status line is sent: a 5xx is no longer possible. Closing the connection without the last
            # chunk tells the client the download is incomplete.
            log.warning("export of campaign %s stopped after %d rows: %s", name, export.rows, type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


def _action(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        name = _name(request)
        campaigns = request.app[CAMPAIGNS]
        moved = left = cancelled = None
        try:
            if action == "pause":
                previous = await campaigns.pause(name)
            elif action == "resume":
                res = await campaigns.resume(name, wait_s=RESUME_WAIT_S)
                previous, moved, left = res.previous, res.moved, res.left
            else:
                previous = (await campaigns.status(name))["status"]
                cancelled = await campaigns.cancel(name)
            status = await campaigns.status(name)
        except UnknownCampaign as exc:
            raise ApiError(404, str(exc)) from None
        except CampaignError as exc:
            raise ApiError(409, str(exc), code="campaign_conflict") from None
        reply = {"action": action, "previous": previous, "moved": moved, "left": left, "cancelled": cancelled,
                 "campaign": status}
        return web.json_response(reply)

    handler.__name__ = f"{action}_campaign"
    return handler


def _upload_params() -> tuple[Param, ...]:
    """The options as query parameters (uploads only), documented from the model."""
    schema = CampaignOptions.model_json_schema(by_alias=True)
    out = []
    for prop, spec in schema["properties"].items():
        spec = {k: v for k, v in spec.items() if k not in ("title", "description", "default")}
        for branch in spec.pop("anyOf", []):
            if branch.get("type") != "null":
                spec.update(branch)
        description = CampaignOptions.model_fields[_snake(prop)].description or ""
        out.append(Param(prop, "query", f"Uploads only (text/csv, application/x-ndjson, multipart): {description}",
                         schema=spec))
    return tuple(out)


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


def routes(settings: Settings) -> list[Route]:
    name = Param("name", "path", "The campaign's name.", required=True,
                 schema={"type": "string", "pattern": CAMPAIGN_PATTERN})
    upload = {"type": "string", "description": "The file: CSV with a header row (`called` required), or JSONL."}
    out = [
        Route(
            "POST", "/v1/campaigns", create_campaign, "Launch a campaign", Access.API, tag="campaigns",
            operation_id="createCampaign", body=CampaignCreate, parameters=_upload_params(),
            body_alternatives={
                "text/csv": upload,
                "application/x-ndjson": upload,
                "multipart/form-data": {
                    "type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"], "additionalProperties": False,
                },
            },
            description="`dialer campaign launch` over HTTP: the options and rows as JSON, or a CSV/JSONL file "
            "(the options as query parameters). Every row is validated; rejected rows are listed and never "
            "enqueued (with `strict`, one refuses the launch). With no valid row nothing is stored and no "
            "campaign created (422 `no_valid_rows`). Re-running a launch adds nothing twice.",
            responses={
                201: Reply("The campaign was created and its rows enqueued.", LaunchReply,
                           headers={"Location": "The campaign's URL."}),
                200: Reply("The campaign existed (a re-run), or a dry run.", LaunchReply,
                           headers={"Location": "The campaign's URL."}),
            },
            errors=(400, 409, 413, 415, 422),
        ),
        Route(
            "GET", "/v1/campaigns", list_campaigns, "List campaigns", Access.API, tag="campaigns",
            operation_id="listCampaigns", responses={200: Reply("Every campaign, oldest first.", CampaignList)},
        ),
        Route(
            "GET", _NAME_PATH, get_campaign, "Get a campaign's status", Access.API, tag="campaigns",
            operation_id="getCampaign", parameters=(name,),
            responses={200: Reply("Counts per state and outcome, send rate and ETA.", CampaignStatus)},
            errors=(404,),
        ),
        Route(
            "GET", _NAME_PATH + "/export", export_campaign, "Export a campaign, one row per number", Access.VIEW,
            tag="campaigns", operation_id="exportCampaign",
            parameters=(
                name,
                Param("format", "query", "`csv` (a header row, RFC 4180, UTF-8) or `jsonl` (one JSON object per line, "
                      "the same keys).", schema={"type": "string", "enum": list(FORMATS), "default": "csv"}),
                Param("state", "query", "Only numbers whose latest call is in these states: repeat the parameter or "
                      "comma-separate (`state=failed,dead`).",
                      schema={"type": "string", "pattern": "^[a-z]+(,[a-z]+)*$",
                              "description": "Each one of: " + ", ".join(STATES)}),
            ),
            description="`dialer campaign export` over HTTP, streamed (chunked) in launch order, in constant memory "
            "whatever the campaign's size. One row per number: its first job, with the state, attempts, sent_at, "
            "callSerialNo, outcome, release reason, talk duration, last error and evidence of its *latest* call "
            "(its last redial, if any) and how many redials it had. Columns: " + ", ".join(f"`{c}`" for c in COLUMNS)
            + ". With `format=jsonl` the body is `application/x-ndjson`. A VIEW route: the dashboard key and the "
            "dashboard's session cookie may download it. A failure after the first byte ends the connection "
            "without the last chunk, so the client sees an incomplete download.",
            responses={200: Reply("The export (CSV; JSONL with `format=jsonl`).", None, media="text/csv",
                                  headers={"Content-Disposition": 'attachment; filename="<name>-export.csv"'})},
            errors=(404, 422),
        ),
        Route(
            "DELETE", _NAME_PATH, delete_campaign, "Delete a campaign with no work left", Access.API,
            tag="campaigns", operation_id="deleteCampaign", parameters=(name,),
            description="`dialer campaign delete`: a campaign with no job queued, sending or parked (never "
            "given a job, every job final, or cancelled) is deleted and its name can be launched again; its "
            "finished jobs stay in the ledger until their TTL. A campaign with work is refused with 409 "
            "`campaign_busy` (cancel it first, or wait until its jobs are final).",
            responses={200: Reply("Deleted.", CampaignDeleted)},
            errors=(404, 409),
        ),
    ]
    summaries = {
        "pause": "Hold every not-yet-sent job (calls in flight finish).",
        "resume": "Put the parked jobs back on their queues, in order.",
        "cancel": "Every job not yet sent becomes cancelled and is never dialled.",
    }
    for action, text in summaries.items():
        out.append(Route(
            "POST", f"{_NAME_PATH}:{action}", _action(action), f"{action.capitalize()} a campaign",
            Access.API, tag="campaigns", operation_id=f"{action}Campaign", parameters=(name,), description=text,
            responses={200: Reply("Done; the campaign's status now.", CampaignAction)},
            errors=(404, 409),
        ))
    return out


async def _feed(app: web.Application) -> list[dict[str, Any]]:
    return await app[CAMPAIGNS].statuses(limit=DASHBOARD_CAMPAIGNS)


def setup(app: web.Application) -> None:
    """Per-app state of this module (called by create_app), and the dashboard's campaign rows."""
    app[CAMPAIGNS] = Campaigns(app[REDIS], app[SETTINGS])
    app[CAMPAIGNS_FEED] = _feed

