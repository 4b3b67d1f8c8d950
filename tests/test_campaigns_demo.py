"""`dialer demo` end to end: its own redis-server, the simulator, two workers, a campaign launched from a
generated CSV, live progress from the campaign's status, and the final status reconciled."""

from __future__ import annotations

import json
import re

from tests.conftest import run_dialer


async def test_demo_runs_a_small_campaign_to_completion() -> None:
    # DIALER_REDIS_URL empty: the demo starts (and removes) a redis-server of its own, as on a fresh machine.
    rc, out, err = await run_dialer("demo", "--calls", "200", "--rate", "400", env={"DIALER_REDIS_URL": ""},
                                    timeout=60)
    assert rc == 0, out + err
    assert "reconciled: every job sent exactly once" in out
    assert re.search(r"launched campaign 'demo-\d+': 200 calls enqueued", out)
    final = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert final["total"] == 200 and final["states"]["sent"] == 200 and final["remaining"] == 0
