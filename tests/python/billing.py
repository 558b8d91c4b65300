"""Tasks the integration tests run. Every outcome taskscope must infer has one here."""

import os
import time
from pathlib import Path

from celery_app import app


def _mark_started(task_id):
    marker_dir = os.environ.get("TS_MARKER_DIR")
    if marker_dir and task_id:
        Path(marker_dir, f"{task_id}.started").touch()


@app.task
def add(x, y):
    return x + y


@app.task
def fail(n):
    raise ValueError(f"card declined {n}")


@app.task(bind=True, max_retries=5)
def flaky(self, key, fail_times):
    """Fails (and retries itself) `fail_times` times, then succeeds."""
    attempt = self.request.retries
    if attempt < fail_times:
        raise self.retry(
            countdown=0.5,
            max_retries=5,
            exc=RuntimeError(f"flaky {key}: attempt {attempt + 1} of {fail_times + 1} failed"),
        )
    return f"{key} ok after {attempt} retries"


@app.task(bind=True, max_retries=5, default_retry_delay=0.3)
def flaky_default_delay(self, key, fail_times):
    """`flaky` without a countdown: `self.retry()` waits `default_retry_delay` (0.3 s), so the
    re-sent message carries an ETA and is held in `unacked` until due."""
    attempt = self.request.retries
    if attempt < fail_times:
        raise self.retry(
            exc=RuntimeError(f"flaky {key}: attempt {attempt + 1} of {fail_times + 1} failed"),
        )
    return f"{key} ok after {attempt} retries"


@app.task(bind=True)
def slow(self, seconds):
    _mark_started(self.request.id)
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def hang(self):
    """Runs for an hour: the tests SIGKILL its worker to make it abandoned."""
    _mark_started(self.request.id)
    time.sleep(3600)
    return "unreachable"
