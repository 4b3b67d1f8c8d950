"""The sandbox provider: a fake of Huawei CEC's tokenByAkSk and createVoiceNotification V2.

Tests, the demo and the benchmarks talk to it over real HTTP, in process or as its own process
(``dialer simulator``). It checks what the real service checks (token, X-APP-Key, the seed's body
limits with their retCodes, at least as strictly as the seed and cec_07_2802), refuses what a tenant's
own setup would (a trial tenant's allowlist, CLIP numbers, voice ids, a VDN not enabled), injects
faults on request (HTTP 500, any retCode of provider-api.md §2, hangs, a rate cap, latency, answers
without retCode or callSerialNo, an account refused with 401) and can POST release events to
``callBackUrl``, signed by :mod:`worker.sandbox.signing`. Everything it saw is in an in-memory log
(``GET /_sim/log``); ``/_sim/*`` routes reset, reconfigure and revoke at run time::

    app = create_app(SimulatorConfig(fail_500_rate=0.2, seed=1))
    server = TestServer(app, host="127.0.0.1")    # or: run("127.0.0.1", 8090, SimulatorConfig())
    app[SIM_STATE].log[-1]["outcome"]             # "created", "500", "invalid", ...

The body checks are written here on purpose rather than reused from ``worker.models``, and the
signer apart from ``worker.provider.signature``: a fake that shares the client's validation or the
receiver's signature code would hide their mistakes, and importing pydantic would slow the
simulator's start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import hmac
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from worker.runtime import freeze_start_up_objects
from worker.sandbox.signing import DIGESTS, SPACES, Digest, Spaces, release_signature

__all__ = ["SIM_STATE", "SimulatorConfig", "SimulatorState", "create_app", "run"]

logger = logging.getLogger(__name__)

# Same values as worker.settings.TOKEN_PATH/CREATE_PATH; not imported so the simulator loads no pydantic.
_TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"  # noqa: S105 (a URL path, not a secret)
_CREATE_PATH = "/apiaccess/rest/voiceNotification/v2/createVoiceNotification"

_DEFAULT_TOKEN_LIFETIME_S = 600
_MAX_TOKEN_LIFETIME_S = 3600
_TOKEN_PRUNE_AT = 1024  # prune expired tokens once this many are stored
_CALLBACK_RETRIES = 3
_CALLBACK_BACKOFF_S = 0.1  # doubles per retry
_CALLBACK_TIMEOUT_S = 5.0

_CALLED_RE = re.compile(r"\+?[0-9]+")
_FORBIDDEN_PARAM_RE = re.compile(r"[${}]")
# cec_07_2802: the only characters a callBackUrl may contain (checked plain or Base64-decoded).
_URL_CHARS_RE = re.compile(r"[a-zA-Z0-9\-:./_#?&]+")
_URL_RE = re.compile(r"https?://[^/?#]+")
_MAX_URL = 256
_PRIORITIES = frozenset(str(p) for p in range(1, 10))
_SOURCES = ("voiceId", "voiceFileName", "templateId")

# provider-api.md §2: every non-zero retCode it lists, with the answer's retMsg when injected.
_RET_MSGS: dict[str, str] = {
    "1": "Unfinished task, please retry later.",
    "3": "No callSerialNo was generated.",
    "4": "softPhone format is invalid.",
    "5": "called is missing or invalid.",
    "6": "The VDN is not enabled.",
    "7": "callerPresent check failed.",
    "9": "callBackUrl is invalid.",
    "10": "playTimes is not from 1 to 5.",
    "11": "playList is empty or holds over 5 items.",
    "12": "voiceId and templateId are both empty.",
    "13": "A variable is over 32 bytes.",
    "14": "templateParams holds '$', '{' or '}'.",
    "15": "templateParams is empty or holds over 10 items.",
    "16": "Trial tenant: the called number is not on the allowlist.",
    "17": "The voice or TTS file does not exist.",
    "18": "The voice or TTS file does not fit the scene.",
    "19": "The voice or TTS file is not reviewed.",
    "20": "The voice or TTS file is under review.",
    "21": "The voice or TTS file was rejected.",
    "22": "The voice or TTS file is of the wrong type.",
    "23": "The voice or TTS file is not usable.",
}
_RET_CODES_RULE = "keys must be retCodes of provider-api.md §2 (1, 3-7, 9-23)"


@dataclass
class SimulatorConfig:
    """How the simulator behaves; patch it at run time with ``POST /_sim/config``.

    Checks, in order: the token (401), X-APP-Key (403), ``account_refused`` (401 to every request
    while tokenByAkSk still issues tokens: "service not purchased or account wrong"), ``max_rps``
    (HTTP 500 over that many requests admitted in any sliding second; refused ones do not count), the
    body (its retCodes), then the tenant's setup: ``vdn_enabled`` false gives retCode 6, a number
    not on ``allowlist`` 16 (a trial tenant), a callerPresent not in ``caller_presents`` 7, a voiceId
    not in ``voice_ids`` 17 (None: anything goes).

    Rates are fractions 0..1 drawn per request from one ``random.Random(seed)``, in the order hang,
    HTTP 500, retCode 1, ``ret_code_rates`` (one draw: ``{"16": 0.1, "3": 0.05}`` answers retCode 16
    to 10% of requests and 3 to 5%; any non-zero retCode of provider-api.md §2, adding up to at most
    1), then, for a call that is created, ``no_ret_code_rate`` (HTTP 200 with result.callSerialNo
    but no retCode) and ``no_serial_rate`` (retCode "0" without result): the call exists either way
    and its release event is sent. A rate of 0 draws nothing, so a seed gives the same run as before
    a new rate was added. Invalid values raise ValueError naming the field.
    """

    app_key: str = "sim-app-key"
    app_secret: str = field(default="sim-app-secret", repr=False)
    token_lifetime_s: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_500_rate: float = 0.0
    retcode1_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 30.0
    max_rps: float | None = None
    callback_url_base64: bool = False
    callbacks: bool = False
    ring_time_s: float = 0.5
    answer_rate: float = 0.8
    callback_shared_key: str | None = field(default=None, repr=False)
    callback_signature_mode: Digest = "sha256"
    callback_signature_spaces: Spaces = "keep"
    ret_code_rates: dict[str, float] = field(default_factory=dict)
    no_ret_code_rate: float = 0.0
    no_serial_rate: float = 0.0
    account_refused: bool = False
    vdn_enabled: bool = True
    allowlist: list[str] | None = None
    caller_presents: list[str] | None = None
    voice_ids: list[str] | None = None
    seed: int | None = None
    # Derived in __post_init__ for the hot path; not settable, not served.
    _ret_draw: tuple[tuple[float, str], ...] = field(default=(), init=False, repr=False, compare=False)
    _allowed: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _callers: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _voices: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = [f"{name}: {rule}" for name, rule in _config_problems(self)]
        if problems:
            raise ValueError("invalid simulator config: " + "; ".join(problems))
        total = 0.0
        draw = []
        for code, rate in sorted(self.ret_code_rates.items(), key=lambda kv: int(kv[0])):
            if rate > 0:
                total += rate
                draw.append((total, code))
        self._ret_draw = tuple(draw)
        self._allowed = None if self.allowlist is None else frozenset(self.allowlist)
        self._callers = None if self.caller_presents is None else frozenset(self.caller_presents)
        self._voices = None if self.voice_ids is None else frozenset(self.voice_ids)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _config_problems(c: SimulatorConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in ("app_key", "app_secret"):
        v = getattr(c, name)
        if not isinstance(v, str) or not v:
            out.append((name, "must be a non-empty string"))
    if c.token_lifetime_s is not None and not (_is_int(c.token_lifetime_s) and c.token_lifetime_s >= 1):
        out.append(("token_lifetime_s", "must be null or an integer >= 1"))
    for name in ("latency_ms", "jitter_ms", "hang_s", "ring_time_s"):
        v = getattr(c, name)
        if not (_is_num(v) and v >= 0):
            out.append((name, "must be a number >= 0"))
    for name in ("fail_500_rate", "retcode1_rate", "hang_rate", "answer_rate", "no_ret_code_rate", "no_serial_rate"):
        v = getattr(c, name)
        if not (_is_num(v) and 0 <= v <= 1):
            out.append((name, "must be a number from 0 to 1"))
    if c.max_rps is not None and not (_is_num(c.max_rps) and c.max_rps > 0):
        out.append(("max_rps", "must be null or a number > 0"))
    for name in ("callback_url_base64", "callbacks", "account_refused", "vdn_enabled"):
        if not isinstance(getattr(c, name), bool):
            out.append((name, "must be true or false"))
    if c.callback_shared_key is not None and not isinstance(c.callback_shared_key, str):
        out.append(("callback_shared_key", "must be null or a string"))
    if c.callback_signature_mode not in DIGESTS:
        out.append(("callback_signature_mode", f"must be one of {', '.join(DIGESTS)}"))
    if c.callback_signature_spaces not in SPACES:
        out.append(("callback_signature_spaces", f"must be one of {', '.join(SPACES)}"))
    out += _rates_problems(c.ret_code_rates)
    for name in ("allowlist", "caller_presents", "voice_ids"):
        v = getattr(c, name)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            out.append((name, "must be null or a list of strings"))
    if c.seed is not None and not _is_int(c.seed):
        out.append(("seed", "must be null or an integer"))
    return out


def _rates_problems(rates: object) -> list[tuple[str, str]]:
    if not isinstance(rates, dict):
        return [("ret_code_rates", "must be an object of retCode: rate")]
    out: list[tuple[str, str]] = []
    unknown = [repr(k) for k in rates if k not in _RET_MSGS]
    if unknown:
        out.append(("ret_code_rates", f"{', '.join(unknown)}: {_RET_CODES_RULE}"))
    bad = [repr(k) for k, v in rates.items() if not (_is_num(v) and 0 <= v <= 1)]
    if bad:
        out.append(("ret_code_rates", f"the rates of {', '.join(bad)} must be numbers from 0 to 1"))
    elif sum(rates.values()) > 1:
        out.append(("ret_code_rates", "the rates must add up to at most 1"))
    return out


_CONFIG_NAMES = tuple(f.name for f in dataclasses.fields(SimulatorConfig) if f.init)
_CONFIG_FIELDS = frozenset(_CONFIG_NAMES)
_SECRET_FIELDS = ("app_secret", "callback_shared_key")


class SimulatorState:
    """Live state of one simulator app, ``app[SIM_STATE]``.

    ``log`` holds one dict per createVoiceNotification request (keys: seq, ts, called, priority,
    status, retCode, callSerialNo, outcome, quirk, and the private _body, _app_key, _auth_ok that
    ``GET /_sim/log`` serves as body and headers, see ``public_entry``). ``outcome`` is "created"
    (a call exists), "hang" (created, answer held back), "auth", "account_refused", "rate",
    "invalid" (the body broke a rule; retCode says which), "500", or "retcode<N>" (retCode N for a
    well-formed request: injected, or the tenant's setup). A created call answered oddly keeps
    outcome "created", so whatever counts created calls still counts it, and names the oddity in
    ``quirk``: "no_retcode" or "no_serial" (None otherwise). ``tokens`` maps each valid
    token to its ``time.monotonic()`` expiry; ``callbacks`` holds one dict per delivered (or failed)
    release event.

    A log entry holds only strings, numbers, booleans and None, so CPython never tracks it for
    garbage collection. The simulator is the benchmarks' instrument: with parsed bodies in the log,
    a full collection walked every request ever logged and stopped the event loop for 40-75 ms at
    ~5,000 requests, and the requests that arrived meanwhile were all stamped at its end.
    """

    __slots__ = (
        "_closing",
        "_first_seq",
        "_rng",
        "_seq",
        "_serial",
        "_session",
        "_tasks",
        "_window",
        "callbacks",
        "config",
        "log",
        "token_requests",
        "tokens",
        "tokens_issued",
    )

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.log: list[dict[str, Any]] = []
        self.tokens: dict[str, float] = {}
        self.callbacks: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self.token_requests = 0
        self._rng = random.Random(config.seed)
        self._seq = 0
        self._first_seq = 1  # seq of log[0]; seq keeps counting across resets so ?since= stays valid
        # Millisecond start time as the high digits: serials stay unique across simulator restarts.
        self._serial = int(time.time() * 1000) * 1_000_000
        self._window: collections.deque[float] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: ClientSession | None = None
        self._closing = asyncio.Event()

    def __repr__(self) -> str:
        return f"<SimulatorState requests={len(self.log)} tokens={len(self.tokens)}>"

    def reset(self) -> None:
        """Forget requests, callbacks, counters and the rate window; issued tokens stay valid."""
        self.log.clear()
        self.callbacks.clear()
        self.tokens_issued = 0
        self.token_requests = 0
        self._window.clear()
        self._first_seq = self._seq + 1

    def _token_valid(self, authorization: str | None) -> bool:
        if authorization is None or not authorization.startswith("Bearer "):
            return False
        expires = self.tokens.get(authorization[7:])
        return expires is not None and expires > time.monotonic()

    def _issue_token(self, lifetime_s: int) -> str:
        now = time.monotonic()
        if len(self.tokens) >= _TOKEN_PRUNE_AT:
            self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + lifetime_s
        self.tokens_issued += 1
        return token

    def _admit(self, max_rps: float) -> bool:
        now = time.monotonic()
        window = self._window
        edge = now - 1.0
        while window and window[0] <= edge:
            window.popleft()
        if len(window) >= max_rps:
            return False
        window.append(now)
        return True

    def _create(self, entry: dict[str, Any], body: dict[str, Any], outcome: str) -> str:
        """Create the call (its serial, and its release event when callbacks are on)."""
        self._serial += 1
        serial = str(self._serial)
        entry["status"] = 200
        entry["retCode"] = "0"
        entry["callSerialNo"] = serial
        entry["outcome"] = outcome
        cfg = self.config
        url = body.get("callBackUrl")
        if cfg.callbacks and url is not None:
            if cfg.callback_url_base64:
                url = base64.b64decode(url).decode()
            task = asyncio.get_running_loop().create_task(self._call_back(url, serial, entry["ts"], body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return serial

    async def _hang(self, seconds: float) -> None:
        # Wakes early on shutdown so a hung request cannot hold the server's exit for hang_s.
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def _call_back(self, url: str, serial: str, created: float, body: dict[str, Any]) -> None:
        ring = self.config.ring_time_s
        await asyncio.sleep(ring)
        cfg = self.config
        try:
            event = self._release_event(cfg, serial, created, body, ring)
            status, attempts = await self._post_event(url, event)
        except Exception:  # a broken callback must never take the simulator down
            logger.exception("simulator: release event for %s failed", serial)
            return
        self.callbacks.append(
            {"callSerialNo": serial, "url": url, "status": status, "attempts": attempts,
             "releaseReason": event["releaseReason"]}
        )

    def _release_event(
        self, cfg: SimulatorConfig, serial: str, created: float, body: dict[str, Any], ring: float
    ) -> dict[str, str]:
        released = time.time()
        answered = self._rng.random() < cfg.answer_rate
        talking = created + ring * 0.4
        caller = body.get("callerPresent")
        event = {
            "callSerialNo": serial,
            "called": body["called"],
            "callerPresent": caller if isinstance(caller, str) else "",
            "createCallTime": _call_time(created),
            "alertingTime": _call_time(created + ring * 0.1),
            "talkingTime": _call_time(talking) if answered else "",
            "releaseTime": _call_time(released),
            "talkDuration": str(max(0, int(released - talking))) if answered else "0",
            "releaseReason": "1" if answered else "4",
            "recordfile": "",
            "locationId": "0",
            "timestamp": str(int(released * 1000)),
            "nonce": str(self._rng.getrandbits(64) - 2**63),
        }
        if cfg.callback_shared_key is not None:
            event["signature"] = release_signature(
                event, cfg.callback_shared_key, event["timestamp"], event["nonce"],
                cfg.callback_signature_mode, cfg.callback_signature_spaces,
            )
        return event

    async def _post_event(self, url: str, event: dict[str, str]) -> tuple[int | None, int]:
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=_CALLBACK_TIMEOUT_S))
        status: int | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.post(url, json=event) as resp:
                    status = resp.status
                    await resp.read()
                if 200 <= status < 300:
                    return status, attempt
            except (ClientError, OSError, TimeoutError, ValueError) as exc:
                status = None
                logger.debug("simulator: callback to %s failed: %r", url, exc)
            if attempt > _CALLBACK_RETRIES:
                return status, attempt
            await asyncio.sleep(_CALLBACK_BACKOFF_S * 2 ** (attempt - 1))

    async def _close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


SIM_STATE = web.AppKey("SIM_STATE", SimulatorState)


def _call_time(ts: float) -> str:
    """The provider's time format, ``2022/02/22,10:04:28:823`` (UTC here)."""
    dt = datetime.fromtimestamp(ts, UTC)
    return f"{dt:%Y/%m/%d,%H:%M:%S}:{dt.microsecond // 1000:03d}"


def _b64_url(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _validate(body: dict[str, Any], base64_url: bool) -> tuple[int, str, str] | None:
    """The first rule ``body`` breaks as (HTTP status, retCode, retMsg), or None. null means absent.

    Lengths are counted in characters, as the seed's ``string(32)`` reads, except templateParams
    values, which retCode 13 counts in bytes ("a variable over 32 bytes")."""
    called = body.get("called")
    if not isinstance(called, str) or len(called) > 32 or not _CALLED_RE.fullmatch(called):
        return 200, "5", "called: must be a string of up to 32 digits with an optional leading '+'"
    play = body.get("playList")
    if not isinstance(play, list) or not 1 <= len(play) <= 5:
        return 200, "11", "playList: must hold 1 to 5 items"
    for i, item in enumerate(play):
        if not isinstance(item, dict):
            return 200, "12", f"playList[{i}]: must be an object with one of voiceId, voiceFileName, templateId"
        # The seed: "One of voiceId, voiceFileName, and templateId must be set". Several sources in one
        # item get retCode 12 too: 12 is the code of that rule (which source an item plays), while 11
        # is about the list's length.
        sources = 0
        for key in _SOURCES:
            value = item.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                return 200, "12", f"playList[{i}].{key}: must be a non-empty string"
            sources += 1
        if sources != 1:
            return 200, "12", (f"playList[{i}]: voiceId, voiceFileName and templateId are all empty" if not sources
                               else f"playList[{i}]: exactly one of voiceId, voiceFileName, templateId may be set")
        params = item.get("templateParams")
        if params is None:
            continue
        if not isinstance(params, list) or not 1 <= len(params) <= 10:
            return 200, "15", f"playList[{i}].templateParams: must hold 1 to 10 strings"
        for j, p in enumerate(params):
            if not isinstance(p, str):
                return 200, "13", f"playList[{i}].templateParams[{j}]: must be a string"
            if _FORBIDDEN_PARAM_RE.search(p):
                return 200, "14", f"playList[{i}].templateParams[{j}]: may not contain '$', '{{' or '}}'"
            if len(p.encode()) > 32:
                return 200, "13", f"playList[{i}].templateParams[{j}]: is over 32 bytes"
    caller = body.get("callerPresent")
    if caller is not None and (not isinstance(caller, str) or len(caller) > 32):
        return 200, "7", "callerPresent: must be a string of up to 32 characters"
    url = body.get("callBackUrl")
    if url is not None:
        problem = _url_problem(url, base64_url)
        if problem is not None:
            return 200, "9", "callBackUrl: " + problem
    times = body.get("playTimes")
    if times is not None and (not _is_int(times) or not 1 <= times <= 5):
        return 200, "10", "playTimes: must be an integer from 1 to 5"
    priority = body.get("priority")
    if priority is not None and (not isinstance(priority, str) or priority not in _PRIORITIES):
        return 400, "400", 'priority: must be a string "1".."9"'
    return None


def _url_problem(url: object, base64_url: bool) -> str | None:
    """Why a callBackUrl breaks the seed's string(256) or cec_07_2802's rules, or None."""
    if not isinstance(url, str) or len(url) > _MAX_URL:
        if base64_url:
            return f"must be Base64 text of up to {_MAX_URL} characters"
        return f"must be a string of up to {_MAX_URL} characters"
    if base64_url:
        decoded = _b64_url(url)
        if decoded is None:
            return "must be Base64 (DIALER_CALLBACK_URL_BASE64 mode) of a UTF-8 URL"
        url = decoded
    if not _URL_CHARS_RE.fullmatch(url):
        return "may contain only a-zA-Z0-9-:./_#?& (cec_07_2802)"
    if not _URL_RE.match(url):
        return "must be an http:// or https:// URL with a host"
    return None


def _tenant_refusal(body: dict[str, Any], cfg: SimulatorConfig) -> tuple[str, str] | None:
    """(retCode, retMsg) when the tenant's own setup refuses a well-formed request, or None."""
    if not cfg.vdn_enabled:
        return "6", "VDN: not enabled for this tenant"
    if cfg._allowed is not None and body["called"] not in cfg._allowed:
        return "16", "called: not on the trial tenant's allowlist"
    if cfg._callers is not None:
        caller = body.get("callerPresent")
        if caller is not None and caller not in cfg._callers:
            return "7", "callerPresent: not one of the tenant's CLIP numbers"
    if cfg._voices is not None:
        for i, item in enumerate(body["playList"]):
            voice = item.get("voiceId")
            if voice is not None and voice not in cfg._voices:
                return "17", f"playList[{i}].voiceId: no such voice file"
    return None


def _answer(entry: dict[str, Any], status: int, outcome: str, ret_code: str, ret_msg: str) -> web.Response:
    entry["status"] = status
    entry["retCode"] = ret_code
    entry["outcome"] = outcome
    return web.json_response({"retCode": ret_code, "retMsg": ret_msg}, status=status)


def _created(serial: str) -> web.Response:
    return web.Response(
        body=b'{"retMsg":"Created successfully.","retCode":"0","result":{"callSerialNo":"'
        + serial.encode() + b'"}}',
        content_type="application/json",
    )


def _created_oddly(serial: str, quirk: str) -> web.Response:
    """A created call's answer without retCode ("no_retcode") or without result ("no_serial")."""
    if quirk == "no_retcode":
        body = b'{"retMsg":"Created successfully.","result":{"callSerialNo":"' + serial.encode() + b'"}}'
    else:
        body = b'{"retMsg":"Created successfully.","retCode":"0"}'
    return web.Response(body=body, content_type="application/json")


_ACCOUNT_REFUSED_MSG = ("Unauthorized operation. 1. Check whether you have purchased related services. "
                        "2. Contact customer service to check the status of your account.")


async def _create_voice_notification(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    cfg = state.config
    headers = request.headers
    app_key = headers.get("X-APP-Key")
    auth_ok = state._token_valid(headers.get("Authorization"))
    state._seq += 1
    # Atomic values only: see SimulatorState on why the collector must never walk the log.
    entry: dict[str, Any] = {
        "seq": state._seq, "ts": time.time(), "called": None, "priority": "9", "status": None,
        "retCode": None, "callSerialNo": None, "outcome": None, "quirk": None, "_body": None,
        "_app_key": app_key, "_auth_ok": auth_ok,
    }
    state.log.append(entry)
    body = _decode_body(entry, await request.read())
    if isinstance(body, dict):
        entry["called"] = body.get("called")
        if body.get("priority") is not None:
            entry["priority"] = body["priority"]

    if not auth_ok:
        return _answer(entry, 401, "auth", "401", "Unauthorized: missing, unknown or expired token")
    if app_key is not None and app_key != cfg.app_key:
        return _answer(entry, 403, "auth", "403", "Authentication failed: X-APP-Key does not match")
    if cfg.account_refused:
        return _answer(entry, 401, "account_refused", "401", _ACCOUNT_REFUSED_MSG)
    if cfg.max_rps is not None and not state._admit(cfg.max_rps):
        return _answer(entry, 500, "rate", "500", "rate exceeded")
    if not isinstance(body, dict):
        return _answer(entry, 400, "invalid", "400", "body: must be a JSON object")
    problem = _validate(body, cfg.callback_url_base64)
    if problem is not None:
        return _answer(entry, problem[0], "invalid", problem[1], problem[2])
    refusal = _tenant_refusal(body, cfg)
    if refusal is not None:
        return _answer(entry, 200, "retcode" + refusal[0], refusal[0], refusal[1])

    rng = state._rng
    if cfg.hang_rate and rng.random() < cfg.hang_rate:
        serial = state._create(entry, body, "hang")
        await state._hang(cfg.hang_s)
        return _created(serial)
    if cfg.fail_500_rate and rng.random() < cfg.fail_500_rate:
        return _answer(entry, 500, "500", "500", "Business failure.")
    if cfg.retcode1_rate and rng.random() < cfg.retcode1_rate:
        return _answer(entry, 200, "retcode1", "1", _RET_MSGS["1"])
    if cfg._ret_draw:
        u = rng.random()
        for edge, code in cfg._ret_draw:
            if u < edge:
                return _answer(entry, 200, "retcode" + code, code, _RET_MSGS[code])
    quirk = None
    if cfg.no_ret_code_rate and rng.random() < cfg.no_ret_code_rate:
        quirk = "no_retcode"
    elif cfg.no_serial_rate and rng.random() < cfg.no_serial_rate:
        quirk = "no_serial"
    serial = state._create(entry, body, "created")
    if quirk is not None:
        entry["quirk"] = quirk
        if quirk == "no_retcode":
            entry["retCode"] = None
    delay_ms = cfg.latency_ms + (rng.uniform(0, cfg.jitter_ms) if cfg.jitter_ms else 0.0)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    return _created(serial) if quirk is None else _created_oddly(serial, quirk)


def _decode_body(entry: dict[str, Any], raw: bytes) -> Any:
    """The request's JSON (None if it is not JSON); its text goes into ``entry``, not the object."""
    try:
        text = raw.decode()
        body = json.loads(text)
    except ValueError:
        return None
    entry["_body"] = text
    return body


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A log entry as ``GET /_sim/log`` serves it: the body as JSON (None if it was not JSON) and the
    headers that were checked, ``{"X-APP-Key": ..., "Authorization-ok": ...}``."""
    out = {k: v for k, v in entry.items() if k[0] != "_"}
    out["body"] = None if entry["_body"] is None else json.loads(entry["_body"])
    out["headers"] = {"X-APP-Key": entry["_app_key"], "Authorization-ok": entry["_auth_ok"]}
    return out


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"retCode": str(status), "retMsg": message}, status=status)


async def _token_by_ak_sk(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    cfg = state.config
    state.token_requests += 1
    try:
        data = json.loads(await request.read())
    except ValueError:
        data = None
    key = data.get("app_key") if isinstance(data, dict) else None
    secret = data.get("app_secret") if isinstance(data, dict) else None
    if not (
        isinstance(key, str) and isinstance(secret, str)
        and hmac.compare_digest(key.encode(), cfg.app_key.encode())
        and hmac.compare_digest(secret.encode(), cfg.app_secret.encode())
    ):
        return _error(401, "app_key or app_secret is wrong, or the body is not {app_key, app_secret}")
    if cfg.token_lifetime_s is not None:
        lifetime = cfg.token_lifetime_s
    else:
        raw = request.headers.get("X-Token-Expire", str(_DEFAULT_TOKEN_LIFETIME_S))
        try:
            lifetime = int(raw)
        except ValueError:
            lifetime = 0
        if not 1 <= lifetime <= _MAX_TOKEN_LIFETIME_S:
            return _error(400, f"X-Token-Expire: must be an integer from 1 to {_MAX_TOKEN_LIFETIME_S}")
    token = state._issue_token(lifetime)
    return web.json_response({
        "AccessToken": token, "ApplyType": "Bearer", "CreateTime": str(int(time.time())),
        "Expires": str(lifetime), "Scope": "all", "AppKey": cfg.app_key, "UserID": "Anonymous",
    })


async def _get_log(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    try:
        since = int(request.query.get("since", "0"))
        limit = int(request.query["limit"]) if "limit" in request.query else None
    except ValueError:
        return _error(400, "since and limit must be integers")
    start = max(0, since + 1 - state._first_seq)
    page = state.log[start:] if limit is None else state.log[start:start + max(0, limit)]
    return web.json_response({
        "requests": [public_entry(e) for e in page], "tokens_issued": state.tokens_issued,
        "token_requests": state.token_requests,
        "callbacks": state.callbacks,
    })


async def _reset(request: web.Request) -> web.Response:
    request.app[SIM_STATE].reset()
    return web.json_response({"ok": True})


def _public_config(cfg: SimulatorConfig) -> dict[str, Any]:
    out = {name: getattr(cfg, name) for name in _CONFIG_NAMES}
    for name in _SECRET_FIELDS:
        if out[name] is not None:
            out[name] = "**********"
    return out


async def _patch_config(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    try:
        patch = json.loads(await request.read())
    except ValueError:
        patch = None
    if not isinstance(patch, dict):
        return _error(400, "body: must be a JSON object of SimulatorConfig fields")
    unknown = sorted(set(patch) - _CONFIG_FIELDS)
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(unknown)}")
    try:
        new = dataclasses.replace(state.config, **patch)
    except ValueError as exc:
        return _error(400, str(exc))
    state.config = new
    if "seed" in patch:
        state._rng.seed(new.seed)
    return web.json_response({"config": _public_config(new)})


async def _revoke(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    revoked = len(state.tokens)
    state.tokens.clear()
    return web.json_response({"revoked": revoked})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _on_shutdown(app: web.Application) -> None:
    app[SIM_STATE]._closing.set()


async def _on_cleanup(app: web.Application) -> None:
    await app[SIM_STATE]._close()


def create_app(config: SimulatorConfig | None = None) -> web.Application:
    """The simulator as an aiohttp app; its live state is ``app[SIM_STATE]``."""
    app = web.Application()
    app[SIM_STATE] = SimulatorState(config or SimulatorConfig())
    app.router.add_post(_TOKEN_PATH, _token_by_ak_sk)
    app.router.add_post(_CREATE_PATH, _create_voice_notification)
    app.router.add_get("/_sim/log", _get_log)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_post("/_sim/config", _patch_config)
    app.router.add_post("/_sim/revoke", _revoke)
    app.router.add_get("/_sim/health", _health)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the simulator until SIGINT/SIGTERM (``dialer simulator``); no access log, for speed."""
    logger.info("provider simulator listening on http://%s:%d", host, port)
    app = create_app(config)
    freeze_start_up_objects()
    web.run_app(
        app, host=host, port=port, access_log=None, print=None, backlog=1024,
        shutdown_timeout=2.0,
    )
