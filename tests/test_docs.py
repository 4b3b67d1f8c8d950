"""The README names the commands CI runs; docs/settings.md and .env.example are generated from Settings."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]


def _settings_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_documents_every_setting() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    missing = [ENV_PREFIX + n.upper() for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in page]
    assert not missing, f"docs/settings.md lacks {missing}"


def test_settings_page_and_env_example_are_what_the_generator_writes() -> None:
    stale = [str(path.relative_to(ROOT)) for path, text in _settings_doc().outputs().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"stale: {stale}; run .venv/bin/python scripts/settings_doc.py"


def test_every_setting_has_a_description() -> None:
    missing = [n for n, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"worker/settings.py: give these a Field(description=...): {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    ./scripts/test\n" in readme
    assert "exec ./scripts/test" in ci
    assert "dialer demo" in readme


def test_readme_stays_short_and_every_link_it_makes_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is the front page: the rest belongs in docs/"
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= set(links), "README links every docs/ page"
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
