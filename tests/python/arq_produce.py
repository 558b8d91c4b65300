#!/usr/bin/env python3
"""Enqueues arq jobs as an application would (`ArqRedis.enqueue_job`), for tests/arq.rs and
capture_arq.py. Prints one JSON line: {"ids": [...]}.

    arq_produce.py --port P [--queue Q] [--serializer pickle|json|msgpack] \
        FUNCTION [ARGS_JSON] [--defer-by S] [--job-id ID] [--count N]
    arq_produce.py --port P abort JOB_ID     (Job.abort, without waiting)
"""
import argparse
import asyncio
import json

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

import arq_app


def serializers(name):
    if name == "json":
        s = arq_app.JsonWorkerSettings
        return s.job_serializer, s.job_deserializer
    if name == "msgpack":
        s = arq_app.MsgpackWorkerSettings
        return s.job_serializer, s.job_deserializer
    return None, None


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue", default="arq:queue")
    p.add_argument("--serializer", default="pickle")
    p.add_argument("--defer-by", type=float)
    p.add_argument("--job-id")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("function")
    p.add_argument("args", nargs="?", default="[]")
    a = p.parse_args()
    ser, de = serializers(a.serializer)
    pool = await create_pool(
        RedisSettings(port=a.port), job_serializer=ser, job_deserializer=de, default_queue_name=a.queue
    )
    if a.function == "abort":
        # Job.abort writes the request, then polls for the result: give up polling at once.
        try:
            await Job(a.args, pool, _queue_name=a.queue, _deserializer=de).abort(timeout=0.05)
        except asyncio.TimeoutError:
            pass
        print(json.dumps({"ids": [a.args]}))
        return
    args = json.loads(a.args)
    ids = []
    for i in range(a.count):
        job = await pool.enqueue_job(
            a.function, *args, _job_id=a.job_id, _defer_by=a.defer_by, note=None
        ) if a.function == "add" else await pool.enqueue_job(
            a.function, *args, _job_id=a.job_id, _defer_by=a.defer_by
        )
        ids.append(job.job_id if job else None)
    print(json.dumps({"ids": ids}))
    await pool.aclose()


asyncio.run(main())
