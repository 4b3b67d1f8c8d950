"""P4 (bulk enqueue speed) and P5 (Redis memory per queued job, and where it goes)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import _dialer
from bench._harness import Run, body, environment
from bench._report import Config, Result, ratio
from worker.ledger.producer import Producer
from worker.store.keys import Keys


async def p4(cfg: Config) -> Result:
    n = 20_000 if cfg.quick else 100_000
    m = 2000 if cfg.quick else 10_000
    res = Result(
        "P4", "bulk enqueue of 100k validated jobs via enqueue_many",
        f"`Producer.enqueue_many` of {n} seed-shaped dicts (157-byte bodies; pydantic validation, a random job id, "
        f"ledger record and queue entry per item: the worker writes the arq job when it claims the job), timed "
        f"from the call to its return, in this process, against a private redis-server. Baseline: a plain loop "
        f"of `await pool.enqueue_job('call', **body)` (arq, pickle) over {m} of the same bodies, as jobs/s.",
        sizes=f"{n} jobs; arq loop {m}{', QUICK' if cfg.quick else ''}",
    )
    bodies = [body(i) for i in range(n)]
    ours: list[float] = []
    loop: list[float] = []
    async with environment() as run:
        settings = _dialer.settings(run)
        for _ in range(cfg.runs):
            await run.reset()
            producer = Producer(run.redis.client, settings)
            t = time.perf_counter()
            results = await producer.enqueue_many(bodies)
            ours.append(n / (time.perf_counter() - t))
            accepted = sum(1 for r in results if r.status == "accepted")
            if accepted != n or await run.redis.client.zcard(Keys(settings.key_prefix).queue(9)) != n:
                raise RuntimeError(f"enqueue_many accepted {accepted} of {n}")
            await run.reset()
            pool = await _dialer.arq_pool(run)
            try:
                t = time.perf_counter()
                for b in bodies[:m]:
                    await pool.enqueue_job("call", **b)
                loop.append(m / (time.perf_counter() - t))
            finally:
                await pool.aclose()
    f_o = res.add("ours: Producer.enqueue_many", ours, "jobs/s")
    f_l = res.add("arq enqueue_job loop", loop, "jobs/s")
    r = ratio(f_o.median, f_l.median)
    res.check("≥ 20k jobs/s", f"{f_o.fmt()}/s", f_o.median >= 20_000)
    res.check("≥ 10x the loop", f"{r:.1f}x", r >= 10)
    res.summary_ours = f"{f_o.fmt()} jobs/s"
    res.summary_baseline = f"{f_l.fmt()} jobs/s (arq loop)"
    res.summary_ratio = f"{r:.1f}x"
    res.summary_target = "≥ 20k/s and ≥ 10x"
    return res


# --- P5 --------------------------------------------------------------------------------------------

_LISTPACK_VALUE = 512  # bytes; compose's setting, above the largest seed body we expect (~400 B with 5 play items)
_PIECE = 64  # enqueue.lua stores the body in pieces of at most this many bytes (Redis' default listpack value)
_PIPELINE = 1000


async def _per_job(run: Run, n: int, fill: Callable[[], Any]) -> float:
    await run.reset()
    before = await run.redis.used_memory()
    await fill()
    return (await run.redis.used_memory() - before) / n


@dataclass(frozen=True)
class _Layout:
    """A way to store one queued job, written directly (to price a change before making it)."""

    name: str
    listpack: bool = True  # run with hash-max-listpack-value _LISTPACK_VALUE (else Redis' default 64)
    ledger_prefix: str = "dialer:job:"
    queue: str = "dialer:queue:9"
    id_chars: int = 16
    drop: tuple[str, ...] = ()  # ledger fields left out
    ledger: bool = True  # False: no ledger hash while queued
    ledger_ttl: bool = True
    arq_job: bool = False  # an arq job string per queued job (written at enqueue, as before claim.lua)
    short_arq: bool = False  # arq job {"f":"dial","et":ms}: engine.loads_job fills t, a and k
    body_in_arq: bool = False  # the body rides in the arq job ("b"), not in the ledger hash
    pieces: bool = True  # the body in pieces of <= _PIECE bytes (body, b1, b2 ...) as enqueue.lua writes it

    def arq_payload(self, now: int, body_json: str) -> str:
        head = ('{"f":"dial","et":' if self.short_arq else '{"t":1,"f":"dial","a":[],"k":{},"et":') + str(now)
        return head + (',"b":' + body_json if self.body_in_arq else "") + "}"


def _body_fields(body_json: bytes, pieces: bool) -> dict[bytes, bytes]:
    """A body's ledger fields: whole in ``body``, or in pieces as enqueue.lua cuts an ASCII body (the bench's
    bodies are: json.dumps escapes the rest), every ``_PIECE`` bytes."""
    if not pieces or len(body_json) <= _PIECE:
        return {b"body": body_json}
    assert body_json.isascii()
    cuts = range(0, len(body_json), _PIECE)
    return {b"b%d" % k if k else b"body": body_json[i : i + _PIECE] for k, i in enumerate(cuts)}


def _is_body_field(name: bytes) -> bool:
    return name == b"body" or (name[:1] == b"b" and name[1:].isdigit())


async def _write_layout(run: Run, layout: _Layout, fields: dict[bytes, bytes], n: int) -> None:
    client = run.redis.client
    now = int(time.time() * 1000)
    with_body = not layout.body_in_arq and "body" not in layout.drop
    # `fields` is a record enqueue_ours wrote; its body fields are rewritten per job below.
    kept = {k: v for k, v in fields.items() if k.decode() not in layout.drop and not _is_body_field(k)}
    for start in range(0, n, _PIPELINE):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + _PIPELINE, n)):
                job_id = secrets.token_hex(16)[: layout.id_chars]
                body_json = json.dumps(body(i), separators=(",", ":"))
                if layout.ledger:
                    key = layout.ledger_prefix + job_id
                    record = dict(kept)
                    if with_body:
                        record.update(_body_fields(body_json.encode(), layout.pieces))
                    if b"called" in record:
                        record[b"called"] = body(i)["called"].encode()
                    pipe.hset(key, mapping=record)
                    if layout.ledger_ttl:
                        pipe.pexpire(key, 30 * 86400 * 1000)
                if layout.arq_job or layout.body_in_arq:
                    pipe.set("arq:job:" + job_id, layout.arq_payload(now, body_json), px=7 * 86400 * 1000)
                pipe.zadd(layout.queue, {job_id: now})
            await pipe.execute()


async def _breakdown(run: Run, n: int) -> tuple[dict[str, float], str]:
    """MEMORY USAGE of one job's keys (its ledger hash, its share of the queue; its arq job, which should
    not exist until a worker claims the job), and the ledger hash's encoding and field count."""
    client = run.redis.client
    settings = _dialer.settings(run)
    keys = Keys(settings.key_prefix)
    job_id = (await client.zrange(keys.queue(9), 0, 0))[0].decode()
    ledger = int(await client.memory_usage(keys.job(job_id), samples=0) or 0)
    arq_job = int(await client.memory_usage(keys.arq_job(job_id), samples=0) or 0)
    queue = int(await client.memory_usage(keys.queue(9), samples=0) or 0) / n
    encoding = (await client.object("encoding", keys.job(job_id))).decode()
    encoding += f", {int(await client.hlen(keys.job(job_id)))} fields"  # type: ignore[misc]
    parts = {"ledger hash": ledger, "queue entry": queue}
    if arq_job:
        parts["arq job string"] = arq_job
    return parts, encoding


