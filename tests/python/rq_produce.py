#!/usr/bin/env python3
"""Enqueue RQ jobs like an application would; print their job ids as a JSON list.

    rq_produce.py KIND --url redis://127.0.0.1:6390/0 [--n N] [--queue Q] [--args JSON]
                  [--kwargs JSON] [--in SECONDS] [--retry MAX] [--retry-interval S]
                  [--depends-on ID] [--serializer pickle|json] [--cancel]
                  [--result-ttl S] [--timeout S]

KIND is a function of rq_app.py (add, fail, slow, hang, charge, retry_then_fail, ask_retry).
Defaults per kind: add [i, i+1], fail [i+1], slow [--seconds], charge [Card(i)], others [i].
`--in` schedules with `enqueue_in`; `--depends-on` defers on another job; `--cancel` cancels
each job right after enqueueing it.
"""
import argparse
import json
import os
import sys
from datetime import timedelta

from redis import Redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rq_app  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind")
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--queue", default="default")
    p.add_argument("--args")
    p.add_argument("--kwargs")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--in", dest="delay", type=float)
    p.add_argument("--retry", type=int)
    p.add_argument("--retry-interval", type=int, default=0)
    p.add_argument("--depends-on")
    p.add_argument("--serializer", default="pickle")
    p.add_argument("--cancel", action="store_true")
    p.add_argument("--result-ttl", type=int)
    p.add_argument("--timeout", type=int)
    a = p.parse_args()

    conn = Redis.from_url(a.url)
    serializer = JSONSerializer if a.serializer == "json" else None
    q = Queue(a.queue, connection=conn, serializer=serializer)
    func = getattr(rq_app, a.kind)
    ids = []
    for i in range(a.n):
        if a.args is not None:
            args = tuple(json.loads(a.args))
        elif a.kind == "add":
            args = (i, i + 1)
        elif a.kind == "fail":
            args = (i + 1,)
        elif a.kind == "slow":
            args = (a.seconds,)
        elif a.kind == "hang":
            args = ()
        elif a.kind == "charge":
            args = (rq_app.Card(i),)
        else:
            args = (i,)
        kwargs = json.loads(a.kwargs) if a.kwargs else {}
        opts = {}
        if a.retry:
            opts["retry"] = Retry(max=a.retry, interval=a.retry_interval)
        if a.depends_on:
            opts["depends_on"] = a.depends_on
        if a.result_ttl is not None:
            opts["result_ttl"] = a.result_ttl
        if a.timeout is not None:
            opts["job_timeout"] = a.timeout
        if a.delay is not None:
            job = q.enqueue_in(timedelta(seconds=a.delay), func, *args, **kwargs, **opts)
        else:
            job = q.enqueue(func, *args, **kwargs, **opts)
        if a.cancel:
            job.cancel()
        ids.append(job.id)
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
