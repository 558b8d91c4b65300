//! Versioned migrations. Migration N runs in one transaction together with the row that records
//! it in `schema_version`, so a crash mid-migration leaves the previous version intact and a
//! restart simply runs it again. Migrations are append-only: never edit a released one, add the
//! next.
//!
//! Index policy: DuckDB scans columns fast and prunes with per-row-group min/max, so indexes only
//! pay for point lookups, and every index is maintained on the single writer's path:
//! * `tasks.updated_at` has none: the task list is `ORDER BY updated_at DESC ... LIMIT`, a top-N
//!   scan DuckDB does without an index (an ART index is not used for ordering), while every
//!   upsert changes `updated_at` and would have to maintain it.
//! * `transitions` gets one on `(broker, task_id)`: a task's timeline is a point lookup into an
//!   ever-growing append-only table.
//! * `queue_samples` is only ever scanned by time ranges (zone maps prune it); the newest sample
//!   per queue lives in the small `queue_latest` table instead.
//!
//! `at` is a DuckDB keyword, hence `occurred_at` / `sampled_at`.

use super::StoreError;
use duckdb::Connection;

/// `(version, SQL)`, in order. The SQL may hold several statements.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE tasks (
        broker      VARCHAR NOT NULL,
        id          VARCHAR NOT NULL,
        queue       VARCHAR,
        name        VARCHAR,
        state       VARCHAR NOT NULL,
        args        VARCHAR,          -- JSON text
        kwargs      VARCHAR,          -- JSON text
        result      VARCHAR,          -- JSON text
        error       VARCHAR,
        traceback   VARCHAR,
        retries     INTEGER NOT NULL DEFAULT 0,
        worker      VARCHAR,
        eta         TIMESTAMP,        -- all TIMESTAMPs are UTC
        enqueued_at TIMESTAMP,
        started_at  TIMESTAMP,
        finished_at TIMESTAMP,
        runtime_ms  DOUBLE,
        updated_at  TIMESTAMP NOT NULL,
        PRIMARY KEY (broker, id)
    );

    CREATE TABLE transitions (
        broker  VARCHAR NOT NULL,
        task_id VARCHAR NOT NULL,
        state   VARCHAR NOT NULL,
        occurred_at TIMESTAMP NOT NULL, -- `at` is a DuckDB keyword
        worker  VARCHAR,
        detail  VARCHAR,
        seq     BIGINT NOT NULL       -- write order: breaks ties between equal `at`
    );
    CREATE INDEX transitions_task ON transitions (broker, task_id);

    CREATE TABLE workers (
        broker       VARCHAR NOT NULL,
        id           VARCHAR NOT NULL,
        hostname     VARCHAR,
        pid          BIGINT,
        alive        BOOLEAN NOT NULL,
        first_seen   TIMESTAMP NOT NULL,
        last_seen    TIMESTAMP NOT NULL,
        online_since TIMESTAMP NOT NULL,
        PRIMARY KEY (broker, id)
    );

    CREATE TABLE queue_samples (
        broker  VARCHAR NOT NULL,
        queue   VARCHAR NOT NULL,
        sampled_at TIMESTAMP NOT NULL,
        length  UBIGINT NOT NULL,
        delayed UBIGINT NOT NULL,
        dead    UBIGINT NOT NULL,
        running UBIGINT NOT NULL
    );

    -- The newest sample of each queue, so `/api/queues` does not scan the whole history.
    CREATE TABLE queue_latest (
        broker  VARCHAR NOT NULL,
        queue   VARCHAR NOT NULL,
        sampled_at TIMESTAMP NOT NULL,
        length  UBIGINT NOT NULL,
        delayed UBIGINT NOT NULL,
        dead    UBIGINT NOT NULL,
        running UBIGINT NOT NULL,
        PRIMARY KEY (broker, queue)
    );
    "#,
    ),
    (
        2,
        r#"
    -- Housekeeping (src/store/maintenance.rs): roll-ups of raw transitions per period, broker,
    -- queue, task name and state; `queue`/`name` are '' when unknown (they are key columns).
    CREATE TABLE rollup_hourly (
        bucket      TIMESTAMP NOT NULL,
        broker      VARCHAR NOT NULL,
        queue       VARCHAR NOT NULL,
        name        VARCHAR NOT NULL,
        state       VARCHAR NOT NULL,
        transitions UBIGINT NOT NULL,
        runtime_count  UBIGINT NOT NULL,
        runtime_sum_ms DOUBLE,
        runtime_min_ms DOUBLE,
        runtime_max_ms DOUBLE,
        runtime_p50_ms DOUBLE,
        runtime_p95_ms DOUBLE,
        runtime_p99_ms DOUBLE
    );
    CREATE TABLE rollup_daily AS SELECT * FROM rollup_hourly LIMIT 0;

    -- Watermarks: how far roll-ups and down-sampling went.
    CREATE TABLE housekeeping_state (
        name  VARCHAR PRIMARY KEY,
        value TIMESTAMP NOT NULL
    );

    -- One row per job run, for `/`, `/healthz` and `taskscope housekeeping`.
    CREATE TABLE housekeeping_runs (
        job         VARCHAR NOT NULL,
        started_at  TIMESTAMP NOT NULL,
        duration_ms DOUBLE NOT NULL,
        rows_affected UBIGINT NOT NULL,
        detail      VARCHAR,
        error       VARCHAR
    );
    "#,
    ),
];

/// The schema version this build writes.
pub(crate) const LATEST_VERSION: i32 = 2;

/// Brings the database to [`LATEST_VERSION`]; a no-op when it is there already.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
         )",
    )
    .map_err(|e| StoreError::Migration {
        version: 0,
        source: e,
    })?;
    let current: i32 = conn
        .query_row(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::Migration {
            version: 0,
            source: e,
        })?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let run = |conn: &mut Connection| -> duckdb::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", [version])?;
            tx.commit()
        };
        run(conn).map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}
