#!/usr/bin/env python3
"""Capture real arq keys (job, result, retry counter, queue, health check) as test fixtures for
broker-adapters/tests/arq_decoding.rs.

Usage (with the project venv, against a *throwaway* redis-server: the script FLUSHALLs it):

    redis-server --port 6493 --save '' --appendonly no --daemonize yes
    .venv/bin/python tests/python/capture_arq.py --redis-port 6493 \
        --out broker-adapters/tests/fixtures/arq

Producers are tests/python/arq_produce.py (`ArqRedis.enqueue_job`), workers real `arq`
processes running tests/python/arq_app.py's settings. Every fixture is one JSON file:
{"key": name, "type": "string"|"zset", "value": base64 (strings), "members": [[member, score]]
(sorted sets), "pttl": ms}. manifest.json says which arq wrote them.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import arq
import redis

HERE = Path(__file__).resolve().parent
PY = sys.executable
ARQ = str(Path(PY).with_name("arq"))


class Capture:
    def __init__(self, port, out):
        self.port = port
        self.r = redis.Redis(port=port)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = {"arq": arq.VERSION if hasattr(arq, "VERSION") else arq.version.VERSION,
                         "files": {}}

    def produce(self, *args, serializer="pickle", queue="arq:queue"):
        out = subprocess.run(
            [PY, str(HERE / "arq_produce.py"), "--port", str(self.port), "--queue", queue,
             "--serializer", serializer, *args],
            check=True, capture_output=True, text=True, cwd=HERE,
        )
        return json.loads(out.stdout)["ids"]

    def worker(self, settings="WorkerSettings", queue="arq:queue", burst=True):
        env = {**os.environ, "TS_REDIS_PORT": str(self.port), "TS_ARQ_QUEUE": queue}
        args = [ARQ, f"arq_app.{settings}"] + (["--burst"] if burst else [])
        return subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def burst(self, settings="WorkerSettings", queue="arq:queue"):
        self.worker(settings, queue).wait(timeout=60)

    def save(self, name, key, what):
        kind = self.r.type(key).decode()
        doc = {"key": key, "type": kind, "pttl": self.r.pttl(key)}
        if kind == "string":
            doc["value"] = base64.b64encode(self.r.get(key)).decode()
        elif kind == "zset":
            doc["members"] = [[m.decode(), s] for m, s in self.r.zrange(key, 0, -1, withscores=True)]
        else:
            raise SystemExit(f"{key} is {kind}: nothing to capture for {name}")
        (self.out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        self.manifest["files"][f"{name}.json"] = what

    def wait_key(self, key, timeout=30):
        deadline = time.time() + timeout
        while not self.r.exists(key):
            if time.time() > deadline:
                raise SystemExit(f"{key} never appeared")
            time.sleep(0.02)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    c = Capture(a.redis_port, a.out)
    c.r.flushall()

    # Pickle (arq's default): jobs waiting, then their results from a burst worker.
    [add] = c.produce("add", "[1, 2]")
    [deferred] = c.produce("--defer-by", "3600", "add", "[5, 6]")
    c.save("job_pickle_queued", f"arq:job:{add}", "add(1, 2, note=None) waiting, pickle")
    c.save("job_pickle_deferred", f"arq:job:{deferred}", "add(5, 6) with _defer_by=3600")
    c.save("queue_default", "arq:queue", "arq:queue with one due and one deferred job")
    c.r.zrem("arq:queue", deferred)
    [fail] = c.produce("fail", "[3]")
    [flaky] = c.produce("flaky", "[2]")
    [exhausted] = c.produce("flaky", "[10]")
    [timeout] = c.produce("slow", "[5]")
    c.burst()
    c.save("result_pickle_success", f"arq:result:{add}", "add(1, 2) returned 3")
    c.save("result_pickle_failure", f"arq:result:{fail}", "fail(3) raised ValueError")
    c.save("result_pickle_retried_success", f"arq:result:{flaky}",
           "flaky(2): Retry once, then success on try 2")
    c.save("result_pickle_max_tries", f"arq:result:{exhausted}",
           "flaky(10) with max_tries=3: JobExecutionFailed on try 4")
    c.save("result_pickle_timeout", f"arq:result:{timeout}", "slow(5) with job_timeout=2")

    # A retry waiting for its next try, and a running job (its retry counter).
    w = c.worker(burst=False)
    c.wait_key("arq:queue:health-check")
    c.save("health_check", "arq:queue:health-check",
           "a worker's health check (a burst worker deletes it as it exits)")
    [waiting] = c.produce("flaky", "[99]")
    c.wait_key(f"arq:retry:{waiting}")
    c.save("retry_counter", f"arq:retry:{waiting}", "arq:retry:<id> of a job on its first try")
    [aborted] = c.produce("slow", "[30]")
    c.wait_key(f"arq:in-progress:{aborted}")
    c.save("in_progress", f"arq:in-progress:{aborted}", "arq:in-progress:<id> of a running job")
    c.produce("abort", aborted)
    c.wait_key(f"arq:result:{aborted}")
    c.save("result_pickle_aborted", f"arq:result:{aborted}", "slow(30) aborted by Job.abort")
    w.terminate()
    w.wait(timeout=30)
    c.r.delete(f"arq:job:{waiting}", f"arq:retry:{waiting}")
    c.r.zrem("arq:queue", waiting)

    # JSON and msgpack serializers, and a custom queue name.
    for ser, settings in (("json", "JsonWorkerSettings"), ("msgpack", "MsgpackWorkerSettings")):
        [ok] = c.produce("add", "[1, 2]", serializer=ser)
        c.save(f"job_{ser}_queued", f"arq:job:{ok}", f"add(1, 2) waiting, {ser}")
        [bad] = c.produce("fail", "[4]", serializer=ser)
        c.burst(settings)
        c.save(f"result_{ser}_success", f"arq:result:{ok}", f"add(1, 2) returned 3, {ser}")
        c.save(f"result_{ser}_failure", f"arq:result:{bad}",
               f"fail(4): the exception does not serialize, {ser}")
    [custom] = c.produce("add", "[7, 8]", queue="billing")
    c.burst(queue="billing")
    c.save("result_custom_queue", f"arq:result:{custom}", "add(7, 8) on the queue 'billing'")

    (c.out / "manifest.json").write_text(json.dumps(c.manifest, indent=1) + "\n")


main()
