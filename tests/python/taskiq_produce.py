"""Sends taskiq tasks like an application would; prints their task ids as a JSON list.

Usage: taskiq_produce.py KIND [--n N] [--args JSON] [--fail-times K] [--seconds S]
KIND is one of taskiq_app's tasks (add, fail, flaky, slow, hang); the broker, serializer and
queue come from the same TS_* environment variables as taskiq_app.py.
"""

import argparse
import asyncio
import json

import taskiq_app


def default_args(kind: str, i: int, opts: argparse.Namespace) -> list:
    if opts.args is not None:
        return json.loads(opts.args)
    return {
        "add": [i, i + 1],
        "fail": [i + 1],
        "flaky": [f"k{i}", opts.fail_times],
        "slow": [opts.seconds],
        "hang": [],
    }[kind]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["add", "fail", "flaky", "slow", "hang"])
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--args")
    parser.add_argument("--fail-times", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    opts = parser.parse_args()
    task = getattr(taskiq_app, opts.kind)
    broker = taskiq_app.broker
    # Producers start the broker too: the stream broker creates the stream and its consumer
    # group here, so messages sent before any worker starts are still delivered later.
    await broker.startup()
    ids = []
    for i in range(opts.n):
        sent = await task.kiq(*default_args(opts.kind, i, opts))
        ids.append(sent.task_id)
    await broker.shutdown()
    print(json.dumps(ids))


if __name__ == "__main__":
    asyncio.run(main())
