#!/usr/bin/env python3
"""How fast `--brokers auto` reacts, and what its reaction costs Redis.

    python3 bench/detect_delay.py [--runs 20] [--bin target/release/taskscope]

1. **First key to watching**, over `--runs` cold starts per broker: a fresh, empty
   `redis-server`, a `taskscope serve` with the defaults (nothing but `--redis`, `--db`,
   `--listen`), then one broker's first key written the way its library writes it; the delay is
   from that write to `/healthz` showing the broker's adapter watching (`watching_after_ms` set
   on its detection entry, i.e. after its subscriptions, scan and catch-up ran). `/healthz` is
   polled every 2 ms, so figures are upper bounds by about that much. taskscope's own
   measurement (evidence received to watching) is printed beside it.
2. **Redis cost of the mechanism**: `redis-benchmark` of `SET` on random new keys (the worst
   case: every command creates a key, so every command raises a new-key event) and of `LPUSH`
   on one key (no new keys), against a Redis with notifications off and no taskscope, then with
   taskscope's detection watching (`notify-keyspace-events` `KEn`, its subscriber on
   `__keyevent@*__:new`). Redis CPU seconds per 100k commands come from `INFO cpu` deltas.

Needs only the Python standard library, `redis-server`, `redis-cli` and `redis-benchmark`.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The first key each library writes, as redis-cli arguments.
FIRST_KEYS = {
    # kombu declares the queue's binding when a worker or producer starts.
    "celery": ["SADD", "_kombu.binding.celery", "celery\x06\x16\x06\x16celery"],
    # A Dramatiq worker's first heartbeat.
    "dramatiq": ["ZADD", "dramatiq:__heartbeats__", "1765000000000", "0b8a5f2e-worker"],
    # RQ registers a queue on its first enqueue.
    "rq": ["SADD", "rq:queues", "rq:queue:default"],
    # taskiq's RedisStreamBroker: the first message of stream "ingest".
    "taskiq": [
        "XADD", "ingest", "*", "data",
        json.dumps({"task_id": "0" * 32, "task_name": "app:add", "labels": {},
                    "labels_types": None, "args": [1, 2], "kwargs": {}}),
    ],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def health(base):
    with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
        return json.load(r)


def wait(what, pred, timeout=30.0, every=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


class World:
    """A private redis-server and, optionally, a taskscope serve watching it."""

    def __init__(self, binary, taskscope=True):
        self.dir = tempfile.mkdtemp(prefix="detect-delay-")
        self.port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait("redis", lambda: self._ping(), every=0.01)
        self.ts = None
        if taskscope:
            listen = f"127.0.0.1:{free_port()}"
            self.base = f"http://{listen}"
            self.ts = subprocess.Popen(
                [binary, "serve", "--redis", f"redis://127.0.0.1:{self.port}/0",
                 "--db", os.path.join(self.dir, "t.duckdb"), "--listen", listen],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "ts.log"), "w"))
            wait("taskscope ready", self._ready, every=0.01)

    def _ping(self):
        try:
            return cli(self.port, "PING") == "PONG"
        except subprocess.CalledProcessError:
            return False

    def _ready(self):
        try:
            h = health(self.base)
        except OSError:
            return False
        return h["redis"] == "connected" and h["detection"]["passes"] >= 1

    def close(self):
        for p in (self.ts, self.redis):
            if p:
                p.send_signal(signal.SIGTERM)
        for p in (self.ts, self.redis):
            if p:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def watching(base, broker):
    found = health(base)["detection"]["found"]
    return next((f for f in found if f["broker"] == broker
                 and f.get("watching_after_ms") is not None), None)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def delays(binary, runs):
    print(f"first key to watching, {runs} cold starts per broker (ms):")
    print(f"{'broker':10} {'p50':>7} {'p99':>7} {'max':>7}   taskscope's own p50/p99")
    everything = []
    for broker, first_key in FIRST_KEYS.items():
        outside, inside = [], []
        for _ in range(runs):
            w = World(binary)
            try:
                t0 = time.monotonic()
                cli(w.port, *first_key)
                entry = wait(f"{broker} watching", lambda: watching(w.base, broker))
                outside.append((time.monotonic() - t0) * 1e3)
                inside.append(entry["watching_after_ms"])
            finally:
                w.close()
        everything += outside
        print(f"{broker:10} {pct(outside, 50):7.1f} {pct(outside, 99):7.1f} {max(outside):7.1f}"
              f"   {pct(inside, 50):.1f}/{pct(inside, 99):.1f}")
    print(f"{'all':10} {pct(everything, 50):7.1f} {pct(everything, 99):7.1f}"
          f" {max(everything):7.1f}")


def redis_cpu(port):
    info = cli(port, "INFO", "cpu")
    vals = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
    return float(vals["used_cpu_sys"]) + float(vals["used_cpu_user"])


def bench(port, test, n):
    args = ["redis-benchmark", "-p", str(port), "-q", "-n", str(n), "-P", "16", "-c", "8"]
    if test == "set-new-keys":
        args += ["-t", "set", "-r", "100000000"]
    else:
        args += ["-t", "lpush"]
    before = redis_cpu(port)
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu = redis_cpu(port) - before
    # -q prints progress lines ending in \r, then "SET: 123456.79 requests per second, ...".
    final = out.replace("\r", "\n").strip().splitlines()[-1]
    rps = float(final.split(":")[1].split("requests")[0].strip())
    return rps, cpu / n * 1e5


def cost(binary, n):
    print(f"\nRedis cost, redis-benchmark -n {n} -P 16 -c 8 (CPU s per 100k commands, req/s):")
    for test in ("set-new-keys", "lpush-one-key"):
        rows = []
        for label, with_ts in (("no taskscope, notifications off", False),
                               ("taskscope detecting (KEn + subscriber)", True)):
            w = World(binary, taskscope=with_ts)
            try:
                if with_ts:
                    flags = cli(w.port, "CONFIG", "GET", "notify-keyspace-events")
                    label += f" [{flags.split()[-1]}]"
                bench(w.port, test, n // 10)  # warm up
                rps, cpu = bench(w.port, test, n)
                if with_ts:
                    h = health(w.base)["detection"]
                    label += f" new_keys={h['new_keys']} skipped={h['new_keys_skipped']}"
                rows.append((label, rps, cpu))
            finally:
                w.close()
        base = rows[0][2]
        for label, rps, cpu in rows:
            extra = (cpu / base - 1) * 100 if base else 0.0
            print(f"  {test:14} {label:70} {rps:10.0f} req/s  {cpu:.3f} s  ({extra:+.0f} %)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "taskscope"))
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument("--skip-cost", action="store_true")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"no taskscope binary at {a.bin}: cargo build --release (or pass --bin)")
    delays(a.bin, a.runs)
    if not a.skip_cost:
        cost(a.bin, a.requests)


if __name__ == "__main__":
    main()
