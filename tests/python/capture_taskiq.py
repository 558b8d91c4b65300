#!/usr/bin/env python3
"""Capture real taskiq (taskiq-redis) payloads from Redis as test fixtures.

Usage (with the project venv, against an already-running *throwaway* Redis; the script FLUSHDBs
db 0 between scenarios):

    .venv/bin/python tests/python/capture_taskiq.py --redis-port 6461 \
        --out broker-adapters/tests/fixtures/taskiq

For each scenario a real `taskiq worker taskiq_app:broker --workers 1` subprocess runs with the
scenario's TS_* variables (see taskiq_app.py) and real `taskiq_produce.py` subprocesses send
add / fail / flaky tasks. Then the stream entries (XRANGE, the `data` field), list items
(LRANGE, sent with no worker running) and result keys (GET) are written as raw bytes:

    <scenario>_message_<task>[_retry<n>].bin   the message as the broker stored it
    <scenario>_result_<task>.bin               the result backend's value
    manifest.json                              what each file is (task id, serializer, kind)
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
PY = sys.executable
TASKIQ = str(Path(PY).with_name("taskiq"))

# name: (broker, message serializer, result serializer, result prefix)
SCENARIOS = {
    "stream_json_pickle": ("stream", "json", "pickle", None),
    "stream_msgpack_json": ("stream", "msgpack", "json", None),
    "stream_json_msgpack": ("stream", "json", "msgpack", "res"),
    "list_json_pickle": ("list", "json", "pickle", None),
}


def env_for(port, broker, ser, results, prefix, retry="simple-keep"):
    env = dict(os.environ)
    env.update({
        "TS_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "TS_TASKIQ_BROKER": broker,
        "TS_TASKIQ_SERIALIZER": ser,
        "TS_TASKIQ_RESULTS": results,
        "TS_TASKIQ_RETRY": retry,
    })
    if prefix:
        env["TS_TASKIQ_RESULT_PREFIX"] = prefix
    return env


def produce(env, kind, *extra):
    out = subprocess.run([PY, str(HERE / "taskiq_produce.py"), kind, *extra], env=env,
                         cwd=HERE, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)[0]


def wait(what, pred, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"capture_taskiq: timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--out", required=True)
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    r = redis.Redis(port=opts.redis_port)
    manifest = {}

    def save(name, data, **meta):
        (out / name).write_bytes(data)
        manifest[name] = meta

    for scenario, (broker, ser, results, prefix) in SCENARIOS.items():
        r.flushdb()
        env = env_for(opts.redis_port, broker, ser, results, prefix)
        key = (lambda tid: f"{prefix}:{tid}") if prefix else (lambda tid: tid)
        if broker == "list":
            # No worker: the items stay in the list to be read.
            tid = produce(env, "add")
            items = r.lrange("taskiq", 0, -1)
            save(f"{scenario}_message_add.bin", items[0], task_id=tid, serializer=ser,
                 kind="list item")
        worker = subprocess.Popen([TASKIQ, "worker", "taskiq_app:broker", "--workers", "1"],
                                  env=env, cwd=HERE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            if broker == "stream":
                wait("the consumer group", lambda: r.exists("taskiq") and r.xinfo_groups("taskiq"))
                time.sleep(0.5)
            else:
                wait("the list to drain", lambda: r.llen("taskiq") == 0)
            ids = {
                "add": produce(env, "add"),
                "fail": produce(env, "fail"),
                "flaky": produce(env, "flaky", "--fail-times", "1"),
            }
            for task, tid in ids.items():
                raw = wait(f"the result of {task}", lambda: r.get(key(tid)))
                if task == "flaky":
                    wait("the final flaky result", lambda: b"ok after" in (r.get(key(tid)) or b""))
                    raw = r.get(key(tid))
                save(f"{scenario}_result_{task}.bin", raw, task_id=tid, serializer=results,
                     kind="result", prefix=prefix)
            if broker == "stream":
                by_task = {}
                for entry_id, fields in r.xrange("taskiq"):
                    for task, tid in ids.items():
                        if tid.encode() in fields[b"data"]:
                            by_task.setdefault(task, []).append(fields[b"data"])
                for task, datas in by_task.items():
                    for n, data in enumerate(datas):
                        suffix = f"_retry{n}" if n else ""
                        save(f"{scenario}_message_{task}{suffix}.bin", data, task_id=ids[task],
                             serializer=ser, kind="stream entry data", retries=n)
        finally:
            # taskiq's worker can hang in its graceful shutdown: the scenario is over, kill it.
            os.killpg(worker.pid, 9)
            worker.wait()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
