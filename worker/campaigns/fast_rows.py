"""The launcher's fast path for CSV rows: plain checks instead of a pydantic model per row.

A campaign's common fields (its defaults, priority, callBackUrl) are validated once, with the model
(:class:`~worker.models.CallRequest`), when the launch starts. What depends on the row — ``called``,
``priority``, ``callerPresent``, ``playTimes``, the sources and ``templateParams``, ``id``, ``timezone``,
``statusCallbackUrl`` — is checked here with precompiled patterns and plain code, by the same rules
(``worker/models.py``, ``worker/rules.py``). The checks only ever *accept*: a row they do not accept goes to
the full path (the model), which names the field and rule exactly as it always did. So the fast path can
never refuse a row the model accepts, nor give another message; ``tests/campaigns/test_fast_rows.py``
holds it to accepting nothing the model refuses, and to building the same job, on generated rows.

    fast = FastCsv(header, spec, name="spring", number_key=normalize_number)
    row = fast.row(cells)     # a CompactRow, or None: take the full path
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from worker.campaigns.control import CampaignSpec
from worker.campaigns.rows import CompactRow, called_code
from worker.models import CALLED_RE, FORBIDDEN_PARAM_CHARS, PRIORITIES, CallRequest
from worker.rules import strip_number_formatting, valid_producer_id, valid_timezone
from worker.status_callback import url_problem as status_callback_problem

__all__ = ["FastCsv"]

_SOURCE_MAX = {"voiceId": 64, "templateId": 64, "voiceFileName": 256}
_MEMO_MAX = 4096


class FastCsv:
    """Checks CSV rows (lists of cells, in the header's order) of one launch."""

    def __init__(
        self,
        header: Sequence[str],
        spec: CampaignSpec,
        *,
        name: str,
        number_key: Callable[[str], str],
        id_room: int | None = None,
        allow_private: bool = False,
    ) -> None:
        """``number_key``: the number's key (raises ValueError for a number the full path refuses);
        ``id_room``: the longest job id the callBackUrl leaves room for (None: no limit)."""
        self._width = len(header)
        col = {c: i for i, c in enumerate(header)}
        self._called = col["called"]
        self._cols = [col.get(c, -1) for c in ("priority", "callerPresent", "templateParams", "playTimes", "id",
                                                "timezone", "statusCallbackUrl")]
        self._sources = [(k, col[k]) for k in _SOURCE_MAX if k in col]
        self._name_len = len(name) + 1
        self._key = number_key
        self._room = id_room
        self._allow_private = allow_private
        d = spec.defaults
        self._prio = str(spec.priority) if spec.priority is not None else None
        self._caller = d.get("callerPresent")
        self._play_times = d.get("playTimes")
        self._params = d.get("templateParams")
        self._has_default_source = any(k in d for k in _SOURCE_MAX)
        self._zones: dict[str, bool] = {}
        self._urls: dict[str, bool] = {}
        self.enabled = self._common_fields_valid(spec)
        """False when the campaign's own fields fail the model: every row then takes the full path."""

    def _common_fields_valid(self, spec: CampaignSpec) -> bool:
        d = spec.defaults
        body: dict[str, Any] = {k: d[k] for k in ("callerPresent", "playTimes") if k in d}
        if spec.callback_url is not None:
            body["callBackUrl"] = spec.callback_url
        if self._prio is not None:
            body["priority"] = self._prio
        item = {k: d[k] for k in (*_SOURCE_MAX, "templateParams") if k in d} or {"voiceId": "1"}
        try:
            CallRequest.model_validate({"called": "1", "playList": [item], **body})
        except ValidationError:
            return False
        return True

    def row(self, cells: list[str]) -> CompactRow | None:
        """The row's compact form when every check passes, else None (the caller takes the full path)."""
        if len(cells) != self._width or not self.enabled:
            return None
        called = cells[self._called].strip()
        if CALLED_RE.fullmatch(called) is None:
            called = strip_number_formatting(called)
            if CALLED_RE.fullmatch(called) is None:
                return None
        try:
            key = self._key(called)
        except ValueError:
            return None
        c_prio, c_caller, c_params, c_times, c_id, c_tz, c_scb = self._cols
        priority = cells[c_prio].strip() if c_prio >= 0 else ""
        if priority:
            if priority not in PRIORITIES:
                return None
            if priority == self._prio:
                priority = ""
        caller = cells[c_caller].strip() if c_caller >= 0 else ""
        if caller:
            if len(caller) > 32:
                return None
            if caller == self._caller:
                caller = ""
        play_times = 0
        if c_times >= 0 and (t := cells[c_times].strip()):
            if t not in ("1", "2", "3", "4", "5"):
                return None
            play_times = int(t)
            if play_times == self._play_times:
                play_times = 0
        params: tuple[str, ...] | None = None
        if c_params >= 0 and (p := cells[c_params].strip()):
            if not FORBIDDEN_PARAM_CHARS.isdisjoint(p):
                return None
            parts = p.split("|")
            if len(parts) > 10:
                return None
            if "" in parts or max(map(len, parts) if p.isascii() else (len(x.encode()) for x in parts)) > 32:
                return None
            params = tuple(parts)
        play_list = None
        own = [(k, v) for k, i in self._sources if (v := cells[i].strip())]
        if own:
            if len(own) != 1:
                return None
            source, value = own[0]
            if len(value) > _SOURCE_MAX[source]:
                return None
            item: dict[str, object] = {source: value}
            item_params = params if params is not None else self._params
            if item_params is not None:
                item["templateParams"] = list(item_params)
            play_list = (item,)
            params = None
        elif not self._has_default_source:
            return None
        job_id = cells[c_id].strip() if c_id >= 0 else ""
        if job_id and not valid_producer_id(job_id):
            return None
        if self._room is not None and (len(job_id) if job_id else self._name_len + len(key)) > self._room:
            return None
        tz = cells[c_tz].strip() if c_tz >= 0 else ""
        if tz:
            ok = self._zones.get(tz)
            if ok is None:
                if len(self._zones) >= _MEMO_MAX:
                    self._zones.clear()
                ok = self._zones[tz] = valid_timezone(tz)
            if not ok:
                return None
        scb = cells[c_scb].strip() if c_scb >= 0 else ""
        if scb:
            ok = self._urls.get(scb)
            if ok is None:
                if len(self._urls) >= _MEMO_MAX:
                    self._urls.clear()
                ok = self._urls[scb] = status_callback_problem(scb, allow_private=self._allow_private) is None
            if not ok:
                return None
        return CompactRow(key, called_code(called, key), priority, caller, play_times, params, play_list, "",
                          job_id, tz, scb)
