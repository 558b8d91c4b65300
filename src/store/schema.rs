//! Versioned migrations. Migration N runs in one transaction together with the row that records
//! it in `schema_version`, so a crash mid-migration leaves the previous version intact and a
//! restart simply runs it again. Migrations are append-only: never edit a released one, add the
//! next.
//!
//! Index policy (schema v3): DuckDB scans columns fast and prunes with per-row-group min/max
//! (zone maps), and keeps every ART index in memory (at 10M tasks the two v2 indexes were two
//! thirds of the file and most of the RSS), so the history tables have none:
//! * `task_rows` (read through the `tasks` view) is found by time: the writer replaces a task's
//!   row within the `updated_at` range of the stored versions it holds; `/api/tasks/{id}` scans
//!   the 16-byte `uid` column (stored uncompressed since v8: bit-packed 128-bit values unpack
//!   ~5x slower); the task list is a top-N on `updated_at`.
//! * `transitions` name their task by its number `task_num` (a small, nearly sorted integer):
//!   a timeline is `task_num = n AND occurred_at <= updated_at`, which zone maps cut to the row
//!   groups written while the task lived.
//! * `queue_samples` is only ever scanned by time ranges; the newest sample per queue lives in
//!   the small `queue_latest` table, task counts in `task_counts`.
//!
//! `at` is a DuckDB keyword, hence `occurred_at` / `sampled_at`.

use super::StoreError;
use duckdb::Connection;

