"""RQ job functions driven by taskscope's integration tests (tests/rq.rs) and by capture_rq.py.

Workers run from this directory (`rq worker --url <redis> <queues>`) so `rq_app.<func>` imports.
Nothing here configures RQ: workers and producers use RQ's defaults (pickle serializer, forking
`Worker`), which is what taskscope must understand without any change to an application.

  TS_MARKER_DIR   when set, long jobs (slow, hang) write their pid to <dir>/<job_id>.started as
                  they begin, so a test knows a worker is executing them without asking
                  taskscope, and can kill the work horse (RQ forks it into a session of its
                  own: killing the worker's process group leaves it running)
"""

import os
import time
from pathlib import Path

from rq import Retry, get_current_job


class Card:
    """A custom class passed as an argument: a pickle taskscope cannot resolve."""

    def __init__(self, number):
        self.number = number

    def __repr__(self):
        return f"Card({self.number!r})"


def _mark_started():
    marker_dir = os.environ.get("TS_MARKER_DIR")
    job = get_current_job()
    if marker_dir and job is not None:
        Path(marker_dir, f"{job.id}.started").write_text(str(os.getpid()))


def add(x, y, note=None):
    return x + y


def fail(n):
    raise ValueError(f"card declined {n}")


def slow(seconds):
    _mark_started()
    time.sleep(float(seconds))
    return seconds


def hang():
    _mark_started()
    while True:
        time.sleep(1)


def charge(card, amount=1):
    """Takes a `Card` (custom class) argument."""
    return f"charged {amount}"


def retry_then_fail(n):
    """Always raises: with `retry=Retry(max=k)` it is retried k times, then fails."""
    raise RuntimeError(f"flaky {n}")


def ask_retry(n):
    """Returns `Retry(max=2)` (RQ 2.5+: a job asking to be retried) until it has retried twice."""
    job = get_current_job()
    if (job.number_of_retries or 0) < 2:
        return Retry(max=2)
    return n


def missing_account(account_id):
    """Fails with the account's id in the message (failure groups set ids aside)."""
    raise LookupError(f"no account {account_id}")
