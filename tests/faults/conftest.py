"""Shared machinery of the fault suite: child processes with their output in files, the simulator as a
restartable subprocess whose request log survives its restarts, ledger snapshots, reconciliation.

Scale: ``DIALER_FAULTS=full`` selects the full sizes (``scale(ci, full)``). Figures: every scenario calls
:func:`report`, which prints them and, when ``DIALER_FAULTS_REPORT`` names a file, appends them there as
one JSON object per line (``scripts/faults`` collects them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.helpers import free_port, wait_until
from worker.ledger.record import JobRecord
from worker.ledger.states import FINAL_STATES, State
from worker.settings import Settings
from worker.store.keys import Keys

FULL = os.environ.get("DIALER_FAULTS", "").strip().lower() == "full"
"""Full sizes (``DIALER_FAULTS=full``); otherwise the short versions the normal test run uses."""

ROOT = Path(__file__).resolve().parents[2]


def scale(ci: int, full: int) -> int:
    """``full`` when running the full suite, else ``ci``."""
    return full if FULL else ci


def report(scenario: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures (visible with ``-s``) and append them to ``$DIALER_FAULTS_REPORT``."""
    mode = "full" if FULL else "ci"
    print(f"\n=== {scenario} ({mode}) ===")
    for name, value in figures.items():
        print(f"  {name:<34} {value}")
    path = os.environ.get("DIALER_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"scenario": scenario, "mode": mode, "figures": figures}, default=str) + "\n")


def body(called: str, priority: int = 9, **extra: Any) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a"]}],
            "priority": str(priority), **extra}


# --- child processes -------------------------------------------------------------------------------


