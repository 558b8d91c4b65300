"""Dramatiq app driven by taskscope's integration tests (the Dramatiq counterpart of celery_app.py
and billing.py in one module).

Configured only from the environment so the Rust harness can point it at a private redis-server:
  TS_REDIS_URL                   broker (and result backend) URL (required),
                                 e.g. redis://127.0.0.1:6390/0
  TS_DRAMATIQ_NAMESPACE          RedisBroker key prefix (default "dramatiq")
  TS_DRAMATIQ_RESULTS            "1" adds the Results middleware (RedisBackend on the same Redis,
                                 default namespace "dramatiq-results", store_results=True for every
                                 actor, so keys are md5("dramatiq-results:<q>:<actor>:<message_id>"))
  TS_DRAMATIQ_QUEUE              queue every actor is declared on (default "default")
  TS_DRAMATIQ_HEARTBEAT_TIMEOUT  RedisBroker heartbeat_timeout in ms (default: Dramatiq's 60000)
  TS_DRAMATIQ_MAINTENANCE_CHANCE RedisBroker maintenance_chance out of 1e6 per dispatch call
                                 (default: Dramatiq's 1000). 1000000 with a small heartbeat timeout
                                 makes a dead worker's messages come back within seconds.
  TS_MARKER_DIR                  when set, long actors (slow, hang) touch <dir>/<message_id>.started
                                 as they begin, so a test knows a worker is executing them without
                                 asking taskscope

Run a worker from this directory with:  dramatiq dramatiq_app --processes 1 --threads 2
Everything not listed above is Dramatiq's defaults (JSON encoder, default middleware): that is
what "passive mode" watches. Actor names are the function names (add, fail, flaky, slow, hang).
"""

import os
import time
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

REDIS_URL = os.environ.get("TS_REDIS_URL")
if not REDIS_URL:
    raise SystemExit("dramatiq_app: set TS_REDIS_URL (e.g. redis://127.0.0.1:6390/0)")

NAMESPACE = os.environ.get("TS_DRAMATIQ_NAMESPACE") or "dramatiq"
QUEUE = os.environ.get("TS_DRAMATIQ_QUEUE") or "default"
RESULTS = os.environ.get("TS_DRAMATIQ_RESULTS") == "1"

_broker_opts = {"url": REDIS_URL, "namespace": NAMESPACE}
if os.environ.get("TS_DRAMATIQ_HEARTBEAT_TIMEOUT"):
    _broker_opts["heartbeat_timeout"] = int(os.environ["TS_DRAMATIQ_HEARTBEAT_TIMEOUT"])
if os.environ.get("TS_DRAMATIQ_MAINTENANCE_CHANCE"):
    _broker_opts["maintenance_chance"] = int(os.environ["TS_DRAMATIQ_MAINTENANCE_CHANCE"])

broker = RedisBroker(**_broker_opts)
broker.add_middleware(CurrentMessage())
result_backend = None
if RESULTS:
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    result_backend = RedisBackend(url=REDIS_URL)
    broker.add_middleware(Results(backend=result_backend, store_results=True))
dramatiq.set_broker(broker)


def _current_message():
    return CurrentMessage.get_current_message()


def _mark_started():
    marker_dir = os.environ.get("TS_MARKER_DIR")
    message = _current_message()
    if marker_dir and message is not None:
        Path(marker_dir, f"{message.message_id}.started").touch()


@dramatiq.actor(queue_name=QUEUE)
def add(x, y):
    return x + y


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def fail(n):
    """Dead-lettered at once (no retries): lands in <ns>:<q>.XQ."""
    raise ValueError(f"card declined {n}")


@dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=100, max_backoff=500)
def flaky(key, fail_times):
    """Fails the first `fail_times` attempts (each retry is a copy in the delay queue with the same
    message_id and options.retries + 1), then succeeds."""
    message = _current_message()
    attempt = message.options.get("retries", 0) if message is not None else 0
    if attempt < fail_times:
        raise RuntimeError(f"flaky {key}: attempt {attempt + 1} of {fail_times + 1} failed")
    return f"{key} ok after {attempt} retries"


@dramatiq.actor(queue_name=QUEUE)
def slow(seconds):
    _mark_started()
    time.sleep(seconds)
    return seconds


# time_limit: Dramatiq's TimeLimit middleware would interrupt it after 10 minutes otherwise.
@dramatiq.actor(queue_name=QUEUE, time_limit=2 * 3600 * 1000)
def hang():
    """Runs for an hour: the tests SIGKILL its worker to make it abandoned."""
    _mark_started()
    time.sleep(3600)
    return "unreachable"


ACTORS = {"add": add, "fail": fail, "flaky": flaky, "slow": slow, "hang": hang}