/// `(version, SQL)`, in order. The SQL may hold several statements.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
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
    (
        3,
        r#"
    -- Issue #8 (472 bytes per task at 10M, 1.1 GB RSS): the two ART indexes were two thirds of
    -- the file and lived in memory, and the ids were stored four times as 36-char text. Tasks
    -- now have no index: a task number `num` (assigned in order of first sight) ties
    -- transitions to their task, ids are a 16-byte UUID (`id_text` only for ids that are not a
    -- canonical lower-case UUID; `uid` is then the md5 of the text), and the view `tasks` gives
    -- the previous columns back to every reader.
    CREATE TABLE task_rows (
        num         BIGINT NOT NULL,
        broker      VARCHAR NOT NULL,
        uid         UUID NOT NULL,
        id_text     VARCHAR,
        queue       VARCHAR,
        name        VARCHAR,
        state       VARCHAR NOT NULL,
        args        VARCHAR,
        kwargs      VARCHAR,
        result      VARCHAR,
        error       VARCHAR,
        traceback   VARCHAR,
        retries     INTEGER NOT NULL DEFAULT 0,
        worker      VARCHAR,
        eta         TIMESTAMP,
        enqueued_at TIMESTAMP,
        started_at  TIMESTAMP,
        finished_at TIMESTAMP,
        runtime_ms  DOUBLE,
        updated_at  TIMESTAMP NOT NULL
    );
    CREATE TABLE transitions_v3 (
        broker   VARCHAR NOT NULL,
        task_num BIGINT,              -- task_rows.num; NULL when the task was deleted before
        state    VARCHAR NOT NULL,
        occurred_at TIMESTAMP NOT NULL,
        worker   VARCHAR,
        detail   VARCHAR,
        seq      BIGINT NOT NULL
    );
    -- Task counts by broker and state, kept by the writer and retention: `/api/stats`.
    CREATE TABLE task_counts (
        broker VARCHAR NOT NULL,
        state  VARCHAR NOT NULL,
        n      BIGINT NOT NULL,
        PRIMARY KEY (broker, state)
    );
    "#,
    ),
    (
        4,
        r#"
    -- Wait time (enqueued or eta -> started) of the tasks that finished in each period, as the
    -- runtime columns (issue #19); hours rolled up before this migration have none.
    ALTER TABLE rollup_hourly ADD COLUMN wait_count UBIGINT DEFAULT 0;
    ALTER TABLE rollup_hourly ADD COLUMN wait_sum_ms DOUBLE;
    ALTER TABLE rollup_hourly ADD COLUMN wait_max_ms DOUBLE;
    ALTER TABLE rollup_hourly ADD COLUMN wait_p50_ms DOUBLE;
    ALTER TABLE rollup_hourly ADD COLUMN wait_p95_ms DOUBLE;
    ALTER TABLE rollup_hourly ADD COLUMN wait_p99_ms DOUBLE;
    ALTER TABLE rollup_daily ADD COLUMN wait_count UBIGINT DEFAULT 0;
    ALTER TABLE rollup_daily ADD COLUMN wait_sum_ms DOUBLE;
    ALTER TABLE rollup_daily ADD COLUMN wait_max_ms DOUBLE;
    ALTER TABLE rollup_daily ADD COLUMN wait_p50_ms DOUBLE;
    ALTER TABLE rollup_daily ADD COLUMN wait_p95_ms DOUBLE;
    ALTER TABLE rollup_daily ADD COLUMN wait_p99_ms DOUBLE;
    "#,
    ),
    (
        5,
        r#"
    -- When the oldest message still waiting in each queue was enqueued, from the broker's own
    -- data (issue #19): `/api/queues` shows its age at answer time. NULL when unknown.
    ALTER TABLE queue_latest ADD COLUMN oldest_enqueued_at TIMESTAMP;
    "#,
    ),
    (
        6,
        r#"
    -- Failure groups (issue #19): the fingerprint of a task's current error, and of the error
    -- of each failure and retried transition where known (broker_adapters::fingerprint).
    ALTER TABLE task_rows ADD COLUMN fingerprint VARCHAR;
    ALTER TABLE transitions ADD COLUMN fingerprint VARCHAR;
    CREATE OR REPLACE VIEW tasks AS
        SELECT num, uid, broker, coalesce(id_text, uid::VARCHAR) AS id, queue, name, state, args,
               kwargs, result, error, traceback, retries, worker, eta, enqueued_at, started_at,
               finished_at, runtime_ms, updated_at, fingerprint
        FROM task_rows;
    -- What each group is, and when it was first and last seen: kept by the writer, so a group
    -- stays known (and not "new") after its raw rows are gone.
    CREATE TABLE failure_groups (
        fingerprint VARCHAR PRIMARY KEY,
        exception   VARCHAR,
        message     VARCHAR NOT NULL,
        frames      VARCHAR,         -- innermost frames, outermost first, one a line
        first_seen  TIMESTAMP NOT NULL,
        last_seen   TIMESTAMP NOT NULL
    );
    -- Failure and retried transitions per period and group (housekeeping), so counts survive
    -- retention; `queue`/`name` are '' when unknown, as in rollup_hourly.
    CREATE TABLE failure_rollup_hourly (
        bucket      TIMESTAMP NOT NULL,
        fingerprint VARCHAR NOT NULL,
        broker      VARCHAR NOT NULL,
        queue       VARCHAR NOT NULL,
        name        VARCHAR NOT NULL,
        state       VARCHAR NOT NULL,
        transitions UBIGINT NOT NULL
    );
    CREATE TABLE failure_rollup_daily AS SELECT * FROM failure_rollup_hourly LIMIT 0;
    "#,
    ),
    (
        7,
        r#"
    -- The audit journal (issue #21): every write action taken through taskscope, refused and
    -- failed ones included (`src/store/audit.rs`). Small and append-only: no index; kept for
    -- --audit-retention, never deleted with the task history.
    CREATE TABLE audit_log (
        id          BIGINT NOT NULL,  -- increasing: the newest entry has the highest id
        occurred_at TIMESTAMP NOT NULL,
        who         VARCHAR NOT NULL,
        action      VARCHAR NOT NULL, -- run, retry, delete, purge, revoke
        broker      VARCHAR,
        queue       VARCHAR,
        target      VARCHAR,          -- the task or message acted on (the queue for purge)
        arguments   VARCHAR,          -- JSON text
        new_task_id VARCHAR,          -- the task a run or retry created
        outcome     VARCHAR NOT NULL, -- ok, refused, failed
        error       VARCHAR,
        removed     BIGINT            -- messages removed by delete or purge
    );
    "#,
    ),
    (
        8,
        r#"
    -- Issue #22: ids that share a prefix (time-ordered UUIDs such as uuid7, a producer's
    -- sequential ids) made DuckDB bit-pack the 16-byte key column, and unpacking a 128-bit
    -- value divides once per value: every scan of the keys (a lookup of a task the live view
    -- no longer holds, `/api/tasks/{id}`) ran ~5x slower (0.28 s against 0.06 s per 2M keys)
    -- and the CPU grew with the history. The key column is stored uncompressed (random ids
    -- were already: nothing is lost in size); the table is rebuilt once, in insertion order.
    CREATE TABLE task_rows_v8 (
        num         BIGINT NOT NULL,
        broker      VARCHAR NOT NULL,
        uid         UUID NOT NULL USING COMPRESSION uncompressed,
        id_text     VARCHAR,
        queue       VARCHAR,
        name        VARCHAR,
        state       VARCHAR NOT NULL,
        args        VARCHAR,
        kwargs      VARCHAR,
        result      VARCHAR,
        error       VARCHAR,
        traceback   VARCHAR,
        retries     INTEGER NOT NULL DEFAULT 0,
        worker      VARCHAR,
        eta         TIMESTAMP,
        enqueued_at TIMESTAMP,
        started_at  TIMESTAMP,
        finished_at TIMESTAMP,
        runtime_ms  DOUBLE,
        updated_at  TIMESTAMP NOT NULL,
        fingerprint VARCHAR
    );
    INSERT INTO task_rows_v8
        SELECT num, broker, uid, id_text, queue, name, state, args, kwargs, result, error,
               traceback, retries, worker, eta, enqueued_at, started_at, finished_at,
               runtime_ms, updated_at, fingerprint
        FROM task_rows;
    DROP VIEW tasks;
    DROP TABLE task_rows;
    ALTER TABLE task_rows_v8 RENAME TO task_rows;
    CREATE VIEW tasks AS
        SELECT num, uid, broker, coalesce(id_text, uid::VARCHAR) AS id, queue, name, state, args,
               kwargs, result, error, traceback, retries, worker, eta, enqueued_at, started_at,
               finished_at, runtime_ms, updated_at, fingerprint
        FROM task_rows;
    "#,
    ),
];

/// The statements of migration 3 that follow its DDL: the v2 rows of `tasks` and `transitions`
/// copied into the v3 tables, the old tables replaced by the view. See [`copy_v2_rows_sql`].
fn finish_v3_sql() -> String {
    format!(
        "{}
         DROP INDEX transitions_task;
         DROP TABLE transitions;
         ALTER TABLE transitions_v3 RENAME TO transitions;
         DROP TABLE tasks;
         {TASKS_VIEW}",
        copy_v2_rows_sql("tasks", "transitions", "transitions_v3", 0)
    )
}

/// The view readers query: `tasks` with the columns of schema v2 (and `num`, `uid`), as
/// migration 3 made it (migration 6 adds `fingerprint`).
pub(crate) const TASKS_VIEW: &str = "CREATE VIEW tasks AS
    SELECT num, uid, broker, coalesce(id_text, uid::VARCHAR) AS id, queue, name, state, args,
           kwargs, result, error, traceback, retries, worker, eta, enqueued_at, started_at,
           finished_at, runtime_ms, updated_at
    FROM task_rows;";

/// SQL of the 16-byte key of a task id (text): the id itself when it is a canonical UUID,
/// else the md5 of the text.
pub(crate) fn uid_sql(id: &str) -> String {
    format!(
        "coalesce(CASE WHEN try_cast({id} AS UUID)::VARCHAR = {id} THEN try_cast({id} AS UUID) END, \
         md5({id})::UUID)"
    )
}

/// SQL of the text kept beside the key: `NULL` when the key gives the id back.
pub(crate) fn id_text_sql(id: &str) -> String {
    format!("CASE WHEN try_cast({id} AS UUID)::VARCHAR = {id} THEN NULL ELSE {id} END")
}

/// Copies rows shaped like schema v2 (`src_tasks`: `broker, id, ...`; `src_transitions`:
/// `broker, task_id, ...`) into `task_rows` and `dst_transitions`, numbering the tasks after
/// the highest `num` (plus `num_offset`) in order of first sight, then recounts `task_counts`. Used by migration 3
/// and by tests that plant v2-shaped rows.
pub(crate) fn copy_v2_rows_sql(
    src_tasks: &str,
    src_transitions: &str,
    dst_transitions: &str,
    num_offset: i64,
) -> String {
    format!(
        "INSERT INTO task_rows (num, broker, uid, id_text, queue, name, state, args, kwargs, result,
                                error, traceback, retries, worker, eta, enqueued_at, started_at,
                                finished_at, runtime_ms, updated_at)
         SELECT (SELECT coalesce(max(num), 0) FROM task_rows) + {num_offset}
                    + row_number() OVER (ORDER BY coalesce(enqueued_at, started_at, updated_at), broker, id),
                broker, {uid}, {id_text}, queue, name, state, args, kwargs, result, error,
                traceback, retries, worker, eta, enqueued_at, started_at, finished_at, runtime_ms,
                updated_at
         FROM {src_tasks};
         INSERT INTO {dst_transitions} (broker, task_num, state, occurred_at, worker, detail, seq)
         SELECT t.broker, k.num, t.state, t.occurred_at, t.worker, t.detail, t.seq
         FROM {src_transitions} t
         LEFT JOIN task_rows k ON k.broker = t.broker AND k.uid = {tuid}
         ORDER BY t.occurred_at, t.seq;
         DELETE FROM task_counts;
         INSERT INTO task_counts SELECT broker, state, count(*) FROM task_rows GROUP BY ALL;",
        uid = uid_sql("id"),
        id_text = id_text_sql("id"),
        tuid = uid_sql("t.task_id"),
    )
}

/// The schema version this build writes: the last migration's.
pub(crate) const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Brings the database to [`LATEST_VERSION`]; a no-op when it is there already.
/// Migration 8 copies every stored task once: said before it starts when that takes a while
/// (measured: 143 s for 10M tasks on a loaded 2-core machine, peak RSS 149 MiB).
fn announce_v8_rebuild(conn: &Connection) {
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM task_rows", [], |r| r.get(0))
        .unwrap_or(0);
    if rows >= 100_000 {
        tracing::warn!(
            tasks = rows,
            "Rebuilding the task table once so its key column is stored uncompressed \
             (schema v8); this takes about a minute per 5 million tasks and is resumed \
             from the start if interrupted."
        );
    }
}

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
        if version == 8 {
            announce_v8_rebuild(conn);
        }
        let run = |conn: &mut Connection| -> duckdb::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            if version == 3 {
                tx.execute_batch(&finish_v3_sql())?;
            }
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", [version])?;
            tx.commit()
        };
        run(conn).map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}
