"""A taskiq app with two brokers, as issue #20 describes: a RedisStreamBroker (queue `ingest`,
SimpleRetryMiddleware) and a ListQueueBroker (queue `lq`), each with its own
RedisAsyncResultBackend (JSON serializer). Driven by tests/taskiq.rs.

Configured only from the environment:
  TS_REDIS_URL                  broker and result backend URL (required)
  TS_TASKIQ_STREAM_QUEUE        the stream broker's queue_name (default "ingest")
  TS_TASKIQ_LIST_QUEUE          the list broker's queue_name (default "lq")
  TS_TASKIQ_STREAM_RESULT_PREFIX  prefix_str of the stream broker's backend (default "results";
                                "-" for none: bare task ids)
  TS_TASKIQ_LIST_RESULT_PREFIX  prefix_str of the list broker's backend (default "results";
                                "-" for none: bare task ids)
  TS_MARKER_DIR                 when set, `slow` tasks touch <dir>/<task_id>.started as they begin

Workers:   taskiq worker taskiq_two_brokers:stream_broker --workers 1
           taskiq worker taskiq_two_brokers:list_broker --workers 1
Producer:  python taskiq_two_brokers.py BROKER KIND [--n N] [--fail-times K] [--seconds S]
           (BROKER stream or list; KIND add, flaky or slow); prints the task ids as a JSON list.
Task names: "taskiq_two_brokers:<kind>" on the stream broker, "taskiq_two_brokers:list_<kind>"
on the list broker.
"""

import argparse
import asyncio
import json
import os
from pathlib import Path

from taskiq import Context, SimpleRetryMiddleware, TaskiqDepends
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

REDIS_URL = os.environ.get("TS_REDIS_URL")
if not REDIS_URL:
    raise SystemExit("taskiq_two_brokers: set TS_REDIS_URL (e.g. redis://127.0.0.1:6390/0)")


def _prefix(var: str) -> "str | None":
    value = os.environ.get(var) or "results"
    return None if value == "-" else value


def _backend(prefix: "str | None") -> RedisAsyncResultBackend:
    return RedisAsyncResultBackend(REDIS_URL, serializer=JSONSerializer(), prefix_str=prefix)


stream_broker = (
    RedisStreamBroker(REDIS_URL, queue_name=os.environ.get("TS_TASKIQ_STREAM_QUEUE") or "ingest")
    .with_result_backend(_backend(_prefix("TS_TASKIQ_STREAM_RESULT_PREFIX")))
    .with_middlewares(SimpleRetryMiddleware(default_retry_count=3))
)
# socket_timeout=None: the list broker waits in `BRPOP <queue> 0` (forever), and redis-py 8
# (which taskiq-redis 1.2.4 requires) reads every reply with a 5 s socket timeout by default:
# an idle worker process dies of a TimeoutError after 5 s without a message and is restarted,
# losing the tasks it was running (observed). Applications need the same setting.
list_broker = ListQueueBroker(
    REDIS_URL,
    queue_name=os.environ.get("TS_TASKIQ_LIST_QUEUE") or "lq",
    socket_timeout=None,
).with_result_backend(_backend(_prefix("TS_TASKIQ_LIST_RESULT_PREFIX")))


def _mark_started(task_id: str) -> None:
    marker_dir = os.environ.get("TS_MARKER_DIR")
    if marker_dir:
        Path(marker_dir, f"{task_id}.started").touch()


@stream_broker.task
async def add(a: int, b: int) -> int:
    return a + b


@stream_broker.task(retry_on_error=True, max_retries=3)
async def flaky(key: str, fail_times: int, context: Context = TaskiqDepends()) -> str:
    retries = int(context.message.labels.get("_retries", 0))
    if retries < fail_times:
        raise ValueError(f"flaky {key} attempt {retries}")
    return f"ok after {retries}"


@stream_broker.task
async def slow(seconds: float, context: Context = TaskiqDepends()) -> float:
    _mark_started(context.message.task_id)
    await asyncio.sleep(seconds)
    return seconds


@list_broker.task
async def list_add(a: int, b: int) -> int:
    return a + b


@list_broker.task
async def list_slow(seconds: float, context: Context = TaskiqDepends()) -> float:
    _mark_started(context.message.task_id)
    await asyncio.sleep(seconds)
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("broker", choices=["stream", "list"])
    parser.add_argument("kind", choices=["add", "flaky", "slow"])
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--fail-times", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    opts = parser.parse_args()
    # Run as a script this file is `__main__`, whose tasks taskiq would name after the file's
    # path: send through the module the workers import.
    import taskiq_two_brokers as app

    broker = app.stream_broker if opts.broker == "stream" else app.list_broker
    name = opts.kind if opts.broker == "stream" else f"list_{opts.kind}"
    task = getattr(app, name)
    await broker.startup()
    ids = []
    for i in range(opts.n):
        args = {
            "add": [i, i + 1],
            "flaky": [f"k{i}", opts.fail_times],
            "slow": [opts.seconds],
        }[opts.kind]
        sent = await task.kiq(*args)
        ids.append(sent.task_id)
    await broker.shutdown()
    print(json.dumps(ids))


if __name__ == "__main__":
    asyncio.run(main())
