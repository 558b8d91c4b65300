#!/usr/bin/env python3
"""Capture real Celery/kombu wire payloads from Redis as test fixtures.

Usage (with the project venv, against an already-running *throwaway* Redis;
the script FLUSHDBs db 0 between scenarios and turns on keyspace notifications):

    .venv/bin/python tests/python/capture_celery.py --redis-port 6391 \
        --out broker-adapters/tests/fixtures/celery

This file is also the Celery app module the captured workers run
(`python -m celery -A capture_celery worker ...`); their settings come from the
CAP_CONF (JSON) and CAP_PORT environment variables.

Everything saved as *.bin is the raw byte string exactly as Redis stored it (GET,
LRANGE, HGETALL field value, SMEMBERS member) or delivered it (PUBLISH payload via
PSUBSCRIBE '*'). manifest.json describes each file; observations.json holds
measured facts (timings, notification orders, field lists).
"""
import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import warnings

from celery import Celery

warnings.filterwarnings("ignore", message=".*already registered.*")

TASK_NAMES = {
    "add": "cap.add",
    "slow": "cap.slow",
    "fail": "cap.fail",
    "retry_once": "cap.retry_once",
    "greet": "cap.greet",
}


def make_app(port, conf=None):
    app = Celery("cap", broker=f"redis://127.0.0.1:{port}/0",
                 backend=f"redis://127.0.0.1:{port}/0")
    app.conf.update(broker_connection_retry_on_startup=True)
    if conf:
        app.conf.update(conf)

    @app.task(name="cap.add")
    def add(x, y):
        return x + y

    @app.task(name="cap.slow")
    def slow(seconds):
        time.sleep(seconds)
        return f"slept {seconds}"

    @app.task(name="cap.fail")
    def fail(card):
        raise ValueError(f"card declined {card}")

    @app.task(name="cap.retry_once", bind=True, max_retries=3)
    def retry_once(self, card):
        if self.request.retries == 0:
            raise self.retry(countdown=1, exc=ValueError(f"card declined {card}"))
        return f"charged {card} after {self.request.retries} retries"

    @app.task(name="cap.greet")
    def greet(name, greeting="Grüß Gott", note=None):
        return f"{greeting}, {name}! {note or ''}"

    return app


# The worker side: `celery -A capture_celery worker` imports this module.
if os.environ.get("CAP_PORT"):
    app = make_app(int(os.environ["CAP_PORT"]), json.loads(os.environ.get("CAP_CONF", "{}")))


# --------------------------------------------------------------------------------------
# Capture side
# --------------------------------------------------------------------------------------

class Recorder:
    """PSUBSCRIBE '*' (pub/sub payloads + keyspace notifications) and MONITOR, timestamped."""

    def __init__(self, port):
        import redis
        self.port = port
        self.r = redis.Redis(port=port, decode_responses=False)
        self.snap = redis.Redis(port=port, decode_responses=False)
        self.pubs = []        # (local_time, scenario, channel bytes, data bytes)
        self.keyevents = []   # (local_time, scenario, event str, key bytes)
        self.monitor = []     # (server_time, scenario, command str)
        self.unacked_snaps = []  # (local_time, scenario, {field: value}) taken on hset unacked
        self.scenario = "init"
        self._stop = False
        self.r.config_set("notify-keyspace-events", "KEA")
        self.ps = self.r.pubsub()
        self.ps.psubscribe("*")
        # wait for subscription confirmation
        while True:
            m = self.ps.get_message(timeout=1)
            if m and m["type"] == "psubscribe":
                break
        self.t1 = threading.Thread(target=self._pubsub_loop, daemon=True)
        self.t1.start()
        self.mon_conn = redis.Redis(port=port, decode_responses=False)
        self.t2 = threading.Thread(target=self._monitor_loop, daemon=True)
        self.t2.start()
        time.sleep(0.3)

    def _pubsub_loop(self):
        while not self._stop:
            try:
                m = self.ps.get_message(timeout=0.2)
            except Exception:
                if self._stop:
                    return
                raise
            if not m or m["type"] != "pmessage":
                continue
            now = time.time()
            ch, data = m["channel"], m["data"]
            if ch.startswith(b"__keyevent@"):
                ev = ch.split(b":", 1)[1].decode()
                self.keyevents.append((now, self.scenario, ev, data))
                if ev == "hset" and data == b"unacked":
                    try:
                        self.unacked_snaps.append((time.time(), self.scenario,
                                                   self.snap.hgetall(b"unacked")))
                    except Exception as e:  # pragma: no cover
                        self.unacked_snaps.append((time.time(), self.scenario, {"error": str(e)}))
            elif ch.startswith(b"__keyspace@"):
                continue  # keyevent carries the same information
            else:
                self.pubs.append((now, self.scenario, ch, data))

    def _monitor_loop(self):
        try:
            with self.mon_conn.monitor() as m:
                for cmd in m.listen():
                    if self._stop:
                        return
                    self.monitor.append((cmd["time"], self.scenario, cmd["command"],
                                         f'{cmd.get("client_address")}:{cmd.get("client_port")}'))
        except Exception:
            return

    def stop(self):
        self._stop = True
        time.sleep(0.5)
        try:
            self.ps.close()
        except Exception:
            pass


