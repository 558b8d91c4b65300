#!/usr/bin/env python3
"""Capture real Dramatiq (RedisBroker) wire payloads and keyspace-notification sequences from Redis
as test fixtures.

Usage (with the project venv, against an already-running *throwaway* Redis; the script FLUSHDBs
db 0 between scenarios and turns on keyspace notifications with CONFIG SET):

    .venv/bin/python tests/python/capture_dramatiq.py --redis-port 6421 \
        --out broker-adapters/tests/fixtures/dramatiq

Workers are real `dramatiq dramatiq_app --processes 1 --threads 2` subprocesses and producers are
real `dramatiq_produce.py` subprocesses (both from tests/python, configured by TS_* env vars).
A recorder runs `PSUBSCRIBE *` (keyspace notifications, KEA) and `redis-cli MONITOR` throughout.

`--scenarios kill_default` (alone, on its own Redis: it takes up to --kill-default-wait seconds)
measures how long Dramatiq's *default* settings (heartbeat_timeout 60 s, maintenance_chance 0.1 %)
take to requeue a SIGKILLed worker's message; the default run uses fast settings for that instead.

Every *.bin is the raw byte string exactly as Redis stored it (HGET, LRANGE element, SMEMBERS
member, LRANGE of a results key). *.txt files are readable sequences/listings. manifest.json
describes each file; observations.json holds measured facts.
"""
import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
PY = sys.executable
DRAMATIQ = str(Path(PY).with_name("dramatiq"))

HB_KEY = "dramatiq:__heartbeats__"


def arg(a, i):
    """a[i] of a parsed MONITOR command, or "" when it is shorter."""
    return a[i] if len(a) > i else ""


def is_dispatch(src, a, command=None):
    """An EVALSHA of the dispatch script (args: sha 1 ns command ts queue worker hbt ttl maint unpack ...)."""
    return src != "lua" and arg(a, 0).lower() == "evalsha" and (command is None or arg(a, 4) == command)


