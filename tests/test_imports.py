"""What importing the package costs: ``dialer --help`` loads neither arq, redis nor pydantic, and the
lazy ``worker`` package still gives every public name (``from worker import X``)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

import worker
from worker import cli

ROOT = Path(__file__).resolve().parents[1]
# Top-level packages that `dialer --help` must not import (they cost most of a command's start-up).
HEAVY = ("arq", "redis", "pydantic", "pydantic_core", "pydantic_settings")


def _import_chains(importtime_log: str) -> dict[str, list[str]]:
    """{module: its importers, innermost first} for each module in a ``-X importtime`` log.

    The log lists a module after the modules it imported, indented one step deeper than its importer.
    """
    rows: list[tuple[int, str]] = []
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name_field = line.rsplit("|", 1)[1]
            depth = len(name_field) - len(name_field.lstrip(" "))
            rows.append((depth, name_field.strip()))
    chains: dict[str, list[str]] = {}
    for i, (depth, name) in enumerate(rows):
        chain, want = [], depth
        for later_depth, later in rows[i + 1 :]:
            if later_depth < want:
                chain.append(later)
                want = later_depth
        chains.setdefault(name, chain)
    return chains


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["-c", "import worker"],
        ["-m", "worker.cli", "--help"],
        ["-m", "worker.cli", "simulator", "--help"],
        ["-m", "worker.cli", "worker", "--help"],
        ["-m", "worker.cli", "enqueue", "--help"],
    ],
    ids=lambda args: " ".join(args),
)
def test_help_imports_neither_arq_nor_redis_nor_pydantic(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chains = _import_chains(proc.stderr)
    assert "worker" in chains, "no import log: was -X importtime honoured?"
    loaded = {name: " <- ".join([name, *chains[name]]) for name in HEAVY if name in chains}
    assert not loaded, f"`python {' '.join(args)}` imports " + "; ".join(loaded.values())


def test_import_chains_name_the_importers() -> None:
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:        10 |         10 |     redis.client",
        "import time:        10 |         20 |   redis",
        "import time:        10 |         30 | worker.store",
        "import time:        10 |         10 | click",
    ])
    assert _import_chains(log)["redis"] == ["worker.store"]
    assert _import_chains(log)["redis.client"] == ["redis", "worker.store"]
    assert _import_chains(log)["click"] == []


# --- the lazy package ---------------------------------------------------------------------------------


def _type_checking_imports() -> dict[str, str]:
    """{name: module} of the ``if TYPE_CHECKING:`` imports in worker/__init__.py."""
    tree = ast.parse((ROOT / "worker" / "__init__.py").read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                out.update({alias.asname or alias.name: imp.module for alias in imp.names})
    return out


def test_every_public_name_is_mapped_once_and_typed() -> None:
    exports = worker._EXPORTS
    assert sorted(worker.__all__) == sorted(exports), "__all__ and the lazy map name different things"
    assert len(set(worker.__all__)) == len(worker.__all__)
    assert _type_checking_imports() == exports, "the TYPE_CHECKING imports and the lazy map disagree"


@pytest.mark.parametrize("name", worker.__all__)
def test_from_worker_import_gives_the_defining_modules_object(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from worker import {name}", namespace)  # the statement users write
    assert namespace[name] is getattr(importlib.import_module(worker._EXPORTS[name]), name)
    assert name in dir(worker)


def test_unknown_names_raise_and_submodules_still_import() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = worker.no_such_name  # type: ignore[attr-defined]
    namespace: dict[str, object] = {}
    exec("from worker import errors", namespace)
    assert namespace["errors"] is importlib.import_module("worker.errors")


# --- the lazy commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(cli._LAZY_COMMANDS))
def test_lazy_commands_load_and_their_listed_help_is_their_own(name: str) -> None:
    lazy = cli._LAZY_COMMANDS[name]
    command = getattr(importlib.import_module(lazy.module), lazy.attribute)
    assert isinstance(command, click.Command) and command.name == name
    stand_in = click.Command(name, help=lazy.help)
    for limit in (30, 45, 60, 80, 1000):  # `dialer --help` lists the same text at any terminal width
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), (
            f"the help for {name} in worker/cli.py's _LAZY_COMMANDS differs from the command's own"
        )
    ctx = click.Context(cli.main)
    assert cli.main.get_command(ctx, name) is command


def test_main_help_lists_every_command() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == {*cli.main.commands, *cli._LAZY_COMMANDS}
