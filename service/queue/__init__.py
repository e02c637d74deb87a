"""Evaluation batches between job runners and model workers: in-process (embedded) or Redis Streams."""

from ._base import Batch, BatchQueue, BatchResult, Delivery, QueueError
from ._memory import MemoryQueue

__all__ = [
    "Batch",
    "BatchQueue",
    "BatchResult",
    "Delivery",
    "MemoryQueue",
    "QueueError",
    "RedisQueue",
    "make_queue",
    "queue_from_settings",
]


def make_queue(redis_url: str | None, **options) -> BatchQueue:
    """MemoryQueue when `redis_url` is None, else a RedisQueue (options: namespace, claim_idle, max_deliveries)."""
    if redis_url is None:
        return MemoryQueue(max_deliveries=options.get("max_deliveries", 3))
    from ._redis import RedisQueue

    return RedisQueue(redis_url, **options)


def queue_from_settings(settings) -> BatchQueue:
    """The queue `nograd.service.settings.Settings` describe."""
    return make_queue(
        settings.redis_url,
        namespace=settings.namespace,
        claim_idle=settings.claim_idle,
        max_deliveries=settings.max_deliveries,
    )


def __getattr__(name):
    if name == "RedisQueue":
        from ._redis import RedisQueue

        return RedisQueue
    raise AttributeError(name)
