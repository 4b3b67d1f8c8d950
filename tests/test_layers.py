"""The house rule: a room never imports a room on a higher floor (docs/architecture.md).

Every ``import worker...`` in every module of the package, lazy ones inside functions included, is
read from the source, so a new upward import fails here with the two modules named."""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "worker"

# Floor of each room; a module may import its own room and lower floors only.
FLOORS: dict[str, int] = {
    # ground floor: no Redis, no HTTP service, no queue engine
    "settings": 0, "models": 0, "errors": 0, "logs": 0, "runtime": 0, "windows": 0, "rules": 0, "metrics": 0,
    "callback_url": 0, "status_callback": 0, "numbers": 0,
    "store": 1,
    "limits": 2, "provider": 2,
    "ledger": 3, "sandbox": 3,
    "dispatch": 4, "campaigns": 4, "webhooks": 4,
    "http": 5,
    "cli": 6, "demo": 6, "__init__": 6,
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "worker":  # from worker import logs, metrics
                found += [(node.lineno, f"worker.{a.name}") for a in node.names]
            elif node.module.startswith("worker."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("worker.")]
    return found


def test_every_room_has_a_floor() -> None:
    rooms = {p.stem if p.is_file() else p.name for p in WORKER.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms <= set(FLOORS), f"rooms without a floor: {sorted(rooms - set(FLOORS))}"


def test_no_import_runs_up_a_floor() -> None:
    upward = []
    for path in sorted(WORKER.rglob("*.py")):
        module = "worker." + ".".join(path.relative_to(WORKER).with_suffix("").parts)
        here = _room(module.removesuffix(".__init__")) if path.name != "__init__.py" or path.parent != WORKER \
            else "__init__"
        for line, target in _imports(path):
            there = _room(target)
            if there in FLOORS and FLOORS[there] > FLOORS[here]:
                upward.append(f"{path.relative_to(WORKER.parent)}:{line} ({here}, floor {FLOORS[here]}) "
                              f"imports {target} ({there}, floor {FLOORS[there]})")
    assert not upward, "imports running up a floor:\n" + "\n".join(upward)


def test_only_the_engine_seam_imports_arq() -> None:
    seam = WORKER / "dispatch" / "engine.py"
    users = []
    for path in sorted(WORKER.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "arq" or n.startswith("arq.") for n in names) and path != seam:
                users.append(f"{path.relative_to(WORKER.parent)}:{node.lineno}")
    assert not users, f"arq imported outside the seam (worker/dispatch/engine.py): {users}"