class Capture:
    def __init__(self, port, out):
        import redis
        self.port = port
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.r = redis.Redis(port=port, decode_responses=False)
        self.manifest = []
        self.obs = {}
        self.rec = Recorder(port)
        self.worker = None
        self.worker_log = None

    # ---- helpers -------------------------------------------------------------------
    def save(self, name, data, source, settings, desc):
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(self.out, name), "wb") as f:
            f.write(data)
        self.manifest.append({"file": name, "source": source, "celery_settings": settings,
                              "description": desc, "bytes": len(data)})

    @staticmethod
    def client_addr(client):
        info = client.execute_command("CLIENT", "INFO")
        info = info.decode() if isinstance(info, bytes) else info
        for part in info.split():
            if part.startswith("addr="):
                return part[5:]
        return None

    def fresh(self, scenario):
        self.rec.scenario = scenario
        self.r.flushdb()
        time.sleep(0.2)

    def keys(self):
        return sorted(self.r.keys(b"*"))

    def start_worker(self, conf, extra_args=(), name="cap1"):
        env = dict(os.environ)
        env["CAP_PORT"] = str(self.port)
        env["CAP_CONF"] = json.dumps(conf)
        here = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
        logpath = f"/tmp/capture_celery_worker_{name}.log"
        self.worker_log = logpath
        logf = open(logpath, "w")
        cmd = [sys.executable, "-m", "celery", "-A", "capture_celery", "worker",
               "-P", "prefork", "-c", "1", "-n", f"{name}@caphost", "-l", "INFO",
               *extra_args]
        self.worker = subprocess.Popen(cmd, cwd=here, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.time() + 40
        while time.time() < deadline:
            with open(logpath) as f:
                if " ready." in f.read():
                    return
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited early, see {logpath}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready, see {logpath}")

    def stop_worker(self):
        if not self.worker:
            return
        self.worker.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        self.worker = None
        time.sleep(0.5)

    def wait_for(self, pred, timeout=20, step=0.02):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(step)
        return None

    def wait_state(self, tid, state, timeout=20):
        key = f"celery-task-meta-{tid}".encode()

        def check():
            v = self.r.get(key)
            if v and json.loads(v)["status"] == state:
                return v
        return self.wait_for(check, timeout)

    def published_on(self, channel, since=0.0):
        return [d for (t, s, c, d) in self.rec.pubs if c == channel and t >= since]

    # ---- scenario A: queue messages, no worker ------------------------------------------
    def queue_messages(self):
        variants = [
            ("queue_message_json.bin", {}, "add", dict(args=(2, 3)),
             "protocol 2, JSON serializer, positional args"),
            ("queue_message_msgpack.bin",
             {"task_serializer": "msgpack", "accept_content": ["json", "msgpack"]},
             "add", dict(args=(2, 3)), "protocol 2, msgpack serializer (body is raw msgpack, base64 in envelope)"),
            ("queue_message_countdown.bin", {}, "add", dict(args=(2, 3), countdown=60),
             "protocol 2, countdown=60 (headers.eta set)"),
            ("queue_message_expires.bin", {}, "add", dict(args=(2, 3), expires=300),
             "protocol 2, expires=300 (headers.expires set)"),
            ("queue_message_kwargs_unicode.bin", {}, "greet",
             dict(args=("Zoë 日本",), kwargs={"greeting": "Grüß Gott", "note": "naïve ✓ \u2603 \"q\""}),
             "protocol 2, args+kwargs with non-ASCII strings"),
            ("queue_message_protocol1.bin", {"task_protocol": 1}, "greet",
             dict(args=("Zoë",), kwargs={"note": "naïve"}, countdown=30),
             "protocol 1 (task_protocol=1): everything in the body, countdown=30"),
        ]
        for fname, conf, task, kw, desc in variants:
            self.fresh("queue:" + fname)
            app = make_app(self.port, conf)
            res = app.tasks[TASK_NAMES[task]].apply_async(**kw)
            items = self.r.lrange(b"celery", 0, -1)
            assert len(items) == 1, items
            self.save(fname, items[0], "LRANGE celery 0 -1 (no worker running)", conf,
                      f"{desc}; task id {res.id}")
            if fname == "queue_message_json.bin":
                self.obs["keys_after_first_publish"] = [k.decode("latin1") for k in self.keys()]
                for k in self.keys():
                    if k.startswith(b"_kombu.binding."):
                        members = sorted(self.r.smembers(k))
                        safe = k.decode().replace("_kombu.binding.", "")
                        self.save(f"kombu_binding_{safe}_after_publish.bin", b"\n".join(members),
                                  f"SMEMBERS {k.decode()} (members joined with \\n)", conf,
                                  "binding set written by a producer's first publish")
            app.close()

        # priority: default priority_steps [0,3,6,9] and an explicit list
        for fname, conf, prio in [
            ("queue_message_priority5_default_steps.bin", {}, 5),
            ("queue_message_priority9_steps0to9.bin",
             {"broker_transport_options": {"priority_steps": list(range(10)), "sep": ":",
                                           "queue_order_strategy": "priority"}}, 9),
        ]:
            self.fresh("queue:" + fname)
            app = make_app(self.port, conf)
            res = app.tasks["cap.add"].apply_async((4, 5), priority=prio)
            app.tasks["cap.add"].apply_async((6, 7))  # no priority, for comparison
            ks = [k for k in self.keys() if self.r.type(k) == b"list"]
            self.obs.setdefault("priority_list_keys", {})[fname] = {
                "settings": conf, "priority": prio,
                "list_keys": [repr(k)[2:-1] for k in ks],
                "lengths": {repr(k)[2:-1]: self.r.llen(k) for k in ks}}
            pk = [k for k in ks if k != b"celery"]
            assert len(pk) == 1, ks
            self.save(fname, self.r.lrange(pk[0], 0, -1)[0],
                      f"LRANGE {repr(pk[0])[2:-1]} 0 -1", conf,
                      f"priority={prio}; stored in sub-list key {repr(pk[0])[2:-1]} (task id {res.id})")
            app.close()
        # the plain default-sep key name, raw bytes
        names = self.obs["priority_list_keys"]["queue_message_priority5_default_steps.bin"]["list_keys"]
        self.save("priority_key_names.txt",
                  "\n".join(["# list keys (python repr escapes) after apply_async(priority=5) and one",
                             "# without priority; default priority_steps [0,3,6,9], sep \\x06\\x16"] + names
                            + ["# with priority_steps=0..9, sep=':' , priority=9:"]
                            + self.obs["priority_list_keys"]["queue_message_priority9_steps0to9.bin"]["list_keys"])
                  + "\n", "KEYS *", {}, "priority sub-list key names")

    # ---- scenario B/C: worker runs, results, unacked, events -------------------------------
    def worker_run(self, extended, with_events):
        tag = "extended" if extended else "plain"
        conf = {"result_extended": extended, "task_track_started": True,
                "task_acks_late": True, "worker_prefetch_multiplier": 1}
        self.fresh(f"worker_{tag}")
        t0 = time.time()
        self.start_worker(conf, ["-E"] if with_events else [], name=f"cap_{tag}")
        prod = make_app(self.port, conf)
        self.obs.setdefault("keys_with_idle_worker", {})[tag] = [repr(k)[2:-1] for k in self.keys()]
        if not extended:
            dump = ["# every _kombu.* key with a worker (gossip+mingle+pidbox on) idle; repr escapes"]
            for k in self.keys():
                if not k.startswith(b"_kombu."):
                    continue
                typ = self.r.type(k).decode()
                if typ == "set":
                    val = sorted(self.r.smembers(k))
                elif typ == "zset":
                    val = self.r.zrange(k, 0, -1, withscores=True)
                elif typ == "hash":
                    val = self.r.hgetall(k)
                else:
                    val = self.r.get(k) if typ == "string" else None
                dump.append(f"{k!r} {typ} ttl={self.r.ttl(k)} {val!r}")
            self.save("kombu_keys_with_worker.txt", "\n".join(dump) + "\n", "KEYS _kombu.* + TYPE/SMEMBERS/ZRANGE",
                      conf, "all kombu bookkeeping keys while a worker is idle")
            for k in self.keys():
                if k.startswith(b"_kombu.binding."):
                    safe = k.decode().replace("_kombu.binding.", "").replace("/", "_")
                    self.save(f"kombu_binding_{safe}.bin", b"\n".join(sorted(self.r.smembers(k))),
                              f"SMEMBERS {k.decode()} (members joined with \\n) with a worker running",
                              conf, "binding set: members are routing_key\\x06\\x16pattern\\x06\\x16queue")

        # ETA task held by the worker + acks_late slow task -> unacked
        eta = prod.tasks["cap.add"].apply_async((1, 2), countdown=25)
        slow = prod.tasks["cap.slow"].apply_async((3,))
        if not self.wait_for(lambda: self.r.hlen(b"unacked") >= 2, 15):
            raise RuntimeError("unacked never reached 2 entries")
        started = self.wait_state(slow.id, "STARTED", 10)
        un = self.r.hgetall(b"unacked")
        idx = self.r.zrange(b"unacked_index", 0, -1, withscores=True)
        for field, val in un.items():
            which = "eta" if eta.id.encode() in val else "acks_late_running"
            self.save(f"unacked_{which}_{tag}.bin", val, f"HGET unacked {field.decode()}", conf,
                      f"unacked hash value for {'ETA (countdown=25) task held by the worker' if which == 'eta' else 'acks_late task while executing'}")
        self.save(f"unacked_index_{tag}.txt",
                  "".join(f"{m.decode()} {s!r}\n" for m, s in idx),
                  "ZRANGE unacked_index 0 -1 WITHSCORES", conf, "member = delivery_tag, score = unix time")
        self.obs.setdefault("unacked_fields", {})[tag] = [f.decode() for f in un]
        if started:
            self.save(f"result_started_{tag}.bin", started, f"GET celery-task-meta-{slow.id}", conf,
                      "STARTED state (task_track_started=True) while the task runs")
        succ = self.wait_state(slow.id, "SUCCESS", 15)
        self.save(f"result_success_{tag}.bin", succ, f"GET celery-task-meta-{slow.id}", conf, "SUCCESS")
        ch = f"celery-task-meta-{slow.id}".encode()
        time.sleep(0.5)  # let the subscriber thread catch up with the PUBLISH
        pubs = self.published_on(ch)
        self.obs.setdefault("result_publish", {})[tag] = {
            "publishes_on_channel": len(pubs),
            "last_publish_identical_to_stored_value": bool(pubs) and pubs[-1] == succ,
            "states_published": [json.loads(p)["status"] for p in pubs]}
        if pubs:
            self.save(f"result_publish_success_{tag}.bin", pubs[-1], f"PUBLISH channel {ch.decode()}",
                      conf, "pub/sub payload published together with the SETEX")
        self.obs.setdefault("result_ttl", {})[tag] = self.r.ttl(ch)

        fail = prod.tasks["cap.fail"].apply_async((3,))
        fv = self.wait_state(fail.id, "FAILURE")
        self.save(f"result_failure_{tag}.bin", fv, f"GET celery-task-meta-{fail.id}", conf,
                  "FAILURE: raise ValueError('card declined 3')")

        rt_since = time.time()
        rt = prod.tasks["cap.retry_once"].apply_async((3,))
        rv = self.wait_state(rt.id, "SUCCESS", 20)
        rch = f"celery-task-meta-{rt.id}".encode()
        time.sleep(0.5)
        rpubs = self.published_on(rch, rt_since)
        retry_payloads = [p for p in rpubs if json.loads(p)["status"] == "RETRY"]
        if retry_payloads:
            self.save(f"result_retry_{tag}.bin", retry_payloads[0], f"PUBLISH channel {rch.decode()}",
                      conf, "RETRY state (self.retry(countdown=1, exc=ValueError('card declined 3'))); "
                      "captured from the PUBLISH (same bytes as the SETEX value, later overwritten)")
        self.save(f"result_success_after_retry_{tag}.bin", rv, f"GET {rch.decode()}", conf,
                  "SUCCESS after one retry")
        self.obs.setdefault("retry_states_published", {})[tag] = [json.loads(p)["status"] for p in rpubs]
        # order of RETRY store vs re-queue, from MONITOR
        seq = []
        for (st, sc, c, cl) in self.rec.monitor:
            if st < rt_since - 1:
                continue
            if (rt.id in c and ("SETEX" in c.upper() or "PUBLISH" in c.upper()) and "RETRY" in c) \
                    or (c.upper().lstrip('"').startswith("LPUSH") and rt.id in c):
                seq.append((st, c[:60]))
        self.obs.setdefault("retry_order_monitor", {})[tag] = seq

        # REVOKED: revoke the id first, then send it
        rid = "00000000-0000-4000-8000-0000000000aa" if not extended else "00000000-0000-4000-8000-0000000000bb"
        prod.control.revoke(rid)
        time.sleep(0.5)
        prod.tasks["cap.add"].apply_async((1, 1), task_id=rid)
        rev = self.wait_state(rid, "REVOKED", 10)
        if rev:
            self.save(f"result_revoked_{tag}.bin", rev, f"GET celery-task-meta-{rid}", conf,
                      "REVOKED: control.revoke(id) before the message arrives")
        # unicode kwargs through a worker (result)
        g = prod.tasks["cap.greet"].apply_async(("Zoë 日本",), {"note": "naïve ✓"})
        gv = self.wait_state(g.id, "SUCCESS")
        self.save(f"result_success_unicode_{tag}.bin", gv, f"GET celery-task-meta-{g.id}", conf,
                  "SUCCESS of a task called with non-ASCII args/kwargs")

        if not with_events:
            # heartbeats without -E? wait a few heartbeat periods
            time.sleep(5)
            # then enable events via the control command and capture the pidbox publish
            self.rec.scenario = "worker_plain_after_enable_events"
            ctl_since = time.time()
            prod.control.broadcast("enable_events")
            time.sleep(1.5)
            ctl = [(c, d) for (t, s, c, d) in self.rec.pubs if t >= ctl_since and b"pidbox" in c]
            for i, (c, d) in enumerate(ctl[:1]):
                self.save("control_enable_events.bin", d, f"PUBLISH channel {c.decode()}", conf,
                          "app.control.broadcast('enable_events') as published")
            self.obs["control_channels"] = sorted({c.decode() for c, d in ctl})
            ev_since = time.time()
            a = prod.tasks["cap.add"].apply_async((7, 8))
            self.wait_state(a.id, "SUCCESS")
            time.sleep(3)
            self.obs["events_after_enable_events"] = sorted({
                c.decode() for (t, s, c, d) in self.rec.pubs if t >= ev_since and b"celeryev" in c})
        else:
            burst = [prod.tasks["cap.add"].apply_async((i, 100)) for i in range(30)]
            for b in burst:
                self.wait_state(b.id, "SUCCESS")
            time.sleep(5)
        # the ETA task is still held; stop the worker (warm shutdown) and see what happens to it
        self.obs.setdefault("before_shutdown", {})[tag] = {
            "unacked_hlen": self.r.hlen(b"unacked"), "celery_llen": self.r.llen(b"celery")}
        stop_t = time.time()
        self.stop_worker()
        time.sleep(1)
        self.obs.setdefault("after_warm_shutdown", {})[tag] = {
            "unacked_hlen": self.r.hlen(b"unacked"), "celery_llen": self.r.llen(b"celery"),
            "requeued_message_is_eta_task": any(eta.id.encode() in m for m in self.r.lrange(b"celery", 0, -1))}
        prod.close()
        return t0, stop_t

    # ---- scenario D: default early ack timing + keyspace lifecycle -----------------------
    def early_ack(self):
        conf = {}
        self.fresh("early_ack")
        self.start_worker(conf, [], name="cap_early")
        prod = make_app(self.port, conf)
        time.sleep(3)  # let the worker go idle (blocked in BRPOP)
        ids = []
        lifecycle = None
        for i in range(8):
            t_send = time.time()
            self.rec.scenario = f"early_ack_task{i}"
            res = prod.tasks["cap.add"].apply_async((i, i))
            ids.append(res.id)
            self.wait_state(res.id, "SUCCESS")
            time.sleep(1.2)
            if i == 0:
                lifecycle = (t_send, time.time())
        # an ETA task under default early ack: does it sit in `unacked` while the worker holds it?
        self.rec.scenario = "early_ack_eta"
        e = prod.tasks["cap.add"].apply_async((5, 5), countdown=4)
        time.sleep(1.5)
        held = self.r.hgetall(b"unacked")
        self.obs["early_ack_eta_task_in_unacked_while_held"] = any(e.id.encode() in v for v in held.values())
        self.wait_state(e.id, "SUCCESS", 15)
        time.sleep(0.3)
        self.obs["early_ack_eta_task_unacked_after_run"] = self.r.hlen(b"unacked")
        self.rec.scenario = "early_ack_done"
        time.sleep(0.5)
        self.stop_worker()
        prod.close()
        # timing from MONITOR server timestamps: HSET unacked -> HDEL unacked per delivery tag
        deltas = []
        hset_t = {}
        for (st, sc, c, cl) in self.rec.monitor:
            if not sc.startswith("early_ack_task"):
                continue
            parts = c.split(" ")
            cmd = parts[0].strip('"').upper()
            if cmd == "HSET" and len(parts) > 2 and parts[1].strip('"') == "unacked":
                hset_t[parts[2].strip('"')] = st
            elif cmd == "HDEL" and len(parts) > 2 and parts[1].strip('"') == "unacked":
                tag = parts[2].strip('"')
                if tag in hset_t:
                    deltas.append(round((st - hset_t[tag]) * 1000, 3))
        self.obs["early_ack_hset_to_hdel_ms_prefork_c1"] = deltas
        snaps = [(sc, {k.decode(): len(v) for k, v in d.items()} if isinstance(d, dict) else d)
                 for (t, sc, d) in self.rec.unacked_snaps if sc.startswith("early_ack_task")]
        self.obs["early_ack_unacked_snapshots_on_hset_notification"] = {
            "attempts": len(snaps), "non_empty": sum(1 for s in snaps if s[1])}
        got = [(t, sc, d) for (t, sc, d) in self.rec.unacked_snaps if sc.startswith("early_ack_task") and d]
        if got:
            self.save("unacked_early_ack_snapshot.bin", list(got[0][2].values())[0],
                      "HGETALL unacked fired from the keyevent 'hset' notification", conf,
                      "unacked value with default early ack, grabbed reactively (may be missing if too slow)")
        t_a, t_b = lifecycle
        lines = []
        base = None
        for (t, sc, ev, key) in self.rec.keyevents:
            if sc == "early_ack_task0":
                base = base or t
                lines.append(f"+{(t - base) * 1000:8.2f}ms  {ev:8s} {repr(key)[2:-1]}")
        mon = []
        mbase = None
        mine = {self.client_addr(self.r), self.client_addr(self.rec.snap)}
        for (st, sc, c, cl) in self.rec.monitor:
            if sc == "early_ack_task0":
                mbase = mbase or st
                who = "CAPTURE-TOOL" if cl in mine else cl
                mon.append(f"+{(st - mbase) * 1000:8.2f}ms  [{who}] {c[:150]}")
        self.save("keyspace_lifecycle_early_ack.txt",
                  "# keyevent notifications (__keyevent@0__:<event> -> key), one task, idle prefork worker,\n"
                  "# default early ack, result backend redis; times are receive times of the subscriber\n"
                  + "\n".join(lines) + "\n", "PSUBSCRIBE __keyevent@0__:* (via '*')", conf,
                  "ordered keyspace notifications for one full task lifecycle")
        self.save("monitor_lifecycle_early_ack.txt",
                  "# MONITOR output for the same lifecycle (args truncated at 150 chars; server times).\n"
                  "# [CAPTURE-TOOL] lines are this script polling (GET result, HGETALL unacked on notification);\n"
                  "# other [addr:port] are the producer (LPUSH, SUBSCRIBE result channel) and the worker.\n"
                  + "\n".join(mon) + "\n", "MONITOR", conf,
                  "ordered Redis commands for one full task lifecycle (producer + worker + result)")

    # ---- event fixtures -------------------------------------------------------------------
    def events(self):
        chans = {}
        for (t, sc, c, d) in self.rec.pubs:
            name = c.decode("latin1")
            chans.setdefault(name, {"count": 0, "scenarios": set()})
            chans[name]["count"] += 1
            chans[name]["scenarios"].add(sc.split(":")[0])
        lines = ["# every pub/sub channel seen: repr(name) <TAB> count <TAB> scenarios; keyspace channels omitted",
                 "# scenarios: worker_plain = worker without -E; worker_plain_after_enable_events = same worker",
                 "# after app.control.broadcast('enable_events'); worker_extended = worker with -E;",
                 "# early_ack* = worker without -E (default early ack)"]
        for name in sorted(chans):
            if name.startswith("celery-task-meta-"):
                continue
            lines.append(f"{name!r}\t{chans[name]['count']}\t{','.join(sorted(chans[name]['scenarios']))}")
        lines.append(f"# plus one channel per stored result: 'celery-task-meta-<task id>' "
                     f"({sum(1 for n in chans if n.startswith('celery-task-meta-'))} distinct seen)")
        self.save("channel_names.txt", "\n".join(lines) + "\n", "PSUBSCRIBE *", {},
                  "exact pub/sub channel names observed")

        def variant(sc):
            if sc == "worker_extended":
                return "with_E"
            if sc == "worker_plain_after_enable_events":
                return "after_enable_events"
            return "without_E"

        saved = set()
        seq = []
        fields = {}
        samples = {}
        largest = None
        for (t, sc, c, d) in self.rec.pubs:
            if b"celeryev" not in c:
                continue
            env = json.loads(d)
            body = json.loads(base64.b64decode(env["body"]))
            rk = env["properties"]["delivery_info"]["routing_key"]
            v = variant(sc)
            evs = body if isinstance(body, list) else [body]
            seq.append({"scenario": sc, "channel": c.decode(), "routing_key": rk,
                        "types": [e.get("type") for e in evs]})
            for e in evs:
                fields.setdefault(e["type"], set()).update(e)
                samples.setdefault(e["type"], e)
            if rk == "task.multi":
                if largest is None or len(evs) > largest[0]:
                    largest = (len(evs), c, d, sc)
                for e in evs:
                    key = (f"task_multi_containing_{e['type'].replace('-', '_')}", v)
                    if key not in saved:
                        saved.add(key)
                        self.save(f"event_{key[0]}_{v}.bin", d, f"PUBLISH channel {c.decode()}",
                                  {"worker_flags": v},
                                  f"task.multi envelope (body = JSON list of {len(evs)} events: "
                                  f"{[x['type'] for x in evs]}), first one holding a {e['type']} event")
            else:
                key = (rk.replace(".", "_"), v)
                if key not in saved:
                    saved.add(key)
                    self.save(f"event_{key[0]}_{v}.bin", d, f"PUBLISH channel {c.decode()}",
                              {"worker_flags": v}, f"event envelope, routing key {rk}, scenario {sc}")
        if largest:
            self.save("event_task_multi_largest.bin", largest[2], f"PUBLISH channel {largest[1].decode()}",
                      {}, f"largest task.multi batch seen ({largest[0]} events, scenario {largest[3]})")
        # run-length encode the (scenario, routing key, batch size) sequence
        rle = []
        for e in seq:
            k = [e["scenario"], e["routing_key"], len(e["types"])]
            if rle and rle[-1][:3] == k:
                rle[-1][3] += 1
            else:
                rle.append(k + [1])
        self.obs["event_publish_sequence_rle"] = {
            "columns": ["scenario", "routing_key", "events_per_publish", "repeats"], "rows": rle}
        recv = []
        for (t, sc, c, d) in self.rec.pubs:
            if c.endswith(b"task.multi"):
                for e in json.loads(base64.b64decode(json.loads(d)["body"])):
                    if e["type"] in ("task-received", "task-retried", "task-succeeded"):
                        recv.append({k: e.get(k) for k in ("type", "name", "uuid", "retries", "eta", "runtime", "result", "pid")})
        self.obs["task_event_summaries_first_24"] = recv[:24]
        self.obs["event_fields_by_type"] = {k: sorted(v) for k, v in sorted(fields.items())}
        self.obs["event_samples"] = samples

    def run(self):
        try:
            self.queue_messages()
            self.worker_run(extended=False, with_events=False)
            self.worker_run(extended=True, with_events=True)
            self.early_ack()
            self.events()
        finally:
            if self.worker:
                os.killpg(self.worker.pid, signal.SIGKILL)
            self.rec.stop()
        self.obs["heartbeat_channel_seen_without_E"] = any(
            b"heartbeat" in c for (t, s, c, d) in self.rec.pubs if s in ("worker_plain", "early_ack"))
        with open(os.path.join(self.out, "observations.json"), "w") as f:
            json.dump(self.obs, f, indent=1, ensure_ascii=False, default=repr)
        self.manifest.append({"file": "observations.json", "source": "derived",
                              "celery_settings": {}, "description": "measured facts (timings, orders, fields)"})
        with open(os.path.join(self.out, "manifest.json"), "w") as f:
            json.dump({"generator": "tests/python/capture_celery.py",
                       "versions": versions(), "files": self.manifest}, f, indent=1, ensure_ascii=False)


def versions():
    import celery
    import kombu
    import redis
    r = {"celery": celery.__version__, "kombu": kombu.__version__, "redis-py": redis.__version__}
    try:
        import msgpack
        r["msgpack"] = ".".join(map(str, msgpack.version))
    except Exception:
        pass
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cap = Capture(a.redis_port, a.out)
    cap.obs["redis_version"] = cap.r.info()["redis_version"]
    cap.run()


if __name__ == "__main__":
    main()
