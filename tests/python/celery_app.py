"""Celery app driven by taskscope's integration tests (tests/celery.rs).

Configured only from the environment so the Rust harness can point it at a private redis-server:
  TS_REDIS_URL        broker and result backend (required), e.g. redis://127.0.0.1:6390/0
  TS_RESULT_EXTENDED  "1" stores name/args/kwargs/worker/queue in the result (result_extended)
  TS_SERIALIZER       default task serializer: json (default) or msgpack
  TS_TRACK_STARTED    "1" makes workers store a STARTED result (task_track_started)
  TS_COMPRESSION      e.g. "zlib": task_compression and result_compression (Celery 5.7)
  TS_RESULT_URL       the result backend, when it is not the broker (e.g. another database)
  TS_MARKER_DIR       when set, long tasks touch <dir>/<task id>.started as they begin, so a test
                      knows a worker is executing them without asking taskscope

Everything else is Celery's defaults: that is what "passive mode" watches. Tasks live in the
module `billing` (names billing.add, billing.fail, ...).
"""

import os

from celery import Celery

REDIS_URL = os.environ.get("TS_REDIS_URL")
if not REDIS_URL:
    raise SystemExit("celery_app: set TS_REDIS_URL (e.g. redis://127.0.0.1:6390/0)")

app = Celery(
    "taskscope_tests",
    broker=REDIS_URL,
    backend=os.environ.get("TS_RESULT_URL") or REDIS_URL,
    include=["billing"],
)
app.conf.update(
    task_serializer=os.environ.get("TS_SERIALIZER", "json"),
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    result_serializer="json",
    result_extended=os.environ.get("TS_RESULT_EXTENDED") == "1",
    task_track_started=os.environ.get("TS_TRACK_STARTED") == "1",
    task_compression=os.environ.get("TS_COMPRESSION") or None,
    result_compression=os.environ.get("TS_COMPRESSION") or None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
