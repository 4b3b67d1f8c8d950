"""A second source tree for before/after figures in one invocation (``python -m bench P1 --baseline REF``).

REF is checked out with ``git worktree add --detach`` into a temporary directory, and removed with
``git worktree remove --force`` when the invocation ends, fails or is interrupted. Only worker
*processes* run the baseline's code: they are started through the CLI entry point ``python -m
worker.cli`` with their cwd in the worktree and the worktree first on PYTHONPATH, never by importing
baseline modules here (module paths differ between revisions). Everything the harness does in-process
(enqueueing with the Producer, reading the simulator's log) and the simulator itself stay the current
code; that is sound only while the two revisions share one Redis data layout (key names, record
fields, arq's queue protocol), as a restructuring without a change of behaviour does.

The baseline runs on this venv's packages. A runtime requirement of REF that the venv does not satisfy
(say the current tree dropped a dependency REF still imports) is installed with pip, without its
dependencies, into a temporary directory placed after the worktree on the baseline's PYTHONPATH.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench._harness import REPO, Source


@dataclass(frozen=True)
class Baseline:
    ref: str  # as given on the command line
    commit: str  # its short hash
    source: Source  # the worktree the baseline's worker processes run from, and any packages it lacked
    installed: tuple[str, ...] = ()  # those packages, name==version

    @property
    def tree(self) -> Path:
        return self.source.tree

    @property
    def label(self) -> str:
        return self.commit if self.ref == self.commit else f"{self.commit} ({self.ref})"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)


def resolve(ref: str) -> str:
    """REF's short commit hash; SystemExit if it names no commit."""
    out = _git("rev-parse", "--verify", "--quiet", "--short", f"{ref}^{{commit}}")
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"--baseline {ref}: not a commit of {REPO}")
    return out.stdout.strip()


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


def _lacking(tree: Path) -> list[str]:
    """REF's runtime requirements this venv does not satisfy, as the name==version pip would install."""
    project = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    requirements = list(project.get("dependencies", []))
    if not requirements:
        return []
    out = _pip("install", "--dry-run", "--no-deps", "--quiet", "--report", "-", *requirements)
    if out.returncode != 0:
        raise SystemExit(f"baseline: pip cannot resolve {REPO.name}'s requirements at that commit:\n{out.stderr}")
    return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in json.loads(out.stdout)["install"]]


def _probe(source: Source) -> None:
    """The baseline's children must import the worktree's package, not the venv's editable install, and
    its CLI must start (every import it needs is there)."""
    env = source.env({k: v for k, v in os.environ.items() if not k.startswith("DIALER_")})
    out = subprocess.run([sys.executable, "-c", "import worker; print(worker.__file__)"], cwd=source.tree,
                         env=env, capture_output=True, text=True, timeout=60)
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or not where.is_relative_to(source.tree.resolve()):
        raise SystemExit(f"baseline probe: `import worker` in {source.tree} loads {where} (rc {out.returncode}), "
                         f"not the worktree's package:\n{out.stderr.strip()}")
    out = subprocess.run([sys.executable, "-m", "worker.cli", "worker", "--help"], cwd=source.tree, env=env,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"baseline probe: `python -m worker.cli worker --help` fails in {source.tree}:\n"
                         f"{out.stderr.strip()}")


def _remove(tmp: Path, tree: Path) -> None:
    if tree.exists():
        _git("worktree", "remove", "--force", str(tree))
    shutil.rmtree(tmp, ignore_errors=True)
    _git("worktree", "prune")  # in case the removal failed half-way: forget the gone directory


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Baseline]:
    """REF checked out in a temporary worktree for the duration of the ``with``."""
    commit = resolve(ref)
    tmp = Path(tempfile.mkdtemp(prefix="dialer-bench-baseline-"))
    tree = tmp / "tree"
    # The `finally` runs on errors, Ctrl-C and SIGTERM (both raised as KeyboardInterrupt by bench's
    # __main__); the atexit hook covers an exit that skips it.
    atexit.register(_remove, tmp, tree)
    try:
        out = _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        if out.returncode != 0:
            raise SystemExit(f"git worktree add {commit} failed: {out.stderr.strip()}")
        source = Source(tree)
        installed = _lacking(tree)
        if installed:
            source = Source(tree, tmp / "deps")
            out = _pip("install", "--quiet", "--no-deps", "--target", str(source.deps), *installed)
            if out.returncode != 0:
                raise SystemExit(f"baseline: pip could not install {' '.join(installed)}:\n{out.stderr}")
        _probe(source)
        yield Baseline(ref, commit, source, tuple(installed))
    finally:
        atexit.unregister(_remove)
        _remove(tmp, tree)
