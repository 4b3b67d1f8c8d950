"""The README is the operator's manual: it must name every setting and the commands CI runs."""

from pathlib import Path

from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [ENV_PREFIX + n.upper() for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    ./scripts/test\n" in readme
    assert "exec ./scripts/test" in ci
    assert "dialer demo" in readme
