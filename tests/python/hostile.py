#!/usr/bin/env python3
"""Plant hostile and huge payloads of every broker in a Redis (issue #14); print what was
planted as JSON: {"name": {"broker", "id", "listed", "what"}}. Used by tests/hostile.rs.

    hostile.py --url redis://127.0.0.1:6390/0 [--only NAME,NAME]

Everything goes where no worker reads it (queue `hostile` of each broker; the tests' workers
listen on their default queues; taskiq's stream is `hostile-stream`), so the workers are never the ones attacked. Payloads are
generated here, never checked in. `listed`: the task id is known without decoding the payload
(RQ job hashes, Dramatiq `.msgs` fields), so taskscope must list the task with an error.
"""
import argparse
import base64
import json
import os
import zlib

import msgpack
from redis import Redis

MiB = 1 << 20


def pickle_memo_chain(depth=50_000):
    """Lists nested `depth` deep through memo references: PROTO 4, EMPTY_LIST, MEMOIZE, then
    depth x (POP, EMPTY_LIST, MEMOIZE, LONG_BINGET k-1, APPEND), STOP. Python's own unpickler
    builds it without recursion; a recursive decoder overflows its stack."""
    out = bytearray(b"\x80\x04]\x94")
    for k in range(1, depth + 1):
        out += b"0]\x94j" + (k - 1).to_bytes(4, "little") + b"a"
    out += b"."
    return bytes(out)


def pickle_mark_flood(marks=1_000_000):
    """PROTO 2, a million MARKs, NONE, STOP: 998 bytes once zlib'd."""
    return b"\x80\x02" + b"(" * marks + b"N."


def rq_job(r, job_id, data, what):
    r.hset(
        f"rq:job:{job_id}",
        mapping={
            "status": "queued",
            "origin": "hostile",
            "description": f"hostile.{what}()",
            "created_at": "2026-12-06T00:00:00.000000Z",
            "enqueued_at": "2026-12-06T00:00:00.000000Z",
            "data": data,
            "timeout": "180",
        },
    )
    r.sadd("rq:queues", "rq:queue:hostile")
    r.rpush("rq:queue:hostile", job_id)


def celery_envelope(task_id, body, content_type="application/json", compression=None):
    headers = {
        "lang": "py",
        "task": "hostile.task",
        "id": task_id,
        "retries": 0,
        "root_id": task_id,
        "argsrepr": "()",
        "kwargsrepr": "{}",
    }
    if compression:
        headers["compression"] = compression
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "hostile"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": task_id + "-tag",
            },
        }
    )


def deep_json(depth):
    return b"[" * depth + b"]" * depth


def dramatiq_message(message_id, args_json):
    return (
        b'{"queue_name":"hostile","actor_name":"add","args":'
        + args_json
        + b',"kwargs":{},"options":{},"message_id":"'
        + message_id.encode()
        + b'","message_timestamp":1795445570761}'
    )


def taskiq_message(task_id, args):
    return msgpack.packb(
        {
            "task_id": task_id,
            "task_name": "hostile:task",
            "labels": {},
            "labels_types": {},
            "args": args,
            "kwargs": {},
        }
    )


