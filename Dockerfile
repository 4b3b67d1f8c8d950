# syntax=docker/dockerfile:1
# One image for every role of voice-dialer; the command picks the role:
#   docker run IMAGE                                   -> dialer worker (the default)
#   docker run IMAGE dialer serve --host 0.0.0.0       -> the HTTP service (port 8080)
#   docker run IMAGE dialer simulator --host 0.0.0.0   -> the sandbox provider (port 8090)
# Settings come from DIALER_* environment variables at run time (docker-compose.yml passes .env);
# nothing secret is baked into the image.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid/gid so volume ownership and security policies can name it.
RUN groupadd --system --gid 10001 dialer \
 && useradd --system --uid 10001 --gid dialer --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dialer

WORKDIR /app

# Dependencies first, from the lock alone: every runtime package pinned with its hashes (the lock's header
# says how to regenerate it), so each build installs the same files. Editing the code or pyproject.toml
# reuses this layer; only a new lock rebuilds it.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the package itself, without resolving anything again (pyproject names README.md as its readme,
# so it must be there to build).
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && dialer --help >/dev/null

USER dialer:dialer

EXPOSE 8080 8090

# The worker's check (a live heartbeat in Redis for each served queue). Other roles override it:
# docker-compose.yml gives `api` and `simulator` an HTTP check of their own.
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["dialer", "worker", "--check"]

# Exec form: dialer is the process that receives SIGTERM and drains in-flight calls
# (run with --init, or `init: true` in compose, so a tiny init also reaps zombies).
STOPSIGNAL SIGTERM
CMD ["dialer", "worker"]
