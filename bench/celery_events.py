"""Emits a Celery event stream, as workers started with `-E` (and a client with
`task_send_sent_event`) would: per task task-sent, task-received, task-started and
task-succeeded (or task-failed, 1 in 20), plus worker-online and a worker-heartbeat every 2 s
per worker. Used by bench/flower_compare.sh; prints one JSON line with what it sent.

Events go through Celery's own `app.events.Dispatcher`, so their wire format is Celery's.
"""
import argparse
import json
import sys
import time
import uuid

from celery import Celery

NAMES = ["app.tasks.send_email", "app.tasks.resize_image", "app.tasks.charge_card",
         "app.tasks.sync_account", "app.tasks.generate_report"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--tasks", type=int, default=25_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=50, help="tasks per burst of each event kind")
    p.add_argument("--rate", type=float, default=0, help="events/s cap (0: as fast as possible)")
    a = p.parse_args()

    app = Celery("bench", broker=a.broker)
    conn = app.connection_for_write()
    conn.ensure_connection(max_retries=3)
    client = app.events.Dispatcher(conn, hostname="client@bench", enabled=True)
    workers = [app.events.Dispatcher(conn, hostname=f"w{i}@bench", enabled=True)
               for i in range(a.workers)]
    task_events = 0
    worker_events = 0
    processed = 0
    for w in workers:
        w.send("worker-online", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux")
        worker_events += 1
    started = time.time()
    last_beat = started
    sent = 0
    while sent < a.tasks:
        n = min(a.batch, a.tasks - sent)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        for k, tid in enumerate(ids):
            i = sent + k
            name = NAMES[i % len(NAMES)]
            args = repr((i, f"user-{i % 977}@example.com"))
            client.send("task-sent", uuid=tid, name=name, args=args, kwargs="{}",
                        retries=0, eta=None, expires=None, queue="celery",
                        exchange="", routing_key="celery", root_id=tid, parent_id=None)
        for k, tid in enumerate(ids):
            i = sent + k
            w = workers[i % len(workers)]
            w.send("task-received", uuid=tid, name=NAMES[i % len(NAMES)],
                   args=repr((i, f"user-{i % 977}@example.com")), kwargs="{}",
                   retries=0, eta=None, root_id=tid, parent_id=None)
        for k, tid in enumerate(ids):
            workers[(sent + k) % len(workers)].send("task-started", uuid=tid)
        for k, tid in enumerate(ids):
            i = sent + k
            w = workers[i % len(workers)]
            if i % 20 == 19:
                w.send("task-failed", uuid=tid, exception="ValueError('bad input')",
                       traceback="Traceback (most recent call last):\n  ...\nValueError: bad input\n")
            else:
                w.send("task-succeeded", uuid=tid, result=repr({"ok": True, "n": i}),
                       runtime=0.001 * (i % 50))
        task_events += 4 * n
        processed += n
        sent += n
        now = time.time()
        if now - last_beat >= 2.0:
            for w in workers:
                w.send("worker-heartbeat", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
                       sw_sys="Linux", active=0, processed=processed // len(workers),
                       loadavg=[0.1, 0.1, 0.1])
                worker_events += 1
            last_beat = now
        if a.rate > 0:
            ahead = (task_events + worker_events) / a.rate - (now - started)
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.time() - started
    for w in workers:
        w.send("worker-heartbeat", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
               sw_sys="Linux", active=0, processed=processed // len(workers),
               loadavg=[0.1, 0.1, 0.1])
        worker_events += 1
    print(json.dumps({"tasks": a.tasks, "task_events": task_events,
                      "worker_events": worker_events,
                      "events": task_events + worker_events,
                      "seconds": round(elapsed, 3),
                      "events_per_second": round((task_events + worker_events) / elapsed, 1)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