def plant(r, only):
    planted = {}

    def add(name, broker, task_id, listed, what, do):
        if only and name not in only:
            return
        do()
        planted[name] = {"broker": broker, "id": task_id, "listed": listed, "what": what}

    # RQ: job hashes in a queue no worker listens on.
    add(
        "rq_memo_chain",
        "rq",
        "hostile-rq-memo-chain",
        True,
        "zlib'd pickle of lists nested 50,000 deep through memo references",
        lambda: rq_job(r, "hostile-rq-memo-chain", zlib.compress(pickle_memo_chain()), "memo_chain"),
    )
    add(
        "rq_mark_flood",
        "rq",
        "hostile-rq-mark-flood",
        True,
        "zlib'd pickle of a million MARKs (998 bytes)",
        lambda: rq_job(r, "hostile-rq-mark-flood", zlib.compress(pickle_mark_flood(), 9), "mark_flood"),
    )
    add(
        "rq_huge_data",
        "rq",
        "hostile-rq-huge-data",
        True,
        "6 MiB job data (over --max-payload-bytes)",
        lambda: rq_job(r, "hostile-rq-huge-data", os.urandom(6 * MiB), "huge_data"),
    )

    # Celery: messages in queue `hostile`.
    def celery(task_id, envelope):
        r.lpush("hostile", envelope)

    add(
        "celery_deep_body",
        "celery",
        "hostile-celery-deep-body",
        True,
        "JSON body nested 100,000 deep",
        lambda: celery(
            "hostile-celery-deep-body",
            celery_envelope("hostile-celery-deep-body", deep_json(100_000)),
        ),
    )
    add(
        "celery_zlib_bomb",
        "celery",
        "hostile-celery-zlib-bomb",
        True,
        "zlib body of 200 MB of JSON zeros",
        lambda: celery(
            "hostile-celery-zlib-bomb",
            celery_envelope(
                "hostile-celery-zlib-bomb",
                zlib.compress(b"[" + b"0," * 100_000_000 + b"0]", 9),
                compression="application/x-zlib",
            ),
        ),
    )
    add(
        "celery_huge_envelope",
        "celery",
        "hostile-celery-huge-envelope",
        False,
        "6 MiB message (over --max-payload-bytes): its id is inside it",
        lambda: celery(
            "hostile-celery-huge-envelope",
            celery_envelope("hostile-celery-huge-envelope", b"[[" + b"1," * (3 * MiB) + b"1],{},{}]"),
        ),
    )

    # A 20 MB string result, stored and published, of a small message in `hostile`.
    def huge_result():
        task_id = "hostile-celery-20mb-result"
        r.lpush("hostile", celery_envelope(task_id, b"[[1], {}, {}]"))
        value = b'{"status": "SUCCESS", "result": "' + b"x" * (20 * 1000 * 1000) + b'"}'
        r.set(f"celery-task-meta-{task_id}", value)
        r.publish(f"celery-task-meta-{task_id}", value)

    add(
        "celery_20mb_result",
        "celery",
        "hostile-celery-20mb-result",
        False,
        "20 MB string result (stored and published)",
        huge_result,
    )

    # Dramatiq: `.msgs` entries of queue `hostile`.
    def dramatiq(message_id, payload):
        r.hset("dramatiq:hostile.msgs", message_id, payload)
        r.rpush("dramatiq:hostile", message_id)

    add(
        "dramatiq_deep_json",
        "dramatiq",
        "hostile-dramatiq-deep-json",
        True,
        "message whose args are nested 100,000 deep",
        lambda: dramatiq(
            "hostile-dramatiq-deep-json",
            dramatiq_message("hostile-dramatiq-deep-json", deep_json(100_000)),
        ),
    )
    add(
        "dramatiq_huge",
        "dramatiq",
        "hostile-dramatiq-huge",
        True,
        "6 MiB message (over --max-payload-bytes)",
        lambda: dramatiq(
            "hostile-dramatiq-huge",
            dramatiq_message("hostile-dramatiq-huge", b"[" + b"1," * (3 * MiB) + b"1]"),
        ),
    )

    # taskiq: entries of stream `hostile-stream`.
    add(
        "taskiq_huge_msgpack",
        "taskiq",
        "hostile-taskiq-huge-msgpack",
        False,
        "6 MiB msgpack message (over --max-payload-bytes)",
        lambda: r.xadd(
            "hostile-stream",
            {"data": taskiq_message("hostile-taskiq-huge-msgpack", [os.urandom(6 * MiB)])},
        ),
    )
    add(
        "taskiq_msgpack_lengths",
        "taskiq",
        "hostile-taskiq-msgpack-lengths",
        False,
        "msgpack declaring an array and a map of 4 billion items in 20 bytes",
        lambda: [
            r.xadd("hostile-stream", {"data": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 15}),
            r.xadd("hostile-stream", {"data": b"\xdf\xff\xff\xff\xff" + b"\xc0" * 15}),
        ],
    )
    add(
        "taskiq_deep_msgpack",
        "taskiq",
        "hostile-taskiq-deep-msgpack",
        False,
        "msgpack arrays nested 1,000,000 deep (1 MB)",
        lambda: r.xadd("hostile-stream", {"data": b"\x91" * 1_000_000 + b"\xc0"}),
    )
    # arq: a job definition and a result in queue `arq:hostile`, which no worker polls.
    def arq_job(job_id, payload):
        r.psetex(f"arq:job:{job_id}", 86_400_000, payload)
        r.zadd("arq:hostile", {job_id: 1})

    add(
        "arq_deep_job",
        "arq",
        "hostile-arq-deep-job",
        True,
        "JSON job definition whose arguments nest 100,000 lists deep",
        lambda: arq_job(
            "hostile-arq-deep-job",
            b'{"t": null, "f": "hostile", "a": ' + b"[" * 100_000 + b"]" * 100_000
            + b', "k": {}, "et": 0}',
        ),
    )
    add(
        "arq_huge_result",
        "arq",
        "hostile-arq-huge-result",
        True,
        "6 MiB result (over --max-payload-bytes)",
        lambda: r.set("arq:result:hostile-arq-huge-result", b"\x80\x04" + os.urandom(6 * MiB)),
    )
    return planted


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--only", default="")
    a = p.parse_args()
    only = {n for n in a.only.split(",") if n}
    print(json.dumps(plant(Redis.from_url(a.url), only)))


if __name__ == "__main__":
    main()
