"""``rediss://``: the server's certificate and host name are verified (CA from DIALER_REDIS_TLS_CA_FILE),
and a client certificate is presented when Redis asks for one; against a redis-server started with TLS
on certificates made here with ``openssl``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import free_port, run_dialer, settings_env
from worker.settings import Settings, load_settings
from worker.store.client import api_client, cli_client, worker_client

pytestmark = pytest.mark.slow


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _cert(d: Path, name: str, subject: str, san: str | None) -> None:
    """A key and a certificate signed by ``d/ca``, with ``san`` as subjectAltName."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
             "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=dialer test CA",
             "-days", "2", "-out", "ca.crt", cwd=d)
    _cert(d, "server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost")
    _cert(d, "other", "/CN=other.example", "DNS:other.example")
    _cert(d, "client", "/CN=dialer-client", None)
    return d


class TlsRedis:
    def __init__(self, certs: Path, workdir: Path, cert: str = "server", auth_clients: str = "no") -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
             "--tls-cert-file", str(certs / f"{cert}.crt"), "--tls-key-file", str(certs / f"{cert}.key"),
             "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", auth_clients],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"),
                             ssl_certfile=str(certs / "client.crt"), ssl_keyfile=str(certs / "client.key"),
                             ssl_check_hostname=False)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                if "tls" in out.lower() and ("not supported" in out or "Bad directive" in out):
                    pytest.skip(f"redis-server lacks TLS support: {out.strip().splitlines()[-1]}")
                raise RuntimeError(f"redis-server with TLS did not start:\n{out}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server with TLS did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def tls_redis(certs: Path, tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(certs, tmp_path)
    yield server
    server.stop()


def _settings(settings: Settings, port: int, host: str = "127.0.0.1", **tls: Path) -> Settings:
    return load_settings(**{**settings.model_dump(), "redis_url": f"rediss://{host}:{port}/0",
                            **{f"redis_tls_{k}_file": str(v) for k, v in tls.items()}})


async def _ping(make: object, s: Settings) -> bool:
    r: Redis = make(s)  # type: ignore[operator]
    try:
        return bool(await asyncio.wait_for(r.ping(), 10))  # a worker's client would retry for ever
    finally:
        await r.aclose()


@pytest.mark.parametrize("make", [cli_client, api_client, worker_client])
async def test_rediss_with_the_ca_connects_by_ip_and_by_host_name(
    settings: Settings, certs: Path, tls_redis: TlsRedis, make: object
) -> None:
    for host in ("127.0.0.1", "localhost"):
        assert await _ping(make, _settings(settings, tls_redis.port, host, ca=certs / "ca.crt"))


@pytest.mark.parametrize("make", [cli_client, api_client])
async def test_rediss_without_the_ca_is_refused(settings: Settings, tls_redis: TlsRedis, make: object) -> None:
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await _ping(make, _settings(settings, tls_redis.port))


@pytest.mark.parametrize("make", [cli_client, api_client])
async def test_a_certificate_for_another_host_name_is_refused(
    settings: Settings, certs: Path, tmp_path: Path, make: object
) -> None:
    server = TlsRedis(certs, tmp_path, cert="other")  # signed by the trusted CA, but for other.example
    try:
        with pytest.raises(RedisConnectionError, match="mismatch"):
            await _ping(make, _settings(settings, server.port, ca=certs / "ca.crt"))
    finally:
        server.stop()


async def test_a_client_certificate_is_presented_when_redis_asks_for_one(
    settings: Settings, certs: Path, tmp_path: Path
) -> None:
    server = TlsRedis(certs, tmp_path, auth_clients="yes")
    try:
        with_cert = _settings(settings, server.port, ca=certs / "ca.crt", cert=certs / "client.crt",
                              key=certs / "client.key")
        for make in (cli_client, api_client, worker_client):
            assert await _ping(make, with_cert)
        with pytest.raises(RedisConnectionError):
            await _ping(cli_client, _settings(settings, server.port, ca=certs / "ca.crt"))
    finally:
        server.stop()


async def test_the_cli_reads_the_tls_settings_and_says_why_it_refuses(
    settings: Settings, certs: Path, tls_redis: TlsRedis
) -> None:
    env = {**settings_env(settings), "DIALER_REDIS_URL": f"rediss://127.0.0.1:{tls_redis.port}/0",
           "DIALER_REDIS_TLS_CA_FILE": str(certs / "ca.crt")}
    rc, out, err = await run_dialer("job", "nope", env=env, timeout=30)
    assert rc == 1 and "no job 'nope'" in err, (out, err)
    del env["DIALER_REDIS_TLS_CA_FILE"]
    rc, out, err = await run_dialer("job", "nope", env=env, timeout=30)
    assert rc == 1 and err.startswith("Error: Redis is not reachable at rediss://") and "certificate" in err, err
    assert len(err.strip().splitlines()) == 1


def test_tls_files_without_rediss_are_refused() -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError, match="DIALER_REDIS_TLS_"):
        load_settings(redis_url="redis://127.0.0.1:6379/0", redis_tls_ca_file="/etc/ssl/ca.pem")
