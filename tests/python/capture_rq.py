#!/usr/bin/env python3
"""Capture real RQ job hashes, results-stream entries, registries and worker hashes as test
fixtures for broker-adapters/tests/rq_decoding.rs.

Usage (with the project venv, against a *throwaway* redis-server: the script FLUSHALLs it):

    redis-server --port 6482 --save '' --appendonly no --daemonize yes
    .venv/bin/python tests/python/capture_rq.py --redis-port 6482 \
        --out broker-adapters/tests/fixtures/rq

Producers are tests/python/rq_produce.py, workers are real `rq worker` processes (the default
forking Worker) run from tests/python. Every fixture is JSON: a hash as {field: base64(value)},
a stream entry as {"id": id, "fields": {field: base64(value)}}, a sorted set as
[[member, score], ...]. manifest.json says what each file is and which rq wrote it.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import rq

HERE = Path(__file__).resolve().parent
PY = sys.executable
RQ = str(Path(PY).with_name("rq"))


def b64(v):
    return base64.b64encode(v).decode()


class Capture:
    def __init__(self, port, out):
        self.url = f"redis://127.0.0.1:{port}/0"
        self.r = redis.Redis(port=port)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = {"rq": rq.__version__}

    def produce(self, *args):
        out = subprocess.run(
            [PY, str(HERE / "rq_produce.py"), *args, "--url", self.url],
            check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout)

    def worker(self, *args, queues=("default",), env=None):
        return subprocess.Popen(
            [RQ, "worker", "--url", self.url, *args, *queues],
            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    def burst(self, *args, queues=("default",)):
        self.worker("--burst", *args, queues=queues).wait(timeout=60)

    def save_hash(self, name, key, what):
        h = self.r.hgetall(key)
        assert h, f"{key} is empty"
        (self.out / f"{name}.json").write_text(
            json.dumps({k.decode(): b64(v) for k, v in sorted(h.items())}, indent=1) + "\n")
        self.manifest[f"{name}.json"] = what

    def save_stream(self, name, key, what):
        entries = self.r.xrevrange(key, count=1)
        assert entries, f"{key} is empty"
        eid, fields = entries[0]
        (self.out / f"{name}.json").write_text(json.dumps(
            {"id": eid.decode(), "fields": {k.decode(): b64(v) for k, v in fields.items()}},
            indent=1) + "\n")
        self.manifest[f"{name}.json"] = what

    def save_zset(self, name, key, what):
        z = self.r.zrange(key, 0, -1, withscores=True)
        (self.out / f"{name}.json").write_text(
            json.dumps([[m.decode(), s] for m, s in z], indent=1) + "\n")
        self.manifest[f"{name}.json"] = what

    def wait(self, what, probe, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if probe():
                return
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def run(self):
        r = self.r
        r.flushall()
        [add] = self.produce("add", "--args", "[2, 3]", "--kwargs", '{"note": "x"}')
        self.save_hash("job_pickle_queued", f"rq:job:{add}",
                       "rq_app.add(2, 3, note='x') just enqueued, default (pickle) serializer")
        [js] = self.produce("add", "--args", "[4, 5]", "--serializer", "json")
        self.save_hash("job_json_queued", f"rq:job:{js}",
                       "rq_app.add(4, 5) enqueued with rq.serializers.JSONSerializer")
        [card] = self.produce("charge", "--args", "[]", "--kwargs", '{"amount": 3}')
        r.delete(f"rq:job:{card}")
        # A Card instance as argument: enqueue it from Python directly.
        code = (
            "import sys; sys.path.insert(0, %r); import rq_app; from redis import Redis; from rq import Queue;"
            "q = Queue(connection=Redis.from_url(%r)); print(q.enqueue(rq_app.charge, rq_app.Card(7), amount=3).id)"
        ) % (str(HERE), self.url)
        card = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
        self.save_hash("job_custom_class_queued", f"rq:job:{card}",
                       "rq_app.charge(Card(7), amount=3): a custom class in the pickled arguments")
        [fail] = self.produce("fail", "--args", "[3]")
        [retry] = self.produce("retry_then_fail", "--args", "[1]", "--retry", "2")
        r.lrem("rq:queue:default", 0, card)
        self.burst("--max-jobs", "4")
        self.save_hash("job_pickle_finished", f"rq:job:{add}", "rq_app.add(2, 3) after success")
        self.save_stream("results_success", f"rq:results:{add}", "results entry of the success (type 1)")
        self.save_hash("job_failed", f"rq:job:{fail}", "rq_app.fail(3) after it raised ValueError")
        self.save_stream("results_failure", f"rq:results:{fail}",
                         "results entry of the failure (type 2, exc_string)")
        self.save_hash("job_retry_requeued", f"rq:job:{retry}",
                       "retry_then_fail(1) with Retry(max=2) after its first attempt failed: queued again")
        self.save_zset("failed_registry", "rq:failed:default", "rq:failed:default, score = expiry")
        # Scheduled.
        [sched] = self.produce("add", "--in", "600")
        self.save_hash("job_scheduled", f"rq:job:{sched}", "enqueue_in(600 s)")
        self.save_zset("scheduled_registry", "rq:scheduled:default", "rq:scheduled:default, score = due time")
        # Running, and the worker hash while busy.
        r.delete("rq:queue:default")
        marker = Path(tempfile.mkdtemp())
        [slow] = self.produce("slow", "--seconds", "3")
        w = self.worker(env={"TS_MARKER_DIR": str(marker)})
        self.wait("slow job to start", lambda: (marker / f"{slow}.started").exists())
        self.save_hash("job_started", f"rq:job:{slow}", "slow(3) while a worker runs it")
        [wkey] = [k.decode() for k in r.smembers("rq:workers")]
        self.save_hash("worker_busy", wkey, "a forking Worker's hash while it runs a job")
        self.manifest["worker_busy_pttl_ms"] = r.pttl(wkey)
        self.save_zset("started_registry", "rq:wip:default", "rq:wip:default: <job>:<execution>, score = expiry")
        w.terminate()
        w.wait(timeout=30)
        (self.out / "manifest.json").write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    Capture(a.redis_port, a.out).run()


if __name__ == "__main__":
    main()