async def p5(cfg: Config) -> Result:
    n = 10_000 if cfg.quick else 50_000
    sample = body(0)
    size = len(json.dumps(sample, separators=(",", ":")))
    res = Result(
        "P5", "Redis memory per queued job",
        f"`INFO memory` used_memory after - before enqueueing {n} jobs into an empty redis-server (default config "
        f"unless said), divided by {n}. Body: the seed's shape, {size} bytes as compact JSON. Ours: "
        "`Producer.enqueue_many` (16-character random job ids; a queued job is its ledger hash, the body in pieces "
        f"of at most {_PIECE} bytes so the hash stays listpack-encoded at Redis' default hash-max-listpack-value "
        "64, and its queue entry: the worker writes the arq job when it claims the job). Baseline: arq "
        "`enqueue_job('dial', **body)` with arq's default pickle serializer. Breakdown: `MEMORY USAGE <key> "
        "SAMPLES 0` of one job's keys; the rest is Redis' per-key bookkeeping outside MEMORY USAGE (the "
        "ledger hash's expires-dict entry, hash-table buckets). Variants after the first three rows are "
        "written directly with the same contents to price a change before making it (or to show the layout "
        "before it).",
        sizes=f"{n} jobs{', QUICK' if cfg.quick else ''}",
    )
    ours: list[float] = []
    arq: list[float] = []
    listpack: list[float] = []
    parts: dict[str, float] = {}
    encoding = ""
    variant_values: dict[str, list[float]] = {}
    async with environment() as run:
        bodies = [body(i) for i in range(n)]
        client = run.redis.client
        for _ in range(cfg.runs):
            ours.append(await _per_job(run, n, lambda: _dialer.enqueue_ours(run, bodies)))
            parts, encoding = await _breakdown(run, n)
            arq.append(await _per_job(run, n, lambda: _dialer.enqueue_arq(run, "dial", bodies)))
        job_key = (await _first_ledger_key(run, bodies))
        raw: dict[bytes, bytes] = await client.hgetall(job_key)  # type: ignore[misc]  # redis-py's union
        fields = {bytes(k): bytes(v) for k, v in raw.items()}
        await client.config_set("hash-max-listpack-value", _LISTPACK_VALUE)
        try:
            for _ in range(cfg.runs):
                listpack.append(await _per_job(run, n, lambda: _dialer.enqueue_ours(run, bodies)))
            lp_parts, lp_encoding = await _breakdown(run, n)
            for layout in _variants():
                await client.config_set("hash-max-listpack-value", _LISTPACK_VALUE if layout.listpack else 64)
                for _ in range(cfg.runs):
                    variant_values.setdefault(layout.name, []).append(
                        await _per_job(run, n, lambda layout=layout: _write_layout(run, layout, fields, n))  # type: ignore[misc]
                    )
        finally:
            await client.config_set("hash-max-listpack-value", 64)
    f_o = res.add("ours, default redis config", ours, "bytes/job")
    f_a = res.add("arq enqueue_job, pickle (baseline)", arq, "bytes/job")
    f_lp = res.add(f"ours, hash-max-listpack-value {_LISTPACK_VALUE}", listpack, "bytes/job")
    for name, values in variant_values.items():
        res.add(name, values, "bytes/job")
    total = sum(parts.values())
    if encoding.startswith("listpack"):
        why = f"the {size}-byte body is stored in pieces of at most {_PIECE} bytes, within hash-max-listpack-value 64"
    else:
        why = "a value is over hash-max-listpack-value 64, so the hash is a real hash table"
    res.notes.append(
        f"default config, one job (MEMORY USAGE): ledger hash {parts['ledger hash']:.0f} B ({encoding} encoding: "
        f"{why}), queue entry {parts['queue entry']:.0f} B{_arq_note(parts)}; sum {total:.0f} B, the remaining "
        f"{f_o.median - total:.0f} B is per-key bookkeeping (expires entry, dict buckets)"
    )
    lp_total = sum(lp_parts.values())
    res.notes.append(
        f"hash-max-listpack-value {_LISTPACK_VALUE}: ledger hash {lp_parts['ledger hash']:.0f} B ({lp_encoding}), "
        f"queue entry {lp_parts['queue entry']:.0f} B{_arq_note(lp_parts)}; sum {lp_total:.0f} B, the remaining "
        f"{f_lp.median - lp_total:.0f} B is per-key bookkeeping"
    )
    res.check("≤ 600 bytes/job (Redis' default config)", f"{f_o.fmt()} B", f_o.median <= 600)
    res.check(f"≤ 600 bytes/job (compose's hash-max-listpack-value {_LISTPACK_VALUE})", f"{f_lp.fmt()} B",
              f_lp.median <= 600)
    res.summary_ours = f"{f_o.fmt()} B/job at the default config ({f_lp.fmt()} B with listpack {_LISTPACK_VALUE})"
    res.summary_baseline = f"{f_a.fmt()} B/job (arq pickle)"
    res.summary_ratio = f"{ratio(f_o.median, f_a.median):.2f}x ({ratio(f_lp.median, f_a.median):.2f}x)"
    res.summary_target = "≤ 600 B at the default config"
    return res


