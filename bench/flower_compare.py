"""taskscope and Flower side by side on the same Celery event stream (issue #8).

Starts a private redis-server, `taskscope serve --brokers celery` (release build) and Flower,
both subscribed to the same Redis, emits a Celery event stream with bench/celery_events.py,
waits until both have seen every event, and reports for each: CPU seconds (utime + stime from
/proc/<pid>/stat) per 10k events, peak RSS (VmHWM) and how many tasks it holds at the end
(taskscope: /api/stats; Flower: /api/tasks). Run it through bench/flower_compare.sh.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def thread_cpu(pid):
    """CPU seconds of each thread of `pid`, summed by thread name (tokio workers together)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0) + (int(rest[11]) + int(rest[12])) / TICKS
    return out


def status_bytes(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_for(what, check, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last is True:
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.2)
    raise SystemExit(f"flower_compare: {what} not reached within {timeout}s (last: {last})")


def flower_task_events(port):
    text = get(f"http://127.0.0.1:{port}/metrics").decode()
    total = 0.0
    for m in re.finditer(r'^flower_events_total\{[^}]*type="task-[^"]*"[^}]*\} ([0-9.e+]+)$',
                         text, re.M):
        total += float(m.group(1))
    return int(total)


def taskscope_finished(port):
    s = json.loads(get(f"http://127.0.0.1:{port}/api/stats"))
    return s["by_state"], sum(s["by_state"].values())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=25_000)
    p.add_argument("--rate", type=float, default=0, help="events/s cap, 0 = as fast as possible")
    p.add_argument("--max-tasks", type=int, default=10_000, help="Flower's --max_tasks (its default)")
    p.add_argument("--taskscope", default=os.path.join(ROOT, "target/release/taskscope"))
    p.add_argument("--python", default=os.path.join(ROOT, ".venv-bench/bin/python"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="flower-compare-")
    procs = []

    def spawn(args, **kw):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{len(procs)}.log"), "w"), **kw)
        procs.append(proc)
        return proc

    try:
        rport, tport, fport = free_port(), free_port(), free_port()
        broker = f"redis://127.0.0.1:{rport}/0"
        # No output-buffer limit for pub/sub: a subscriber that falls behind must not be cut off.
        spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0"])
        wait_for("redis", lambda: socket.create_connection(("127.0.0.1", rport)).close() or True, 10)
        ts = spawn([a.taskscope, "serve", "--redis", broker, "--brokers", "celery",
                    "--db", os.path.join(tmp, "t.duckdb"), "--listen", f"127.0.0.1:{tport}"],
                   env=dict(os.environ, TASKSCOPE_LOG="warn"))
        fl = spawn([os.path.join(os.path.dirname(a.python), "celery"), "--broker", broker,
                    "flower", f"--port={fport}", "--address=127.0.0.1",
                    f"--max_tasks={a.max_tasks}"],
                   # Flower 2 answers its API only with auth, or with this set.
                   env=dict(os.environ, FLOWER_UNAUTHENTICATED_API="true"))
        wait_for("taskscope /healthz", lambda: get(f"http://127.0.0.1:{tport}/healthz") and True, 60)
        wait_for("flower /healthcheck", lambda: get(f"http://127.0.0.1:{fport}/healthcheck") and True, 60)
        time.sleep(2)  # both subscribed and settled
        cpu0 = {"taskscope": cpu(ts.pid), "flower": cpu(fl.pid)}
        threads0 = thread_cpu(ts.pid)
        t0 = time.time()
        out = subprocess.run([a.python, os.path.join(ROOT, "bench/celery_events.py"),
                              "--broker", broker, "--tasks", str(a.tasks), "--rate", str(a.rate)],
                             check=True, capture_output=True, text=True)
        sent = json.loads(out.stdout.strip().splitlines()[-1])
        done = {}

        def both_done():
            if "taskscope" not in done:
                by_state, _ = taskscope_finished(tport)
                if by_state.get("success", 0) + by_state.get("failure", 0) >= a.tasks:
                    done["taskscope"] = time.time() - t0
            if "flower" not in done and flower_task_events(fport) >= sent["task_events"]:
                done["flower"] = time.time() - t0
            return len(done) == 2 or f"done: {sorted(done)}"

        wait_for("both caught up", both_done, 600)
        time.sleep(1)
        cpu1 = {"taskscope": cpu(ts.pid), "flower": cpu(fl.pid)}
        threads1 = thread_cpu(ts.pid)
        by_state, ts_tasks = taskscope_finished(tport)
        fl_tasks = len(json.loads(get(f"http://127.0.0.1:{fport}/api/tasks?limit={a.tasks * 2}", 120)))
        events = sent["events"]
        res = {"events": events, "tasks_emitted": a.tasks, "emit": sent,
               "flower_max_tasks": a.max_tasks}
        for who, pid, tasks in (("taskscope", ts.pid, ts_tasks), ("flower", fl.pid, fl_tasks)):
            c = cpu1[who] - cpu0[who]
            res[who] = {"cpu_seconds": round(c, 3),
                        "cpu_seconds_per_10k_events": round(c / events * 10_000, 4),
                        "peak_rss_bytes": status_bytes(pid, "VmHWM"),
                        "tasks_at_end": tasks,
                        "caught_up_seconds": round(done[who], 2)}
        res["taskscope"]["by_state"] = by_state
        # Where taskscope's CPU went, per 10k events, by thread (a thread that ended is missed).
        res["taskscope"]["cpu_seconds_per_10k_events_by_thread"] = {
            name: round((threads1[name] - threads0.get(name, 0)) / events * 10_000, 4)
            for name in sorted(threads1, key=lambda n: threads0.get(n, 0) - threads1[n])
            if threads1[name] - threads0.get(name, 0) > 0}
        # How many DuckDB transactions the writer needed: its fixed cost per batch dominates.
        res["taskscope"]["store_batches"] = json.loads(get(f"http://127.0.0.1:{tport}/healthz"))["store"]["batches"]
        res["cpu_ratio_flower_over_taskscope"] = round(
            res["flower"]["cpu_seconds"] / max(res["taskscope"]["cpu_seconds"], 1e-9), 1)
        if a.json:
            print(json.dumps(res))
        else:
            mib = lambda b: b / 1048576
            print(f"{events} events ({a.tasks} tasks) at {sent['events_per_second']:.0f} events/s")
            print(f"{'':10} {'CPU s/10k ev':>13} {'peak RSS MiB':>13} {'tasks at end':>13} {'caught up s':>12}")
            for who in ("taskscope", "flower"):
                r = res[who]
                print(f"{who:10} {r['cpu_seconds_per_10k_events']:>13.3f} {mib(r['peak_rss_bytes']):>13.1f} "
                      f"{r['tasks_at_end']:>13} {r['caught_up_seconds']:>12.1f}")
            print("taskscope CPU s/10k events by thread: " + ", ".join(
                f"{n} {v:.3f}" for n, v in res["taskscope"]["cpu_seconds_per_10k_events_by_thread"].items()))
            print(f"taskscope wrote {res['taskscope']['store_batches']} store batches")
            print(f"Flower used {res['cpu_ratio_flower_over_taskscope']}x the CPU of taskscope "
                  f"(Flower keeps at most --max_tasks={a.max_tasks} tasks)")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
