"""The per-job log line (issue 14, item 14a): a created call's callSerialNo is its ``serial``, never an
``error``; failures keep ``error``."""

from __future__ import annotations

import io
import json

from tests.helpers import Sim, enqueue, records, running
from tests.helpers import wait_until as wait_for
from worker.ledger.producer import CallJob
from worker.ledger.states import State
from worker.settings import Settings


async def test_a_sent_job_logs_its_serial_and_no_error(
    sim: Sim, sim_settings: Settings, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    body = {"called": "43000001", "playList": [{"voiceId": "100001", "templateParams": ["a"]}], "priority": "5"}
    [job_id] = await enqueue(sim_settings, [CallJob(request=body, job_id="log-serial")])

    async def sent() -> bool:
        rec = (await records(sim_settings, [job_id]))[job_id]
        return rec is not None and rec.state == State.SENT

    async with running(sim_settings):
        await wait_for(sent, 10, what="the job to be sent")
    rec = (await records(sim_settings, [job_id]))[job_id]
    assert rec is not None and rec.call_serial_no
    lines = [json.loads(line) for line in captured[0].getvalue().splitlines() if line.startswith("{")]
    [line] = [x for x in lines if x.get("job_id") == job_id and x.get("outcome") == "sent"]
    assert line["serial"] == rec.call_serial_no and "error" not in line, line
    text = [x for x in captured[1].getvalue().splitlines() if "job_id=log-serial" in x and "outcome=sent" in x]
    assert text and "error=" not in text[0] and f"serial={rec.call_serial_no}" in text[0], text
