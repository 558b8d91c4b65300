#!/usr/bin/env python3
"""Whether taskscope sees a Dramatiq message that an idle worker takes and acknowledges within
milliseconds of its enqueue, on a queue it has never seen (the race of a new queue's first
message: no prefetch rule exists for it yet).

    .venv/bin/python bench/dramatiq_outrun.py [--n 40] [--max-delay-ms 0 20 50] [--bin target/debug/taskscope]

For each delay bound: a fresh `redis-server`, `taskscope serve` with the defaults (auto-detection;
a heartbeat written first, as a booting worker does), then `--n` fresh queues, each getting one
message enqueued with dramatiq's own `RedisBroker`, fetched by dramatiq's own consumer after a
uniform random 0..max-delay-ms pause (an idle worker's poll landing that long after the enqueue)
and acknowledged at once. It prints the enqueue-to-ack gaps and how many tasks taskscope shows as
`success` (unknown ones were never read; others are stuck). Needs the tests' `.venv` (dramatiq).
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import dramatiq
from dramatiq.brokers.redis import RedisBroker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def race(binary, n, max_delay_ms):
    tmp = tempfile.mkdtemp(prefix="outrun-")
    port, http = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    ts = None
    try:
        url = f"redis://127.0.0.1:{port}/0"
        broker = RedisBroker(url=url)
        wait(lambda: broker.client.ping(), 10, "redis-server")
        with open(os.path.join(tmp, "taskscope.log"), "w") as log:
            ts = subprocess.Popen([binary, "serve", "--redis", url, "--db", os.path.join(tmp, "t.duckdb"),
                                   "--listen", f"127.0.0.1:{http}"], stdout=log, stderr=log)
        api = f"http://127.0.0.1:{http}"
        wait(lambda: get(f"{api}/healthz") is not None, 30, "taskscope")
        broker.client.zadd("dramatiq:__heartbeats__", {"booting-worker": int(time.time() * 1000)})
        def watching():
            found = ((get(f"{api}/healthz") or {}).get("detection") or {}).get("found") or []
            return any(f.get("broker") == "dramatiq" and isinstance(f.get("watching_after_ms"), (int, float))
                       for f in found)
        # Detected, and its adapter watching: subscriptions answered, start-up scan done.
        wait(watching, 30, "the dramatiq adapter watching")
        ids, gaps = [], []
        stamp = int(time.time())
        for i in range(n):
            q = f"outrun{i}_{stamp}"
            broker.declare_queue(q)
            msg = dramatiq.Message(queue_name=q, actor_name="add", args=(i, i + 1), kwargs={}, options={})
            consumer = broker.consume(q, prefetch=1, timeout=10)
            t0 = time.perf_counter()
            broker.enqueue(msg)
            if max_delay_ms:
                time.sleep(random.uniform(0, max_delay_ms) / 1000)
            m = None
            while m is None:
                m = next(consumer)
            consumer.ack(m)
            gaps.append((time.perf_counter() - t0) * 1000)
            consumer.close()
            ids.append(msg.message_id)
            time.sleep(0.05)
        states = []
        deadline = time.time() + 20
        while time.time() < deadline:
            states = [(get(f"{api}/api/tasks/{i}") or {}).get("state") for i in ids]
            if all(s == "success" for s in states):
                break
            time.sleep(0.5)
        gaps_sorted = sorted(gaps)
        return {
            "max_delay_ms": max_delay_ms,
            "n": n,
            "success": sum(s == "success" for s in states),
            "never_seen": sum(s is None for s in states),
            "stuck": sum(s not in (None, "success") for s in states),
            "gap_ms_p50": round(gaps_sorted[n // 2], 1),
            "gap_ms_min": round(gaps_sorted[0], 1),
            "missed_gaps_ms": [round(g, 1) for g, s in zip(gaps, states) if s != "success"],
        }
    finally:
        if ts:
            ts.terminate()
            ts.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--max-delay-ms", type=float, nargs="+", default=[0, 20, 50])
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "taskscope"))
    a = p.parse_args()
    for d in a.max_delay_ms:
        print(json.dumps(race(a.bin, a.n, d)), flush=True)


if __name__ == "__main__":
    main()
