"""The engine seam's contract with arq (worker/dispatch/engine.py overrides arq internals, so arq is
pinned): each internal the seam touches must exist on the installed arq, and each fact it copies
(key names, the try counter's TTL, the job format) must still be arq's. An arq upgrade that renames or
removes one fails here, naming it."""

from __future__ import annotations

import inspect
from typing import Any

import arq
import arq.constants
import arq.jobs
import arq.worker
import pytest
from arq import Retry
from arq.worker import Function, Worker, func

from worker.dispatch import engine
from worker.store import keys as store_keys
from worker.store.keys import Keys


async def _noop(ctx: dict[str, Any]) -> None:
    return None


def _plain_worker() -> Worker:
    return Worker(functions=[func(_noop, name="noop")], queue_name="contract:queue:1", handle_signals=False)


def _owner(kind: str) -> object:
    return {"Worker": Worker, "Worker()": _plain_worker(), "Function": func(_noop, name="noop"),
            "Retry()": Retry(defer=1)}[kind]


def test_the_pinned_arq_is_installed() -> None:
    assert arq.VERSION == "0.28.0", f"the seam is written against arq 0.28.0, found {arq.VERSION}"


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in engine.ARQ_INTERNALS.items() for n in names])
def test_every_arq_internal_the_seam_touches_exists(kind: str, name: str) -> None:
    owner = _owner(kind)
    assert hasattr(owner, name), f"arq {arq.VERSION}: {kind}.{name} is gone; the engine seam uses it"


def test_the_methods_the_seam_overrides_keep_their_signatures() -> None:
    expected = {
        "start_jobs": ["self", "job_ids"],
        "run_job": ["self", "job_id", "score"],
        "main": ["self"],
    }
    for name, params in expected.items():
        got = list(inspect.signature(getattr(Worker, name)).parameters)
        assert got == params, f"arq Worker.{name}{tuple(got)} no longer takes {tuple(params)}"
    assert isinstance(func(_noop, name="noop"), Function)


def test_the_key_names_the_dialer_copies_are_arqs() -> None:
    for name in ("job_key_prefix", "in_progress_key_prefix", "retry_key_prefix", "result_key_prefix"):
        assert getattr(store_keys, name) == getattr(arq.constants, name), f"arq's {name} changed"
    # A queue's heartbeat: what arq's Worker refreshes is what the fleet view and --check read.
    keys = Keys("contract:")
    w = Worker(functions=[func(_noop, name="noop")], queue_name=keys.queue(4), handle_signals=False)
    assert w.health_check_key == keys.queue_health(4)


def test_the_try_counter_ttl_the_claim_sets_is_arqs() -> None:
    # claim.lua sets arq's try counter with the TTL arq's own run_job gives it.
    source = inspect.getsource(arq.worker.Worker.run_job)
    assert f"retry_key_prefix + job_id, {engine.ARQ_TRY_TTL_S}" in source, "arq's try counter TTL changed"


def test_the_job_the_claim_writes_is_one_arq_reads() -> None:
    written = engine.DIAL_JOB_HEAD + b"1700000000000}"
    job = arq.jobs.deserialize_job(written, deserializer=engine.loads_job)
    assert (job.function, list(job.args), job.kwargs, job.job_try) == (engine.DIAL_FUNCTION, [], {}, 1)
    assert job.enqueue_time.year == 2023
