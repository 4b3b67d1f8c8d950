"""Render the fault suite's figures (the JSON lines :func:`tests.faults.conftest.report` appends to
``$DIALER_FAULTS_REPORT``) as Markdown, and optionally put them in ``RELIABILITY.md``.

::

    python -m tests.faults.figures FIGURES.jsonl [--junit junit.xml] [--command CMD] [--write]

``--write`` replaces what lies between ``<!-- figures:begin -->`` and ``<!-- figures:end -->`` in
RELIABILITY.md; the Markdown always goes to stdout. ``scripts/faults`` runs both steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v) or "none"
    return str(v).replace("|", "\\|")


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    redis = "redis-server not found"
    exe = shutil.which("redis-server")
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.split()
        redis = "Redis " + next((w.removeprefix("v=") for w in out if w.startswith("v=")), "?")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} vCPUs ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {redis}; load average at the end {load}")


def _outcomes(junit: Path | None) -> dict[str, str]:
    if junit is None or not junit.exists():
        return {}
    out: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "FAILED"
        elif case.find("skipped") is not None:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def render(figures: list[dict[str, Any]], outcomes: dict[str, str], command: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    passed = sum(1 for v in outcomes.values() if v == "passed")
    lines = [f"Last full run: {now}, `{command}`.", "", f"Machine: {_machine()}.", ""]
    if outcomes:
        lines += [f"Tests: {passed} passed, {len(outcomes) - passed} not passed "
                  f"({', '.join(sorted(k for k, v in outcomes.items() if v != 'passed')) or 'none'}).", ""]
    for entry in figures:
        lines += [f"### {entry['scenario']}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name.strip()} | {_value(value)} |" for name, value in entry["figures"].items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", type=Path)
    parser.add_argument("--junit", type=Path)
    parser.add_argument("--command", default="scripts/faults")
    parser.add_argument("--write", action="store_true", help="update RELIABILITY.md between the markers")
    args = parser.parse_args(argv)
    figures = [json.loads(line) for line in args.figures.read_text().splitlines() if line.strip()]
    text = render(figures, _outcomes(args.junit), args.command)
    sys.stdout.write(text)
    if not args.write:
        return 0
    doc = ROOT / "RELIABILITY.md"
    current = doc.read_text()
    if BEGIN not in current or END not in current:
        print(f"{doc}: markers {BEGIN} / {END} not found", file=sys.stderr)
        return 1
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    print(f"figures written to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
