#!/usr/bin/env python3
"""Capture the keyspace notifications a real RQ worker's writes raise for one instant job, in
the order taskscope receives them, as a fixture for broker-adapters/tests/rq_decoding.rs.

Usage (with the project venv, against a *throwaway* redis-server: the script FLUSHALLs it and
turns keyspace notifications on):

    redis-server --port 6482 --save '' --appendonly no --daemonize yes
    .venv/bin/python tests/python/capture_rq_keyspace.py --redis-port 6482 \
        --out broker-adapters/tests/fixtures/rq

Writes keyspace_instant_<kind>.json for kind `success` (rq_app.add(2, 3)) and `failure`
(rq_app.fail(3)), each run by a real forking `rq worker --burst`: `events` are [key, event]
pairs (`__keyevent@0__:<event>` messages) from the job's enqueue to the worker's exit, only of
the keys taskscope's RQ adapter subscribes to (its `Interest::key_patterns`), with the job id
as JOB (the worker is `wcapture`); `hash` is the job hash after the job ended ({field:
base64(value)}), `results` the newest results-stream entry ({"id", "fields"}).
"""
import argparse
import base64
import fnmatch
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
import rq

HERE = Path(__file__).resolve().parent
PY = sys.executable
RQ = str(Path(PY).with_name("rq"))
WORKER = "wcapture"
# The RQ adapter's key patterns (broker-adapters/src/rq/mod.rs, `interest`).
PATTERNS = ["rq:job:*", "rq:results:*", "rq:scheduled:*", "rq:worker:*", "rq:queues",
            "rq:execution:*", "rq:executions:*"]


def b64(v):
    return base64.b64encode(v).decode()


def capture(port, kind, args):
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis(port=port)
    r.flushall()
    r.config_set("notify-keyspace-events", "KEA")
    events = []
    pubsub = r.pubsub()
    pubsub.psubscribe("__keyevent@0__:*")
    while pubsub.get_message(timeout=1.0) is None:
        pass  # the subscription's confirmation
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            m = pubsub.get_message(timeout=0.1)
            if m and m["type"] == "pmessage":
                events.append((m["data"].decode(), m["channel"].decode().split(":", 1)[1]))

    t = threading.Thread(target=listen)
    t.start()
    out = subprocess.run([PY, str(HERE / "rq_produce.py"), kind, "--args", args, "--url", url],
                         check=True, capture_output=True, text=True)
    [job] = json.loads(out.stdout)
    subprocess.run([RQ, "worker", "--burst", "--url", url, "--name", WORKER, "default"],
                   cwd=HERE, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    time.sleep(0.5)
    stop.set()
    t.join()
    pubsub.close()
    kept = [[k.replace(job, "JOB"), e] for k, e in events
            if any(fnmatch.fnmatchcase(k, p) for p in PATTERNS)]
    h = r.hgetall(f"rq:job:{job}")
    [(eid, fields)] = r.xrevrange(f"rq:results:{job}", count=1)
    return {
        "rq": rq.__version__,
        "job": f"rq_app.{kind}({args[1:-1]})",
        "events": kept,
        "hash": {k.decode(): b64(v) for k, v in sorted(h.items())},
        "results": {"id": eid.decode(), "fields": {k.decode(): b64(v) for k, v in fields.items()}},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    for kind, args in [("success", ("add", "[2, 3]")), ("failure", ("fail", "[3]"))]:
        fixture = capture(a.redis_port, args[0], args[1])
        (out / f"keyspace_instant_{kind}.json").write_text(json.dumps(fixture, indent=1) + "\n")


if __name__ == "__main__":
    main()
