"""Settings come from DIALER_* variables or .env; bad values stop start-up naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_dialer
from worker.errors import SettingsError
from worker.settings import Settings, load_settings


def test_defaults_and_derived_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.token_lifetime_s == 600 and s.callback_url_base64 is False
    assert s.resolved_token_url == s.api_base_url + "/apigovernance/api/oauth/tokenByAkSk"
    assert s.create_url.endswith("/apiaccess/rest/voiceNotification/v2/createVoiceNotification")
    custom = load_settings(api_base_url="https://cec.example.com/", token_url="https://auth.example.com:28070/x")
    assert custom.api_base_url == "https://cec.example.com"
    assert custom.resolved_token_url == "https://auth.example.com:28070/x"


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DIALER_RATE_LIMIT=42\nDIALER_APP_SECRET=from-dotenv\n")
    monkeypatch.setenv("DIALER_MAX_IN_FLIGHT", "7")
    s = Settings()
    assert s.rate_limit == 42 and s.max_in_flight == 7
    assert s.app_secret.get_secret_value() == "from-dotenv"
    assert "from-dotenv" not in repr(s) and "from-dotenv" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"token_lifetime_s": 0}, "DIALER_TOKEN_LIFETIME_S"),
        ({"token_lifetime_s": 3601}, "DIALER_TOKEN_LIFETIME_S"),
        ({"api_base_url": "ftp://x"}, "DIALER_API_BASE_URL"),
        ({"rate_limit": -1}, "DIALER_RATE_LIMIT"),
        ({"max_in_flight": 0}, "DIALER_MAX_IN_FLIGHT"),
        ({"log_format": "xml"}, "DIALER_LOG_FORMAT"),
        ({"job_timeout_s": 11, "request_timeout_s": 10}, "DIALER_JOB_TIMEOUT_S"),
    ],
)
def test_invalid_values_name_the_variable(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)


@pytest.mark.slow
async def test_cli_refuses_to_start_with_a_bad_setting(redis_url: str) -> None:
    rc, _out, err = await run_dialer("worker", "--burst", env={"DIALER_TOKEN_LIFETIME_S": "99999",
                                                               "DIALER_REDIS_URL": redis_url})
    assert rc != 0
    assert "DIALER_TOKEN_LIFETIME_S" in err and "Traceback" not in err


@pytest.mark.parametrize("weak", ["0000000000000000", "passwordpassword", "0123456789abcdef", "1234567812345678",
                                  "aaaaaaaabbbbbbbb", "qwertyuiopasdfghjkl"])
@pytest.mark.parametrize("variable", ["DIALER_API_KEYS", "DIALER_DASHBOARD_KEY", "DIALER_CALLBACK_SHARED_KEY"])
def test_low_entropy_keys_are_refused_naming_the_variable_not_the_key(
    variable: str, weak: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, weak)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message and "guess" in message and "openssl rand" in message
    assert weak not in message


def test_random_keys_and_a_providers_short_callback_key_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALER_API_KEYS", "Zx9-kQ2mP7vR4tL8,3f9a1c0e7b2d4a6f8e1c")
    monkeypatch.setenv("DIALER_DASHBOARD_KEY", "a1b2c3d4e5f6g7h8")
    monkeypatch.setenv("DIALER_CALLBACK_SHARED_KEY", "cb-key")  # the provider's choice: only the trivial is refused
    s = load_settings()
    assert len(s.api_keys) == 2 and s.dashboard_key is not None and s.callback_shared_key is not None


def test_unknown_dialer_variables_are_named_at_start_up_not_their_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DIALER_MAX_INFLIGHT=3\nDIALER_RATE_LIMIT=7\n")
    monkeypatch.setenv("DIALER_RATE_LIMT", "55.5")  # misspelt: silently ignored before
    monkeypatch.setenv("DIALER_IMAGE", "dialer:dev")  # compose's own variable, not a setting: no warning
    with caplog.at_level("WARNING", logger="worker.settings"):
        s = load_settings()
    assert s.rate_limit == 7
    [record] = [r for r in caplog.records if r.name == "worker.settings"]
    message = record.getMessage()
    assert "DIALER_RATE_LIMT (did you mean DIALER_RATE_LIMIT?)" in message
    assert "DIALER_MAX_INFLIGHT (did you mean DIALER_MAX_IN_FLIGHT?)" in message
    assert "DIALER_IMAGE" not in message and "55.5" not in message and "=3" not in message
