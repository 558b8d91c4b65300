"""Send Dramatiq messages the way an application would, and print their message_ids as a JSON list.

    TS_REDIS_URL=redis://127.0.0.1:6390/0 python dramatiq_produce.py add --n 3 --queue default

Default arguments of the i-th message (0-based), unless --args gives them for every message:
  add [i, i+1]   fail [i+1]   flaky ["k<i>", --fail-times]   slow [--seconds]   hang []

--delay MS sends to the delay queue (<ns>:<q>.DQ, options.eta = now + MS). The broker's
namespace, results and the actors' default queue come from the same environment as
dramatiq_app.py. A worker only consumes the queues its actors are declared on
(TS_DRAMATIQ_QUEUE, default "default"), so --queue other than that leaves messages queued.
"""

import argparse
import json
import sys

from dramatiq_app import ACTORS, broker


def default_args(kind, i, opts):
    if kind == "add":
        return [i, i + 1]
    if kind == "fail":
        return [i + 1]
    if kind == "flaky":
        return [f"k{i}", opts.fail_times]
    if kind == "slow":
        return [opts.seconds]
    return []


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(ACTORS))
    p.add_argument("--n", type=int, default=1, help="how many messages to send")
    p.add_argument("--queue", help="queue name (default: the actor's queue)")
    p.add_argument("--args", help="JSON list of positional arguments for every message")
    p.add_argument("--kwargs", help="JSON object of keyword arguments for every message")
    p.add_argument("--delay", type=int, help="milliseconds before the message is due (delay queue)")
    p.add_argument("--fail-times", type=int, default=2, help="flaky: failures before success")
    p.add_argument("--seconds", type=float, default=2.0, help="slow: sleep duration")
    opts = p.parse_args()

    actor = ACTORS[opts.kind]
    fixed_args = json.loads(opts.args) if opts.args else None
    kwargs = json.loads(opts.kwargs) if opts.kwargs else {}

    ids = []
    for i in range(opts.n):
        args = fixed_args if fixed_args is not None else default_args(opts.kind, i, opts)
        message = actor.message_with_options(args=tuple(args), kwargs=kwargs)
        if opts.queue and opts.queue != message.queue_name:
            message = message.copy(queue_name=opts.queue)
        # Same path as actor.send_with_options(delay=...): broker.enqueue runs the middleware.
        sent = broker.enqueue(message, delay=opts.delay)
        ids.append(sent.message_id)
    json.dump(ids, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