class Child:
    """A ``python -m worker.cli ...`` subprocess; stdout and stderr go to files (a pipe nobody reads
    would fill up and block a busy worker's logging)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, out: IO[bytes], err: IO[bytes],
                 out_path: Path, err_path: Path) -> None:
        self.name = name
        self.proc = proc
        self._files = (out, err)
        self.out_path = out_path
        self.err_path = err_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        self.close_files()
        return rc

    async def stop(self, timeout: float = 45) -> int:
        """SIGTERM (a worker drains), then SIGKILL if it outstays ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return await self.wait(10)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait(10)

    def close_files(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")


class Procs:
    """Starts children and, at teardown, kills any still running (by pid, only ours)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[Child] = []
        self._n = 0

    async def start(self, name: str, *args: str, env: dict[str, str]) -> Child:
        self._n += 1
        stem = f"{self._n:03d}-{name}"
        out_path, err_path = self.logdir / f"{stem}.out", self.logdir / f"{stem}.err"
        out, err = out_path.open("wb"), err_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", *args, env={**os.environ, **env}, cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
        )
        child = Child(name, proc, out, err, out_path, err_path)
        self.children.append(child)
        return child

    def output(self) -> str:
        """Everything every child wrote so far."""
        return "".join(c.output() for c in self.children)

    def problems(self) -> list[str]:
        """Lines of every child's output that report a crash or an unexpected error."""
        marks = ("Traceback", "unexpected error", "CRITICAL", "Task exception was never retrieved")
        return [line for line in self.output().splitlines() if any(m in line for m in marks)]

    async def close(self) -> None:
        for c in self.children:
            if c.alive:
                c.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await c.wait(10)
            c.close_files()


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    p = Procs(logdir)
    try:
        yield p
    finally:
        await p.close()


def fault_settings(settings: Settings, **update: Any) -> Settings:
    """Settings for fault scenarios: a killed worker's jobs come back after 15 + 10 s, requests time
    out after 3 s; ``update`` on top."""
    base: dict[str, Any] = {
        "job_timeout_s": 15.0, "request_timeout_s": 3.0, "connect_timeout_s": 1.0,
        "retry_base_s": 0.05, "retry_max_backoff_s": 0.5, "poll_delay_s": 0.05,
        "max_in_flight": 200, "drain_timeout_s": 10,
    }
    return settings.model_copy(update={**base, **update})


# --- the simulator as a subprocess ------------------------------------------------------------------


class SimProcess:
    """``dialer simulator`` on a fixed port, stoppable and restartable on the same port.

    The simulator's request log lives in its memory, so it is lost when the process stops: ``sync()``
    copies new entries into ``requests`` (each tagged with ``life``, the process incarnation), and
    ``token_requests`` adds up tokenByAkSk calls over every incarnation. Call ``sync()`` before stopping.
    """

    def __init__(self, procs: Procs, env: dict[str, str], *flags: str) -> None:
        self.procs = procs
        self.env = env
        self.flags = flags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None
        self.life = 0
        self.requests: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.token_requests = 0
        self.tokens_issued = 0
        self._seen_seq = 0
        self._life_tokens = (0, 0)
        self._life_callbacks = 0
        self._config: dict[str, Any] = {}

    async def start(self, config: dict[str, Any] | None = None) -> None:
        """Start (again, on the same port); ``config`` replaces the fault config re-applied at start."""
        if config is not None:
            self._config = dict(config)
        self.life += 1
        self._seen_seq = 0
        self._life_tokens = (0, 0)
        self._life_callbacks = 0
        self.child = await self.procs.start(
            f"simulator{self.life}", "simulator", "--port", str(self.port), *self.flags, env=self.env
        )

        async def up() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url + "/_sim/health") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                assert self.child is not None and self.child.alive, self.child.output() if self.child else ""
                return False

        await wait_until(up, 30, 0.05, "simulator up")
        if self._config:
            await self.configure(**self._config)

    async def configure(self, **patch: Any) -> None:
        """Patch the fault config; it is re-applied after a restart."""
        self._config.update(patch)
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_sim/config", json=patch) as r:
            assert r.status == 200, await r.text()

    async def revoke(self) -> int:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_sim/revoke") as r:
            assert r.status == 200
            return int((await r.json())["revoked"])

    async def sync(self) -> list[dict[str, Any]]:
        """Fetch the entries logged since the last sync; returns them (also kept in ``requests``)."""
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(
            self.url + "/_sim/log", params={"since": str(self._seen_seq)}
        ) as r:
            r.raise_for_status()
            data = await r.json()
        new = data["requests"]
        for entry in new:
            entry["life"] = self.life
        if new:
            self._seen_seq = new[-1]["seq"]
        self.requests += new
        prev_req, prev_issued = self._life_tokens
        self.token_requests += data["token_requests"] - prev_req
        self.tokens_issued += data["tokens_issued"] - prev_issued
        self._life_tokens = (data["token_requests"], data["tokens_issued"])
        self.callbacks += data["callbacks"][self._life_callbacks:]
        self._life_callbacks = len(data["callbacks"])
        return list(new)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.child is not None
        self.child.signal(sig)
        await self.child.wait(30)
        self.child = None


# --- ledger snapshots and reconciliation -----------------------------------------------------------


async def count_states(redis: aioredis.Redis, settings: Settings, job_ids: list[str]) -> Counter[str]:
    """How many jobs are in each ledger state ("missing": no record)."""
    keys = Keys(settings.key_prefix)
    counts: Counter[str] = Counter()
    for start in range(0, len(job_ids), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for j in job_ids[start:start + 5000]:
                pipe.hget(keys.job(j), "state")
            raw = await pipe.execute()
        counts.update("missing" if v is None else v.decode() for v in raw)
    return counts


def not_final(counts: Counter[str]) -> int:
    return sum(n for s, n in counts.items() if s not in {str(x) for x in FINAL_STATES})


async def wait_final(
    redis: aioredis.Redis, settings: Settings, job_ids: list[str], timeout: float, workers: list[Child]
) -> Counter[str]:
    """Wait until every job is final, or ``timeout`` passes, or no worker is left alive (nothing more
    would happen); returns the last state counts. The caller reports its figures, then asserts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await count_states(redis, settings, job_ids)
        if not_final(counts) == 0 or time.monotonic() > deadline or not any(w.alive for w in workers):
            return counts
        await asyncio.sleep(0.5)


CALL_OUTCOMES = ("created", "hang")
"""Simulator outcomes for which the provider created a call (``hang``: created, answer held back)."""


@dataclass
class Reconciliation:
    """The ledger of a set of jobs (one number each) against the simulator's request log."""

    states: Counter[str]
    lost: list[str]  # not final (or no record) at the end
    calls_per_job: dict[str, list[dict[str, Any]]]  # job id -> log entries that created a call
    multi_called: list[str]  # jobs with two or more created calls
    sent_without_call: list[str]
    sent_serial_mismatch: list[str]
    unknown_called: list[str]  # unknown jobs whose request did create a call (at most one)
    unknown_not_called: list[str]
    called_but_not_sent_or_unknown: list[str]
    stray_calls: int  # created calls for numbers that belong to none of the jobs
    requests: int
    outcomes: Counter[str] = field(default_factory=Counter)

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": sum(self.states.values()),
            "states": dict(sorted(self.states.items())),
            "lost (not final)": len(self.lost),
            "provider requests": self.requests,
            "request outcomes": dict(sorted(self.outcomes.items())),
            "jobs called twice or more": len(self.multi_called),
            "sent without a created call": len(self.sent_without_call),
            "sent with another serial": len(self.sent_serial_mismatch),
            "unknown, call created": len(self.unknown_called),
            "unknown, no call created": len(self.unknown_not_called),
            "called, neither sent nor unknown": len(self.called_but_not_sent_or_unknown),
        }


