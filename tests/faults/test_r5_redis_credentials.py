"""R5 (Redis credentials): a wrong Redis password, percent-encoded or typed as is, never shows in any
command's output or a worker's log, and a malformed URL is refused in one line that names the rule."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from tests.faults.conftest import report
from tests.helpers import RedisServer, run_dialer, settings_env
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RIGHT = "r5-R1ght@pass:w/o#rd%"
WRONG = "Wr0ngPW@x:y/z#q%"
COMMANDS = [("enqueue", "--called", "13800000001", "--voice-id", "1"), ("job", "x"), ("dead-letter", "list"),
            ("campaign", "list"), ("suppress", "list"), ("worker", "--check"), ("worker",)]
# Pieces of the wrong password that must never show, encoded or not.
PIECES = ("Wr0ngPW", "x:y", "x%3Ay", "y/z", "y%2Fz", "z#q", "z%23q")


async def test_r5_no_part_of_a_redis_password_shows_in_any_command(settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password=RIGHT)
    server.start()
    try:
        base = f"127.0.0.1:{server.port}/0"
        urls = {"wrong, percent-encoded": f"redis://:{quote(WRONG, safe='')}@{base}",
                "wrong, typed as is": f"redis://:{WRONG}@{base}"}
        results: dict[str, dict[str, str]] = {}
        leaks: list[str] = []
        for variant, url in urls.items():
            env = {**settings_env(settings), "DIALER_REDIS_URL": url}
            for command in COMMANDS:
                rc, out, err = await run_dialer(*command, env=env, timeout=60)
                lines = [line for line in err.splitlines() if line.strip()]
                first = lines[0] if lines else ""
                kind = ("login refused" if "refused the login" in first else
                        "URL refused" if "DIALER_REDIS_URL: must be" in first else first[:60])
                results.setdefault(variant, {})[" ".join(command[:2])] = f"exit {rc}, {len(lines)} line(s), {kind}"
                leaks += [f"{variant} / {' '.join(command)}: {p}" for p in PIECES if p in out + err]
                assert rc != 0 and len(lines) == 1 and "Traceback" not in err, (variant, command, err)
    finally:
        server.stop()
    report("R5 Redis password never shown", {
        **{f"{variant}: {cmd}": v for variant, r in results.items() for cmd, v in r.items()},
        "password pieces shown": leaks,
    })
    assert not leaks, leaks
    assert all("login refused" in v for v in results["wrong, percent-encoded"].values()), results
    assert all("URL refused" in v for v in results["wrong, typed as is"].values()), results