class Recorder:
    """PSUBSCRIBE '*' (keyspace notifications), snapshots on notification, and MONITOR."""

    def __init__(self, port, monitor_path):
        self.port = port
        self.r = redis.Redis(port=port)
        self.r.config_set("notify-keyspace-events", "KEA")
        self.snap = redis.Redis(port=port)
        self.events = []  # (local time, event, key)
        self.snaps = []   # (local time, key, kind, value) taken right after a notification
        self.marks = []   # (local time, label)
        self._stop = False
        self.ps = self.r.pubsub()
        self.ps.psubscribe("__keyevent@0__:*")
        while True:
            m = self.ps.get_message(timeout=1)
            if m and m["type"] == "psubscribe":
                break
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        self.monitor_path = monitor_path
        self.monitor_file = open(monitor_path, "wb")
        self.monitor = subprocess.Popen(["redis-cli", "-p", str(port), "monitor"],
                                        stdout=self.monitor_file, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def _loop(self):
        while not self._stop:
            try:
                m = self.ps.get_message(timeout=0.2)
            except Exception:
                if self._stop:
                    return
                raise
            if not m or m["type"] != "pmessage":
                continue
            t = time.time()
            event = m["channel"].decode().split(":", 1)[1]
            key = m["data"]
            self.events.append((t, event, key))
            try:
                if event == "hset" and key.endswith(b".msgs"):
                    self.snaps.append((t, key, "hash", self.snap.hgetall(key)))
                elif event == "sadd" and b"__acks__" in key:
                    self.snaps.append((t, key, "set", self.snap.smembers(key)))
                elif event == "lpush" and b":" not in key and len(key) == 32:
                    self.snaps.append((t, key, "list", self.snap.lrange(key, 0, -1)))
            except redis.RedisError:
                pass

    def mark(self, label):
        self.marks.append((time.time(), label))

    def stop(self):
        self._stop = True
        self.t.join(2)
        time.sleep(0.3)
        self.monitor.terminate()
        self.monitor.wait()
        self.monitor_file.close()

    def monitor_lines(self):
        """[(server time, source, [args])] parsed from the MONITOR file."""
        out = []
        with open(self.monitor_path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
                m = re.match(r"^(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$", line)
                if not m:
                    continue
                args = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(4))
                out.append((float(m.group(1)), m.group(3), args))
        return out


class Capture:
    def __init__(self, port, out):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.r = redis.Redis(port=port)
        self.files = []
        self.obs = {}
        self.procs = []
        self.marker_dir = Path(tempfile.mkdtemp(prefix="dq_markers_"))
        self.rec = Recorder(port, str(Path(tempfile.mkdtemp(prefix="dq_mon_")) / "monitor.txt"))

    # ---------------------------------------------------------------- helpers
    def env(self, **extra):
        e = dict(os.environ)
        e.update({"TS_REDIS_URL": self.url, "TS_MARKER_DIR": str(self.marker_dir),
                  "PYTHONPATH": str(HERE)})
        for k, v in extra.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = str(v)
        return e

    def produce(self, kind, *args, **env):
        out = subprocess.run([PY, str(HERE / "dramatiq_produce.py"), kind, *args], cwd=HERE,
                             env=self.env(**env), check=True, capture_output=True)
        return json.loads(out.stdout)

    def start_worker(self, **env):
        log = open(tempfile.mktemp(prefix="dq_worker_", suffix=".log"), "wb")
        p = subprocess.Popen([DRAMATIQ, "dramatiq_app", "--processes", "1", "--threads", "2"],
                             cwd=HERE, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.logpath = log.name
        self.procs.append(p)
        before = set(self.heartbeat_ids())
        deadline = time.time() + 20
        while time.time() < deadline:
            # A worker shows up as a new heartbeats member once its consumers first fetch.
            new = set(self.heartbeat_ids()) - before - self.producer_ids
            if new:
                p.broker_ids = sorted(new)
                time.sleep(0.3)
                return p
            time.sleep(0.05)
        raise RuntimeError("worker did not start; log: " + open(log.name).read())

    def stop_worker(self, p, sig=signal.SIGTERM, wait=True):
        try:
            if sig == signal.SIGKILL:
                os.killpg(p.pid, sig)  # main process and its worker process(es) at once
            else:
                # Only the main process: it forwards SIGTERM to its workers. A second SIGTERM
                # sent straight to a worker process makes it "kill" itself instead of stopping.
                os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        if wait:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.procs.remove(p)

    def heartbeat_ids(self):
        return [m.decode() for m in self.r.zrange(HB_KEY, 0, -1)]

    producer_ids = set()

    def note_producers(self, before):
        self.producer_ids |= set(self.heartbeat_ids()) - before

    def save(self, name, data, source, description):
        if isinstance(data, str):
            data = data.encode()
        (self.out / name).write_bytes(data)
        self.files.append({"file": name, "source": source, "description": description,
                           "bytes": len(data)})

    def flush(self):
        self.r.flushdb()
        self.producer_ids = set()
        for f in self.marker_dir.iterdir():
            f.unlink()

    def wait_for(self, cond, timeout=30, step=0.05):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(step)
        raise TimeoutError("condition not met")

    def idle(self):
        """No message left in any list, hash or ack set of the default queue."""
        keys = [k for k in self.r.keys("dramatiq:*") if not k.endswith(b"__heartbeats__")
                and not k.endswith(b".XQ") and not k.endswith(b".XQ.msgs")]
        return not keys

    def events_between(self, t0, t1):
        return [e for e in self.rec.events if t0 <= e[0] <= t1]

    def sequence_file(self, name, t0, t1, title, legend):
        evs = self.events_between(t0, t1)
        hb = [e for e in evs if e[2] == HB_KEY.encode()]
        lines = [f"# {title}",
                 "# Ordered keyspace notifications (__keyevent@0__:<event> -> key), PSUBSCRIBE '*',",
                 "# notify-keyspace-events KEA. Columns: ms since the first event, event, key.",
                 f"# {len(hb)} `zadd {HB_KEY}` events (one per dispatch call, i.e. every poll)",
                 "# are omitted. Ids:"]
        lines += [f"#   {k} = {v}" for k, v in legend.items()]
        base = None
        for t, ev, key in evs:
            if key == HB_KEY.encode():
                continue
            base = base or t
            lines.append(f"{(t - base) * 1000:9.1f}  {ev:<6} {key.decode('utf-8', 'backslashreplace')}")
        self.save(name, "\n".join(lines) + "\n", "PSUBSCRIBE '*' (keyspace notifications, KEA)", title)
        return evs

    def monitor_file(self, name, t0, t1, title, keep=None):
        lines = [f"# {title}",
                 "# redis-cli MONITOR: server time, source ([0 lua] = inside the dispatch script),",
                 "# command. Arguments longer than 160 characters are cut. Only script calls and the",
                 "# commands inside them are kept (not the recorder's own snapshot reads)."]
        for ts, src, args in self.rec.monitor_lines():
            if not (t0 <= ts <= t1):
                continue
            # Only the brokers' own traffic: script calls and what runs inside them (the
            # recorder's HGETALL/SMEMBERS/KEYS snapshots are left out).
            if src != "lua" and arg(args, 0).upper() not in ("EVALSHA", "EVAL", "SCRIPT"):
                continue
            if keep and not keep(src, args):
                continue
            shown = " ".join('"' + (a if len(a) <= 160 else a[:160] + "...") + '"' for a in args)
            lines.append(f"{ts:.6f} [{src}] {shown}")
        self.save(name, "\n".join(lines) + "\n", "redis-cli MONITOR", title)

    def snaps_of(self, key_suffix, pred, t0=0):
        for t, key, kind, val in self.rec.snaps:
            if t >= t0 and key.endswith(key_suffix.encode()) and kind == "hash":
                for field, v in val.items():
                    if pred(json.loads(v)):
                        return t, field, v
        return None

    # ---------------------------------------------------------------- scenarios
    def scenario_queued(self):
        self.flush()
        t0 = time.time()
        hb0 = set(self.heartbeat_ids())
        [mid] = self.produce("add", "--args", "[1, 2]")
        self.note_producers(hb0)
        [rid] = self.r.lrange("dramatiq:default", 0, -1)
        body = self.r.hget("dramatiq:default.msgs", rid)
        self.save("queue_message.bin", body, "HGET dramatiq:default.msgs <redis_message_id>",
                  f"add(1, 2) queued, no worker; message_id {mid}")
        self.save("queue_list_entry.bin", rid, "LRANGE dramatiq:default 0 -1 (one element)",
                  "the list element: the redis_message_id (uuid4 text), not the message_id")
        hb1 = set(self.heartbeat_ids())
        [mid_u] = self.produce("add", "--args", '["Grüß", "→ ✓"]', "--kwargs", '{}')
        self.note_producers(hb1)
        rid_u = self.r.lrange("dramatiq:default", 0, -1)[-1]
        self.save("queue_message_unicode.bin", self.r.hget("dramatiq:default.msgs", rid_u),
                  "HGET dramatiq:default.msgs <redis_message_id>",
                  f"add('Grüß', '→ ✓'): the JSONEncoder escapes non-ASCII as \\uXXXX (ASCII-only bytes); message_id {mid_u}")
        hb2 = set(self.heartbeat_ids())
        [mid_d] = self.produce("add", "--args", "[3, 4]", "--delay", "60000")
        self.note_producers(hb2)
        [rid_d] = self.r.lrange("dramatiq:default.DQ", 0, -1)
        self.save("delayed_message.bin", self.r.hget("dramatiq:default.DQ.msgs", rid_d),
                  "HGET dramatiq:default.DQ.msgs <redis_message_id>",
                  f"add(3, 4) sent with delay=60000 ms, no worker; message_id {mid_d}")
        self.save("delayed_list_entry.bin", rid_d, "LRANGE dramatiq:default.DQ 0 -1 (one element)",
                  "the delay-queue list element: a redis_message_id")
        hb = self.r.zrange(HB_KEY, 0, -1, withscores=True)
        self.save("heartbeats_producers_only.txt",
                  "\n".join(f"{m.decode()} {int(s)}" for m, s in hb) + "\n",
                  "ZRANGE dramatiq:__heartbeats__ 0 -1 WITHSCORES (member score)",
                  "three producer processes (one dispatch call each), no worker ever ran")
        keys = sorted(k.decode() for k in self.r.keys("*"))
        self.save("keys_queued_no_worker.txt", "\n".join(keys) + "\n", "KEYS *",
                  "keys after 2 normal + 1 delayed enqueue, no worker")
        # Custom namespace.
        hb3 = set(self.heartbeat_ids())
        [mid_ns] = self.produce("add", "--args", "[5, 6]", TS_DRAMATIQ_NAMESPACE="shop")
        self.note_producers(hb3)
        [rid_ns] = self.r.lrange("shop:default", 0, -1)
        self.save("queue_message_namespace_shop.bin", self.r.hget("shop:default.msgs", rid_ns),
                  "HGET shop:default.msgs <redis_message_id>",
                  f"RedisBroker(namespace='shop'); message_id {mid_ns}")
        keys = sorted(k.decode() for k in self.r.keys("*"))
        self.save("keys_namespace_shop.txt", "\n".join(keys) + "\n", "KEYS *",
                  "keys after adding one message with namespace 'shop' (shop:__heartbeats__ appears)")
        self.sequence_file("keyspace_enqueue.txt", t0, time.time(),
                           "enqueue: add(1,2), add(unicode), add(3,4) delay=60000, add(5,6) namespace shop",
                           {"producers": "one broker_id per producer process, in __heartbeats__"})
        self.obs["enqueue"] = {
            "message_ids": [mid, mid_u, mid_d, mid_ns],
            "heartbeats_after_producers": {m.decode(): int(s) for m, s in hb},
        }

    def scenario_worker_idle(self):
        self.flush()
        w = self.start_worker()
        t0 = time.time()
        time.sleep(6)
        t1 = time.time()
        bids = w.broker_ids
        mon = [x for x in self.rec.monitor_lines() if t0 <= x[0] <= t1]
        evalshas = [a for ts, src, a in mon if is_dispatch(src, a)]
        zadds = [(ts, arg(a, 3)) for ts, src, a in mon if src == "lua" and arg(a, 0) == "zadd" and arg(a, 1) == HB_KEY]
        per_cmd = {}
        for a in evalshas:
            per_cmd.setdefault(f"{a[4]} {a[6]}", 0)
            per_cmd[f"{a[4]} {a[6]}"] += 1
        times = [ts for ts, b in zadds if b in bids]
        gaps = [round((b - a) * 1000) for a, b in zip(times, times[1:])]
        hb = self.r.zrange(HB_KEY, 0, -1, withscores=True)
        self.save("heartbeats_with_worker.txt",
                  "\n".join(f"{m.decode()} {int(s)}" for m, s in hb) + "\n",
                  "ZRANGE dramatiq:__heartbeats__ 0 -1 WITHSCORES",
                  f"one idle worker process (broker_id {bids}) after 6 s")
        keys = sorted(k.decode() for k in self.r.keys("*"))
        self.save("keys_idle_worker.txt", "\n".join(keys) + "\n", "KEYS *",
                  "an idle worker creates only the heartbeats zset")
        self.monitor_file("monitor_idle_worker.txt", t0, t0 + 2.5,
                          "idle worker, 2.5 s: fetch polls of the default and default.DQ consumers")
        self.obs["idle_worker"] = {
            "window_s": round(t1 - t0, 2),
            "worker_broker_ids": bids,
            "dispatch_calls_by_command_and_queue": per_cmd,
            "heartbeat_zadds_of_worker": len(times),
            "gaps_between_heartbeat_zadds_ms": gaps,
            "first_evalsha_args_example": evalshas[0][:12] if evalshas else None,
        }
        return w

    def lifecycle(self, w, name, kind, args, title, done, extra=(), monitor=True):
        t0 = time.time()
        ids = self.produce(kind, "--args", json.dumps(args), *extra)
        self.wait_for(done, timeout=30)
        time.sleep(0.6)
        t1 = time.time()
        self.sequence_file(f"keyspace_lifecycle_{name}.txt", t0, t1, title,
                           {"worker": " ".join(f"dramatiq:__acks__.{b}.*" for b in w.broker_ids),
                            "message_id": ids[0]})
        if monitor:
            self.monitor_file(f"monitor_lifecycle_{name}.txt", t0, t1, title,
                              keep=lambda src, a: not is_dispatch(src, a, "fetch")
                              and not (src == "lua" and arg(a, 1) == HB_KEY))
        return ids[0], t0, t1

    def scenario_lifecycles(self, w):
        # success
        mid, t0, t1 = self.lifecycle(w, "success", "add", [2, 3], "add(2, 3) -> success (idle worker)",
                                     self.idle)
        self.obs["success"] = {"message_id": mid}
        # failure: dead letter
        mid, t0, t1 = self.lifecycle(w, "failure_dead_letter", "fail", [7],
                                     "fail(7) with max_retries=0 -> nack -> dead letter (.XQ)",
                                     lambda: self.r.zcard("dramatiq:default.XQ") > 0 and self.idle())
        [(xid, score)] = self.r.zrange("dramatiq:default.XQ", 0, -1, withscores=True)
        xbody = self.r.hget("dramatiq:default.XQ.msgs", xid)
        self.save("dead_letter_message.bin", xbody, "HGET dramatiq:default.XQ.msgs <redis_message_id>",
                  f"fail(7) after nack: the payload as it was in default.msgs (no traceback); message_id {mid}")
        self.save("dead_letter_zset.txt", f"{xid.decode()} {int(score)}\n",
                  "ZRANGE dramatiq:default.XQ 0 -1 WITHSCORES (member score)",
                  "dead-letter zset: redis_message_id scored with the nack time in ms")
        self.obs["failure"] = {"message_id": mid, "xq_member": xid.decode(), "xq_score": int(score),
                               "xq_body_has_traceback": b"traceback" in xbody}
        # retry then success
        mid, t0, t1 = self.lifecycle(w, "retry_then_success", "flaky", ["k9", 2],
                                     "flaky('k9', 2): fails twice (retries via the delay queue), then succeeds",
                                     self.idle)
        self.retry_facts(mid, t0, t1, w)
        # retries exhausted: the dead-lettered payload is the last *copy* (with the previous
        # attempt's traceback), not the original
        mid, t0, t1 = self.lifecycle(w, "retries_exhausted", "flaky", ["kx", 9],
                                     "flaky('kx', 9) with max_retries=5: 6 attempts, then nack -> dead letter",
                                     lambda: self.r.zcard("dramatiq:default.XQ") > 1 and self.idle(),
                                     monitor=False)
        for xid in self.r.zrange("dramatiq:default.XQ", 0, -1):
            body = self.r.hget("dramatiq:default.XQ.msgs", xid)
            if json.loads(body)["message_id"] == mid:
                self.save("dead_letter_after_retries.bin", body,
                          "HGET dramatiq:default.XQ.msgs <redis_message_id>",
                          f"flaky('kx', 9) after its 6th failure (max_retries=5): the last copy as stored in "
                          f"default.msgs, options.retries=5 and the traceback of attempt 5, not 6; message_id {mid}")
                self.obs["retries_exhausted"] = {"message_id": mid, "xq_member": xid.decode(),
                                                 "options": {k: v for k, v in json.loads(body)["options"].items()
                                                             if k != "traceback"},
                                                 "traceback_last_line": json.loads(body)["options"]
                                                 .get("traceback", "").strip().splitlines()[-1:]}
        # delayed message
        mid, t0, t1 = self.lifecycle(w, "delayed", "add", [4, 5],
                                     "add(4, 5) sent with delay=1500 ms -> DQ -> moved to default when due -> success",
                                     lambda: self.idle() and any(
                                         e[1] == "hdel" and e[2] == b"dramatiq:default.msgs" and e[0] > time.time() - 5
                                         for e in self.rec.events[-50:]),
                                     extra=("--delay", "1500"))
        self.delay_facts(mid, t0, t1)

    def hashes_for(self, mid, t0, t1):
        """Every (time, key, redis_message_id, body) snapshot of message `mid` between t0 and t1."""
        seen = {}
        for t, key, kind, val in self.rec.snaps:
            if kind != "hash" or not (t0 <= t <= t1):
                continue
            for field, v in val.items():
                try:
                    d = json.loads(v)
                except ValueError:
                    continue
                if d.get("message_id") == mid and (key, field) not in seen:
                    seen[(key, field)] = (t, key.decode(), field.decode(), v)
        return sorted(seen.values())

    def lua_ops(self, t0, t1, rid):
        return [(ts, a) for ts, src, a in self.rec.monitor_lines()
                if t0 <= ts <= t1 and src == "lua" and rid in a]

    def retry_facts(self, mid, t0, t1, w):
        copies = self.hashes_for(mid, t0, t1)
        out = []
        saved_dq = 0
        for t, key, rid, body in copies:
            d = json.loads(body)
            ops = self.lua_ops(t0, t1, rid)
            out.append({"key": key, "redis_message_id": rid, "queue_name": d["queue_name"],
                        "options": {k: (v if k != "traceback" else v[:80] + "...") for k, v in d["options"].items()},
                        "ops": [(round((ts - t0) * 1000, 1), a[0], a[1]) for ts, a in ops]})
            if key.endswith(".DQ.msgs"):
                saved_dq += 1
                self.save(f"retry_copy_dq_{saved_dq}.bin", body,
                          "HGETALL dramatiq:default.DQ.msgs on its hset notification (field value)",
                          f"flaky('k9', 2): retry copy #{saved_dq} in the delay queue "
                          f"(options.retries={d['options'].get('retries')}, traceback, requeue_timestamp, eta); "
                          f"message_id {mid}")
            elif key == "dramatiq:default.msgs" and d["options"].get("retries"):
                self.save(f"retry_copy_requeued_{d['options']['retries']}.bin", body,
                          "HGETALL dramatiq:default.msgs on its hset notification (field value)",
                          f"flaky('k9', 2): retry #{d['options']['retries']} moved from the DQ to default "
                          f"when due (new redis_message_id, queue_name 'default', eta removed)")
        self.obs["retry_then_success"] = {"message_id": mid, "copies_in_order": out}

    def delay_facts(self, mid, t0, t1):
        copies = self.hashes_for(mid, t0, t1)
        facts = {"message_id": mid, "copies": []}
        for t, key, rid, body in copies:
            d = json.loads(body)
            ops = self.lua_ops(t0, t1, rid)
            facts["copies"].append({"key": key, "redis_message_id": rid, "options": d["options"],
                                    "queue_name": d["queue_name"],
                                    "ops_server_time": [(round(ts * 1000, 1), a[0], a[1]) for ts, a in ops]})
            if key == "dramatiq:default.msgs":
                self.save("delayed_moved_to_queue.bin", body,
                          "HGETALL dramatiq:default.msgs on its hset notification (field value)",
                          f"add(4, 5) delay=1500 after the DQ consumer moved it to default; message_id {mid}")
        dq = [c for c in facts["copies"] if c["key"].endswith(".DQ.msgs")]
        q = [c for c in facts["copies"] if c["key"] == "dramatiq:default.msgs"]
        if dq and q:
            eta = dq[0]["options"]["eta"]
            moved = [o[0] for o in q[0]["ops_server_time"] if o[1] == "hset"]
            if moved:
                facts["moved_ms_after_eta"] = round(moved[0] - eta, 1)
        self.obs["delayed"] = facts

    def scenario_prefetch(self, w):
        t0 = time.time()
        ids = self.produce("slow", "--n", "5", "--seconds", "2")
        time.sleep(0.8)
        ack_keys = [k for k in self.r.keys("dramatiq:__acks__.*")]
        members = {k.decode(): sorted(m.decode() for m in self.r.smembers(k)) for k in ack_keys}
        running = sorted(p.stem.split(".")[0] for p in self.marker_dir.glob("*.started"))
        lines = []
        for k, ms in members.items():
            for m in ms:
                body = self.r.hget("dramatiq:default.msgs", m)
                lines.append(f"{k} {m} message_id={json.loads(body)['message_id'] if body else None}")
        self.save("acks_set_slow_running.txt", "\n".join(lines) + "\n",
                  "KEYS dramatiq:__acks__.* + SMEMBERS, 0.8 s after sending 5 x slow(2)",
                  "ack set members (redis_message_ids) with 2 threads / prefetch 4: 2 running + prefetched")
        first_key = ack_keys[0]
        for i, m in enumerate(sorted(self.r.smembers(first_key))[:1]):
            self.save("acks_set_member.bin", m, f"SMEMBERS {first_key.decode()} (one member)",
                      "an ack-set member: a redis_message_id")
        self.save("list_while_prefetched.txt",
                  "\n".join(x.decode() for x in self.r.lrange("dramatiq:default", 0, -1)) + "\n",
                  "LRANGE dramatiq:default 0 -1 at the same moment",
                  "what is still in the queue list (beyond prefetch)")
        self.wait_for(self.idle, timeout=30)
        t1 = time.time()
        # When did each message enter the ack set (lua sadd) and start (marker mtime)?
        per = []
        mon = [x for x in self.rec.monitor_lines() if t0 <= x[0] <= t1 and x[1] == "lua"]
        rid_of = {}
        for t, key, rid, body in self.hashes_for_any(ids, t0, t1):
            rid_of[json.loads(body)["message_id"]] = rid
        for mid in ids:
            rid = rid_of.get(mid)
            sadd = [ts for ts, src, a in mon if arg(a, 0) == "sadd" and rid in a]
            srem = [ts for ts, src, a in mon if arg(a, 0) == "srem" and rid in a]
            marker = self.marker_dir / f"{mid}.started"
            started = marker.stat().st_mtime if marker.exists() else None
            per.append({"message_id": mid, "redis_message_id": rid,
                        "sadd_to_start_ms": round((started - sadd[0]) * 1000) if sadd and started else None,
                        "sadd_to_srem_ms": round((srem[0] - sadd[0]) * 1000) if sadd and srem else None})
        fetches = [(round((ts - t0) * 1000), arg(a, 12))
                   for ts, src, a in self.rec.monitor_lines()
                   if t0 <= ts <= t1 and is_dispatch(src, a, "fetch") and arg(a, 6) == "default"]
        self.sequence_file("keyspace_prefetch_5_slow.txt", t0, t1,
                           "5 x slow(2) with --threads 2 (prefetch 4): sadd/srem order shows prefetch",
                           {"worker": " ".join(w.broker_ids), "message_ids": " ".join(ids)})
        self.obs["prefetch"] = {"threads": 2, "queue_prefetch": 4, "ack_sets": members,
                                "running_by_marker": running, "per_message": per,
                                "fetch_calls_on_default_ms_and_prefetch_arg": fetches[:40]}

    def hashes_for_any(self, mids, t0, t1):
        out = []
        for mid in mids:
            out += [x for x in self.hashes_for(mid, t0, t1) if x[1] == "dramatiq:default.msgs"][:1]
        return out

    def scenario_results(self):
        self.flush()
        w = self.start_worker(TS_DRAMATIQ_RESULTS="1")
        facts = {}
        for name, kind, args in (("success", "add", [20, 22]), ("failure", "fail", [3]),
                                 ("retry_then_success", "flaky", ["r1", 1])):
            t0 = time.time()
            [mid] = self.produce(kind, "--args", json.dumps(args), TS_DRAMATIQ_RESULTS="1")
            key = hashlib.md5(f"dramatiq-results:default:{kind}:{mid}".encode()).hexdigest()
            self.wait_for(lambda: self.r.exists(key), timeout=30)
            self.wait_for(self.idle, timeout=30)
            time.sleep(0.3)
            t1 = time.time()
            [val] = self.r.lrange(key, 0, -1)
            ttl = self.r.pttl(key)
            self.save(f"result_{name}.bin", val, f"LRANGE {key} 0 -1 (one element)",
                      f"Results middleware (RedisBackend, store_results=True) for {kind}{tuple(args)}; "
                      f"key = md5('dramatiq-results:default:{kind}:{mid}')")
            self.sequence_file(f"keyspace_lifecycle_{name}_with_results.txt", t0, t1,
                               f"{kind}{tuple(args)} with the Results middleware",
                               {"worker": " ".join(w.broker_ids), "message_id": mid, "result key": key})
            lpushes = [(round((t - t0) * 1000), e.decode() if False else e, k.decode())
                       for t, e, k in self.events_between(t0, t1) if k == key.encode()]
            facts[name] = {"message_id": mid, "key": key, "key_formula_verified": True,
                           "type": self.r.type(key).decode(), "pttl_ms_after_run": ttl,
                           "value": val.decode(), "events_on_key": lpushes}
        self.obs["results"] = facts
        self.stop_worker(w)

    def scenario_kill(self, fast=True, wait_s=900):
        self.flush()
        tag = "fast" if fast else "default"
        w1 = self.start_worker()
        [mid] = self.produce("hang")
        marker = self.marker_dir / f"{mid}.started"
        self.wait_for(marker.exists, timeout=20)
        started1 = marker.stat().st_mtime
        ack_key = f"dramatiq:__acks__.{w1.broker_ids[0]}.default"
        members = self.r.smembers(ack_key)
        [rid] = members
        t_kill = time.time()
        self.stop_worker(w1, signal.SIGKILL)
        marker.unlink()
        hb_dead = self.r.zscore(HB_KEY, w1.broker_ids[0])
        time.sleep(1)
        env = {}
        if fast:
            env = {"TS_DRAMATIQ_HEARTBEAT_TIMEOUT": 3000, "TS_DRAMATIQ_MAINTENANCE_CHANCE": 1000000}
        t_new = time.time()
        w2 = self.start_worker(**env)
        state_after_restart = {"ack_set_exists": bool(self.r.exists(ack_key)),
                               "ack_members": sorted(m.decode() for m in self.r.smembers(ack_key)),
                               "dead_heartbeat_still_there": self.r.zscore(HB_KEY, w1.broker_ids[0]) is not None}
        requeued_at = None
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if marker.exists():
                break
            time.sleep(0.2)
        t_end = time.time()
        for t, ev, key in self.rec.events:
            if t > t_kill and ev == "rpush" and key == b"dramatiq:default":
                requeued_at = t
                break
        rerun = marker.exists()
        mon = [(ts, src, a) for ts, src, a in self.rec.monitor_lines() if ts > t_kill]
        rpush_ops = [(ts, a) for ts, src, a in mon if src == "lua" and a[0] == "rpush"]
        maint = [a for ts, src, a in mon if is_dispatch(src, a) and arg(a, 10) == "1"]
        self.sequence_file(f"keyspace_kill_{tag}.txt", t_kill - 0.5, (requeued_at or t_end) + 1.0,
                           f"hang() running, worker SIGKILLed (whole process group), new worker started "
                           f"{'with heartbeat_timeout=3000 maintenance_chance=1000000' if fast else 'with default settings'}",
                           {"dead worker": w1.broker_ids[0], "new worker": w2.broker_ids[0],
                            "message_id": mid, "redis_message_id": rid.decode()})
        if requeued_at:
            self.monitor_file(f"monitor_kill_requeue_{tag}.txt", requeued_at - 0.3, requeued_at + 0.3,
                              "the dispatch call that ran maintenance and requeued the dead worker's message",
                              keep=lambda src, a: src == "lua" or is_dispatch(src, a))
        self.obs[f"kill_{tag}"] = {
            "message_id": mid, "redis_message_id": rid.decode(), "dead_worker": w1.broker_ids[0],
            "new_worker": w2.broker_ids[0], "new_worker_env": env,
            "dead_heartbeat_score_ms": hb_dead, "kill_time_ms": round(t_kill * 1000),
            "state_right_after_new_worker_started": state_after_restart,
            "seconds_kill_to_requeue_rpush": round(requeued_at - t_kill, 2) if requeued_at else None,
            "seconds_new_worker_start_to_requeue": round(requeued_at - t_new, 2) if requeued_at else None,
            "seconds_dead_heartbeat_to_requeue": round(requeued_at - hb_dead / 1000, 2) if requeued_at else None,
            "rerun_started_by_new_worker": rerun,
            "requeue_lua_rpush": [(round(ts * 1000), a) for ts, a in rpush_ops[:3]],
            "dispatch_calls_with_do_maintenance_1": len(maint),
            "first_maintenance_call": maint[0][:11] if maint else None,
            "hang_first_start_ms": round(started1 * 1000),
            "dead_heartbeat_after": self.r.zscore(HB_KEY, w1.broker_ids[0]),
            "ack_set_after": sorted(m.decode() for m in self.r.smembers(ack_key)),
        }
        self.stop_worker(w2, signal.SIGKILL)

    def scenario_graceful(self):
        """SIGTERM with 2 running + prefetched messages: what does the worker write?"""
        self.flush()
        w = self.start_worker()
        ids = self.produce("slow", "--n", "5", "--seconds", "3")
        time.sleep(1.0)
        t0 = time.time()
        before = {k.decode(): sorted(m.decode() for m in self.r.smembers(k))
                  for k in self.r.keys("dramatiq:__acks__.*")}
        self.stop_worker(w, signal.SIGTERM)
        t1 = time.time()
        after = {k.decode(): sorted(m.decode() for m in self.r.smembers(k))
                 for k in self.r.keys("dramatiq:__acks__.*")}
        self.sequence_file("keyspace_graceful_stop.txt", t0, t1 + 0.3,
                           "SIGTERM to a worker running 2 x slow(3) with 2 more prefetched",
                           {"worker": " ".join(w.broker_ids), "message_ids": " ".join(ids)})
        self.monitor_file("monitor_graceful_stop.txt", t0, t1 + 0.3,
                          "SIGTERM: requeue of prefetched messages",
                          keep=lambda src, a: src == "lua" and arg(a, 1) != HB_KEY
                          or (is_dispatch(src, a) and arg(a, 4) != "fetch"))
        self.obs["graceful_stop"] = {"ack_sets_before": before, "ack_sets_after": after,
                                     "list_after": [x.decode() for x in self.r.lrange("dramatiq:default", 0, -1)],
                                     "worker_exit_s": round(t1 - t0, 2),
                                     "heartbeat_after": {m.decode(): int(s) for m, s in
                                                         self.r.zrange(HB_KEY, 0, -1, withscores=True)}}

    def finish(self, manifest_name="manifest.json", obs_name="observations.json"):
        import importlib.metadata as md
        self.rec.stop()
        manifest = {"generator": "tests/python/capture_dramatiq.py",
                    "versions": {"dramatiq": md.version("dramatiq"), "redis-py": md.version("redis"),
                                 "redis-server": self.r.info("server")["redis_version"]},
                    "worker": "dramatiq dramatiq_app --processes 1 --threads 2 (JSONEncoder, default middleware + CurrentMessage)",
                    "files": self.files}
        (self.out / manifest_name).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        (self.out / obs_name).write_text(json.dumps(self.obs, indent=1, ensure_ascii=False) + "\n")

    def cleanup(self):
        for p in list(self.procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except Exception:
                pass
        try:
            self.rec.monitor.kill()
        except Exception:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios", default="queued,lifecycles,results,kill_fast,graceful")
    ap.add_argument("--kill-default-wait", type=int, default=1200)
    opts = ap.parse_args()
    cap = Capture(opts.redis_port, opts.out)
    scen = opts.scenarios.split(",")
    try:
        if "queued" in scen:
            cap.scenario_queued()
        if "lifecycles" in scen:
            w = cap.scenario_worker_idle()
            cap.scenario_lifecycles(w)
            cap.scenario_prefetch(w)
            cap.stop_worker(w)
        if "results" in scen:
            cap.scenario_results()
        if "kill_fast" in scen:
            cap.scenario_kill(fast=True)
        if "kill_default" in scen:
            cap.scenario_kill(fast=False, wait_s=opts.kill_default_wait)
        if "graceful" in scen:
            cap.scenario_graceful()
        if scen == ["kill_default"]:
            cap.finish("manifest_kill_default.json", "observations_kill_default.json")
        else:
            cap.finish()
    finally:
        cap.cleanup()


if __name__ == "__main__":
    main()
