"""Send Celery tasks the way an application would, and print their ids as a JSON list.

    TS_REDIS_URL=redis://127.0.0.1:6390/0 python produce.py add --n 3 --queue celery

Default arguments of the i-th task (0-based), unless --args gives them for every task:
  add [i, i+1]   fail [i+1]   flaky, flaky_default_delay ["k<i>", --fail-times]   slow [--seconds]   hang []
"""

import argparse
import json
import sys
from datetime import datetime, timezone

from celery_app import app
import billing

KINDS = {
    "add": billing.add,
    "fail": billing.fail,
    "flaky": billing.flaky,
    "flaky_default_delay": billing.flaky_default_delay,
    "slow": billing.slow,
    "hang": billing.hang,
}


def default_args(kind, i, opts):
    if kind == "add":
        return [i, i + 1]
    if kind == "fail":
        return [i + 1]
    if kind in ("flaky", "flaky_default_delay"):
        return [f"k{i}", opts.fail_times]
    if kind == "slow":
        return [opts.seconds]
    return []


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--n", type=int, default=1, help="how many tasks to send")
    p.add_argument("--queue", default="celery")
    p.add_argument("--args", help="JSON list of positional arguments for every task")
    p.add_argument("--kwargs", help="JSON object of keyword arguments for every task")
    p.add_argument("--countdown", type=float, help="seconds before the task is due")
    p.add_argument("--eta", help="ISO 8601 time the task is due (UTC when naive)")
    p.add_argument("--serializer", choices=["json", "msgpack"])
    p.add_argument("--fail-times", type=int, default=2, help="flaky: failures before success")
    p.add_argument("--seconds", type=float, default=2.0, help="slow: sleep duration")
    opts = p.parse_args()

    task = KINDS[opts.kind]
    send = {"queue": opts.queue}
    if opts.countdown is not None:
        send["countdown"] = opts.countdown
    if opts.eta:
        eta = datetime.fromisoformat(opts.eta.replace("Z", "+00:00"))
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        send["eta"] = eta
    if opts.serializer:
        send["serializer"] = opts.serializer
    fixed_args = json.loads(opts.args) if opts.args else None
    kwargs = json.loads(opts.kwargs) if opts.kwargs else {}

    ids = []
    with app.producer_or_acquire() as producer:
        for i in range(opts.n):
            args = fixed_args if fixed_args is not None else default_args(opts.kind, i, opts)
            res = task.apply_async(args=args, kwargs=kwargs, producer=producer, **send)
            ids.append(res.id)
    json.dump(ids, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
