"""taskiq app driven by taskscope's integration tests (tests/taskiq.rs) and by capture_taskiq.py.

Configured only from the environment so the Rust harness can point it at a private redis-server:
  TS_REDIS_URL            broker and result backend URL (required), e.g. redis://127.0.0.1:6390/0
  TS_TASKIQ_BROKER        "stream" (RedisStreamBroker, default), "list" (ListQueueBroker) or
                          "pubsub" (PubSubBroker)
  TS_TASKIQ_QUEUE         queue_name (default "taskiq")
  TS_TASKIQ_SERIALIZER    message serializer: "json" (default) or "msgpack"
  TS_TASKIQ_RESULTS       RedisAsyncResultBackend serializer: "pickle" (taskiq-redis's default),
                          "json", "msgpack", or "none" for no result backend (default "pickle")
  TS_TASKIQ_RESULT_PREFIX the result backend's prefix_str (default: none, keys are bare task ids)
  TS_TASKIQ_RETRY         "simple" (SimpleRetryMiddleware, default), "simple-keep"
                          (no_result_on_retry=False), "smart" (SmartRetryMiddleware, no delay,
                          no schedule source) or "none"
  TS_TASKIQ_IDLE_TIMEOUT  RedisStreamBroker idle_timeout in ms (default taskiq-redis's 600000):
                          pending entries idle longer are XAUTOCLAIMed by a worker that reads
  TS_MARKER_DIR           when set, long tasks (slow, hang) touch <dir>/<task_id>.started as they
                          begin, so a test knows a worker is executing them without asking taskscope

Run a worker from this directory with:  taskiq worker taskiq_app:broker --workers 1
Task names are "taskiq_app:<function>" (add, fail, flaky, slow, hang).
"""

import asyncio
import os
from pathlib import Path

from taskiq import Context, SimpleRetryMiddleware, SmartRetryMiddleware, TaskiqDepends
from taskiq.serializers import JSONSerializer, MSGPackSerializer, PickleSerializer
from taskiq_redis import ListQueueBroker, PubSubBroker, RedisAsyncResultBackend, RedisStreamBroker

REDIS_URL = os.environ.get("TS_REDIS_URL")
if not REDIS_URL:
    raise SystemExit("taskiq_app: set TS_REDIS_URL (e.g. redis://127.0.0.1:6390/0)")

KIND = os.environ.get("TS_TASKIQ_BROKER") or "stream"
QUEUE = os.environ.get("TS_TASKIQ_QUEUE") or "taskiq"
SERIALIZER = os.environ.get("TS_TASKIQ_SERIALIZER") or "json"
RESULTS = os.environ.get("TS_TASKIQ_RESULTS") or "pickle"
RESULT_PREFIX = os.environ.get("TS_TASKIQ_RESULT_PREFIX") or None
RETRY = os.environ.get("TS_TASKIQ_RETRY") or "simple"

_SERIALIZERS = {"json": JSONSerializer, "msgpack": MSGPackSerializer, "pickle": PickleSerializer}

if KIND == "stream":
    _stream_opts = {}
    if os.environ.get("TS_TASKIQ_IDLE_TIMEOUT"):
        _stream_opts["idle_timeout"] = int(os.environ["TS_TASKIQ_IDLE_TIMEOUT"])
    broker = RedisStreamBroker(REDIS_URL, queue_name=QUEUE, **_stream_opts)
elif KIND == "list":
    broker = ListQueueBroker(REDIS_URL, queue_name=QUEUE)
elif KIND == "pubsub":
    broker = PubSubBroker(REDIS_URL, queue_name=QUEUE)
else:
    raise SystemExit(f"taskiq_app: unknown TS_TASKIQ_BROKER {KIND!r}")

broker = broker.with_serializer(_SERIALIZERS[SERIALIZER]())
if RESULTS != "none":
    broker = broker.with_result_backend(
        RedisAsyncResultBackend(
            REDIS_URL, serializer=_SERIALIZERS[RESULTS](), prefix_str=RESULT_PREFIX
        )
    )
if RETRY in ("simple", "simple-keep"):
    broker = broker.with_middlewares(
        SimpleRetryMiddleware(default_retry_count=3, no_result_on_retry=RETRY == "simple")
    )
elif RETRY == "smart":
    broker = broker.with_middlewares(
        SmartRetryMiddleware(default_retry_count=3, default_delay=0, use_jitter=False)
    )


def _mark_started(task_id: str) -> None:
    marker_dir = os.environ.get("TS_MARKER_DIR")
    if marker_dir:
        Path(marker_dir, f"{task_id}.started").touch()


@broker.task
async def add(a: int, b: int) -> int:
    return a + b


class CardDeclined(ValueError):
    pass


@broker.task
async def fail(n: int) -> None:
    raise CardDeclined(f"card declined {n}")


@broker.task(retry_on_error=True, max_retries=3)
async def flaky(key: str, fail_times: int, context: Context = TaskiqDepends()) -> str:
    retries = int(context.message.labels.get("_retries", 0))
    if retries < fail_times:
        raise ValueError(f"flaky {key} attempt {retries}")
    return f"ok after {retries}"


@broker.task
async def slow(seconds: float, context: Context = TaskiqDepends()) -> float:
    _mark_started(context.message.task_id)
    await asyncio.sleep(seconds)
    return seconds


@broker.task
async def hang(context: Context = TaskiqDepends()) -> None:
    _mark_started(context.message.task_id)
    await asyncio.sleep(3600)