def reconcile(records: dict[str, JobRecord | None], requests: list[dict[str, Any]]) -> Reconciliation:
    by_number: dict[str, str] = {}
    for job_id, rec in records.items():
        if rec is not None:
            assert rec.called not in by_number, f"two jobs share {rec.called}: the reconciliation needs one each"
            by_number[rec.called] = job_id
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stray = 0
    for entry in requests:
        if entry["outcome"] in CALL_OUTCOMES:
            owner = by_number.get(entry["called"])
            if owner is None:
                stray += 1
            else:
                calls[owner].append(entry)
    states: Counter[str] = Counter()
    lost: list[str] = []
    no_call: list[str] = []
    mismatch: list[str] = []
    unk_called: list[str] = []
    unk_not: list[str] = []
    other: list[str] = []
    for job_id, rec in records.items():
        state = "missing" if rec is None else str(rec.state)
        states[state] += 1
        made = calls.get(job_id, [])
        if rec is None or not rec.is_final:
            lost.append(job_id)
            continue
        if rec.state == State.SENT:
            if not made:
                no_call.append(job_id)
            elif made[0]["callSerialNo"] != rec.call_serial_no:
                mismatch.append(job_id)
        elif rec.state == State.UNKNOWN:
            (unk_called if made else unk_not).append(job_id)
        elif made:
            other.append(job_id)
    return Reconciliation(
        states=states, lost=lost, calls_per_job=dict(calls),
        multi_called=sorted(j for j, m in calls.items() if len(m) > 1),
        sent_without_call=no_call, sent_serial_mismatch=mismatch, unknown_called=unk_called,
        unknown_not_called=unk_not, called_but_not_sent_or_unknown=other, stray_calls=stray,
        requests=len(requests), outcomes=Counter(str(e["outcome"]) for e in requests),
    )


def assert_no_double_calls(rec: Reconciliation, records: dict[str, JobRecord | None]) -> None:
    """0 lost, nobody called twice, every sent job matches its one created call."""
    detail = {j: [(e["life"], e["seq"], e["outcome"], e["callSerialNo"]) for e in rec.calls_per_job[j]]
              for j in rec.multi_called[:5]}
    assert not rec.lost, f"{len(rec.lost)} jobs never reached a final state, e.g. {rec.lost[:5]}"
    assert not rec.multi_called, (
        f"{len(rec.multi_called)} jobs called twice: {detail}; their records: "
        f"{[records[j] for j in rec.multi_called[:3]]}"
    )
    assert not rec.sent_without_call, rec.sent_without_call[:5]
    assert not rec.sent_serial_mismatch, rec.sent_serial_mismatch[:5]
    assert not rec.called_but_not_sent_or_unknown, rec.called_but_not_sent_or_unknown[:5]
    assert rec.stray_calls == 0


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), n):
        yield items[start:start + n]
