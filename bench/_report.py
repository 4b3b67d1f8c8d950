"""Results of a benchmark, printed to the terminal and written into BENCHMARKS.md.

BENCHMARKS.md keeps hand-written analysis outside generated blocks; a run rewrites only the blocks
between ``<!-- bench:ID -->`` and ``<!-- /bench:ID -->`` of the benchmarks it ran, the summary rows of
those benchmarks, and the header block.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench._baseline import Baseline
from bench._harness import REPO, median


@dataclass
class Config:
    quick: bool = False
    runs: int = 3
    command: str = "python -m bench"
    runs_given: bool = False  # --runs on the command line: applies to the long, count-only P6 too
    revision: str = ""  # commit measured, read when the run starts (others may commit meanwhile)
    baseline: Baseline | None = None  # --baseline REF: P1 also runs its worker from this checkout


@dataclass
class Figure:
    """One measured quantity: a value per run, reported as the median."""

    label: str
    values: list[float]
    unit: str
    digits: int = 0

    @property
    def median(self) -> float:
        return median(self.values)

    def fmt(self, v: float | None = None) -> str:
        v = self.median if v is None else v
        if math.isnan(v):
            return "n/a"
        return f"{v:,.{self.digits}f}"

    def runs_text(self) -> str:
        return ", ".join(self.fmt(v) for v in self.values)


@dataclass
class Check:
    """A target: ``ok`` None means "report only"."""

    target: str
    measured: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "report" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Result:
    id: str
    title: str
    method: str
    figures: list[Figure] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary_ours: str = ""
    summary_baseline: str = ""
    summary_ratio: str = ""
    summary_target: str = ""
    sizes: str = ""
    load: float = 0.0  # 1-min load average when the benchmark started

    def add(self, label: str, values: Sequence[float], unit: str, digits: int = 0) -> Figure:
        fig = Figure(label, list(values), unit, digits)
        self.figures.append(fig)
        return fig

    def check(self, target: str, measured: str, ok: bool | None) -> None:
        self.checks.append(Check(target, measured, ok))

    @property
    def verdict(self) -> str:
        oks = [c.ok for c in self.checks if c.ok is not None]
        if not oks:
            return "report"
        return "PASS" if all(oks) else "MISS"


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# --- terminal --------------------------------------------------------------------------------------


def print_result(res: Result) -> None:
    print(f"\n== {res.id}: {res.title}  [{res.sizes}]")
    print(f"   {res.method}")
    width = max((len(f.label) for f in res.figures), default=10)
    for f in res.figures:
        runs = f"   (runs: {f.runs_text()})" if len(f.values) > 1 else ""
        print(f"   {f.label:<{width}}  {f.fmt():>12} {f.unit}{runs}")
    for c in res.checks:
        print(f"   target {c.target}: {c.measured}  -> {c.verdict}")
    for n in res.notes:
        print(f"   note: {n}")


# --- BENCHMARKS.md ---------------------------------------------------------------------------------


def _cmd(args: Sequence[str]) -> str:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> str:
    model = ""
    for line in _cmd(["lscpu"]).splitlines():
        if line.lower().startswith("model name"):
            model = line.split(":", 1)[1].strip()
    cores = _cmd(["nproc"]).strip() or "?"
    redis_v = _cmd(["redis-server", "--version"]).split()
    redis_ver = next((w.removeprefix("v=") for w in redis_v if w.startswith("v=")), "?")
    versions = ", ".join(f"{p} {_version(p)}" for p in ("arq", "redis", "aiohttp", "pydantic"))
    return (f"{cores} cores ({model or platform.processor() or 'unknown CPU'}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, redis-server {redis_ver}; {versions}")


def revision() -> str:
    """The commit measured, and whether worker/ had uncommitted changes (read-only git calls)."""
    head = _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip() or "unknown"
    dirty = _cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "worker"]).strip()
    return f"{head}{' + uncommitted changes in worker/' if dirty else ''}"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def _block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    new = f"{start}\n{content.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: new, text, count=1)
    return text.rstrip() + "\n\n" + new + "\n"


def _result_md(res: Result, cfg: Config, when: str) -> str:
    lines = [f"_{when}, `{cfg.command}`, {res.sizes}, load average {res.load:.2f} at start_", "", res.method, "",
             "| figure | median | unit | runs |", "|---|---:|---|---|"]
    for f in res.figures:
        lines.append(f"| {f.label} | {f.fmt()} | {f.unit} | {f.runs_text()} |")
    if res.checks:
        lines += ["", "| target | measured | result |", "|---|---|---|"]
        lines += [f"| {c.target} | {c.measured} | **{c.verdict}** |" for c in res.checks]
    if res.notes:
        lines.append("")
        lines += [f"- {n}" for n in res.notes]
    return "\n".join(lines)


_SUMMARY_HEAD = ("| id | measure | ours | baseline | ratio | target | result |\n"
                 "|---|---|---|---|---|---|---|")


def _summary(text: str, results: Sequence[Result]) -> str:
    m = re.search(r"<!-- bench:summary -->(.*?)<!-- /bench:summary -->", text, re.S)
    rows: dict[str, str] = {}
    if m:
        for line in m.group(1).splitlines():
            cell = re.match(r"\|\s*(P\d+)\s*\|", line)
            if cell:
                rows[cell.group(1)] = line
    for r in results:
        rows[r.id] = (f"| {r.id} | {r.title} | {r.summary_ours} | {r.summary_baseline} | {r.summary_ratio} | "
                      f"{r.summary_target} | **{r.verdict}** |")
    ordered = [rows[k] for k in sorted(rows, key=lambda k: int(k[1:]))]
    return _block(text, "summary", _SUMMARY_HEAD + "\n" + "\n".join(ordered))


_TEMPLATE = """# Benchmarks

<!-- bench:header -->
<!-- /bench:header -->

## Summary

<!-- bench:summary -->
<!-- /bench:summary -->
"""


def write_markdown(path: Path, results: Sequence[Result], cfg: Config) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else _TEMPLATE
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Last run: {now}, `{cfg.command}` ({cfg.runs} run(s) per figure, medians shown"
              f"{'; QUICK sizes' if cfg.quick else ''}) on commit {cfg.revision or revision()}.\n\n"
              f"Machine: {machine()}.")
    text = _block(text, "header", header)
    text = _summary(text, results)
    for res in results:
        section = f"## {res.id}: {res.title}"
        content = _result_md(res, cfg, now)
        if f"<!-- bench:{res.id} -->" not in text:
            text = text.rstrip() + f"\n\n{section}\n"
        text = _block(text, res.id, content)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