def _arq_note(parts: dict[str, float]) -> str:
    if "arq job string" in parts:
        return f", arq job string {parts['arq job string']:.0f} B (none was expected before the claim)"
    return ", no arq job (written at claim)"


async def _first_ledger_key(run: Run, bodies: list[dict[str, Any]]) -> str:
    await run.reset()
    await _dialer.enqueue_ours(run, bodies[:1])
    keys = Keys(_dialer.settings(run).key_prefix)
    job_id = (await run.redis.client.zrange(keys.queue(9), 0, 0))[0].decode()
    return keys.job(job_id)


def _variants() -> list[_Layout]:
    same = _Layout("written directly, same layout as ours (default config; check of the method)", listpack=False)
    whole = _Layout("default config, ours with the body in one field (before pieces: a real hash table)",
                    listpack=False, pieces=False)
    first = _Layout("default config, the first layout: body in one field, + arq job string at enqueue, "
                    "32-hex uuid4 ids", listpack=False, pieces=False, arq_job=True, id_chars=32)
    one_key = _Layout("default config, one key per queued job (arq job with the body; ledger hash from claim on)",
                      listpack=False, body_in_arq=True, short_arq=True, ledger=False)
    no_dup = _Layout("default config, ours without `called` and `prio` (both are in the body)",
                     listpack=False, drop=("called", "prio"))
    no_ttl = _Layout("… and no TTL on the ledger hash while queued", listpack=False, drop=no_dup.drop,
                     ledger_ttl=False)
    lp_same = _Layout(f"written directly, same layout as ours (listpack {_LISTPACK_VALUE}; check of the method)")
    lp_whole = _Layout(f"listpack {_LISTPACK_VALUE}, ours with the body in one field (before pieces)", pieces=False)
    lp_first = _Layout(f"listpack {_LISTPACK_VALUE}, the first layout: body in one field, + arq job string at "
                       "enqueue, 32-hex uuid4 ids", pieces=False, arq_job=True, id_chars=32)
    return [same, whole, first, one_key, no_dup, no_ttl, lp_same, lp_whole, lp_first]
