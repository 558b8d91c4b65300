"""arq job functions and worker settings driven by taskscope's integration tests (tests/arq.rs),
the capture script (capture_arq.py) and nothing else.

Workers run from this directory: `arq arq_app.WorkerSettings` (or `JsonWorkerSettings`,
`MsgpackWorkerSettings`, `CronWorkerSettings`: the same plus a cron job `tick` every second). Nothing here configures arq beyond what an application would: the
default pickle serializer unless a JSON or msgpack settings class is chosen.

  TS_REDIS_PORT   the Redis port (database 0)
  TS_ARQ_QUEUE    the queue name (default arq's own `arq:queue`)
  TS_MARKER_DIR   when set, long jobs write their pid to <dir>/<job_id>.started as they begin,
                  so a test knows a worker runs them without asking taskscope
"""

import asyncio
import json
import os
from pathlib import Path

from arq import Retry, cron
from arq.connections import RedisSettings


def _mark_started(ctx):
    marker_dir = os.environ.get("TS_MARKER_DIR")
    if marker_dir:
        Path(marker_dir, f"{ctx['job_id']}.started").write_text(str(os.getpid()))


async def add(ctx, x, y, note=None):
    return x + y


async def fail(ctx, n):
    raise ValueError(f"card declined {n}")


async def flaky(ctx, succeed_on):
    """Raises `Retry` until its try number reaches `succeed_on`."""
    if ctx["job_try"] < succeed_on:
        raise Retry(defer=0.2)
    return ctx["job_try"]


async def slow(ctx, seconds):
    _mark_started(ctx)
    await asyncio.sleep(float(seconds))
    return seconds


async def tick(ctx):
    return "tick"


class WorkerSettings:
    functions = [add, fail, flaky, slow]
    redis_settings = RedisSettings(port=int(os.environ.get("TS_REDIS_PORT", "6379")))
    queue_name = os.environ.get("TS_ARQ_QUEUE", "arq:queue")
    allow_abort_jobs = True
    job_timeout = 2
    max_tries = 3
    # Shorter than arq's hour, so a test sees the key a worker writes at start and refreshes.
    health_check_interval = 5


def _msgpack():
    import msgpack

    return msgpack


# arq reads a settings class's own attributes only (`__dict__`): no subclassing.
_BASE = {k: v for k, v in vars(WorkerSettings).items() if not k.startswith("__")}
CronWorkerSettings = type("CronWorkerSettings", (), {
    **_BASE,
    "cron_jobs": [cron(tick, second=set(range(60)))],
})
JsonWorkerSettings = type("JsonWorkerSettings", (), {
    **_BASE,
    "job_serializer": staticmethod(lambda d: json.dumps(d).encode()),
    "job_deserializer": staticmethod(json.loads),
})
MsgpackWorkerSettings = type("MsgpackWorkerSettings", (), {
    **_BASE,
    "job_serializer": staticmethod(lambda d: _msgpack().packb(d, use_bin_type=True)),
    "job_deserializer": staticmethod(lambda b: _msgpack().unpackb(b, raw=False)),
})
