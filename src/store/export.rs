//! Exports of the task list: every task matching a [`TaskQuery`]'s filters, as CSV (streamed) or
//! Parquet (written by DuckDB itself).
//!
//! Memory stays flat however many tasks match: DuckDB formats each CSV line in SQL and the
//! statement runs in streaming mode (`duckdb_execute_prepared_streaming`), so rows are fetched a
//! vector (2048 rows) at a time, turned into a chunk of bytes, and handed to a bounded channel
//! (HTTP) or a file. There is no `ORDER BY`: sorting would make DuckDB materialise every row
//! first, so rows come in storage order. Parquet goes through `COPY (SELECT ...) TO`, which
//! DuckDB pipelines as well.

use super::reader::{task_filter, StoreReader, TaskQuery};
use super::StoreError;
use duckdb::arrow::array::{Array, LargeStringArray, StringArray, StringViewArray};
use duckdb::types::Value as DbValue;
use duckdb::Connection;
use std::io::Write;
use std::path::Path;

/// The CSV header: the contract's task fields, in the order of its Task JSON, then the failure
/// group's `fingerprint` (added last, so the older columns keep their places).
pub const CSV_HEADER: &str = "id,broker,queue,name,state,args,kwargs,result,error,traceback,\
retries,worker,eta,enqueued_at,started_at,finished_at,runtime_ms,updated_at,fingerprint\n";

/// A text column as a CSV field: always quoted (quotes doubled), empty when NULL, and
/// [`neutralised`].
fn text(col: &str) -> String {
    format!(
        "coalesce('\"' || replace({}, '\"', '\"\"') || '\"', '')",
        neutralised(col)
    )
}

/// `col` with a `'` in front when a spreadsheet would read it as a formula (OWASP's CSV
/// injection advice): it starts with `=`, `+`, `-`, `@`, a tab or a carriage return. Every
/// text cell can come from a producer (a task named `=HYPERLINK(...)`). Plain numbers (`-3`,
/// a JSON result) are left alone: they are not formulas.
fn neutralised(col: &str) -> String {
    format!(
        "CASE WHEN left({col}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) \
              AND NOT regexp_full_match({col}, '-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?') \
         THEN '''' || {col} ELSE {col} END"
    )
}

/// A timestamp as RFC 3339 UTC with milliseconds, empty when NULL.
fn time(col: &str) -> String {
    format!("coalesce(strftime({col}, '%Y-%m-%dT%H:%M:%S.%gZ'), '')")
}

/// One `VARCHAR` per task: its CSV line without the newline.
fn csv_line_sql() -> String {
    let fields = [
        text("id"),
        text("broker"),
        text("queue"),
        text("name"),
        text("state"),
        text("args"),
        text("kwargs"),
        text("result"),
        text("error"),
        text("traceback"),
        "CAST(retries AS VARCHAR)".to_string(),
        text("worker"),
        time("eta"),
        time("enqueued_at"),
        time("started_at"),
        time("finished_at"),
        "coalesce(CAST(runtime_ms AS VARCHAR), '')".to_string(),
        time("updated_at"),
        text("fingerprint"),
    ];
    format!("concat_ws(',', {})", fields.join(", "))
}

fn where_clause(wheres: &[String]) -> String {
    if wheres.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wheres.join(" AND "))
    }
}

/// Streams the CSV (header first) of every task matching `query`'s filters (its cursor and
/// limit are ignored) into `sink`, one chunk of whole lines at a time. Returns the number of
/// tasks written. Stops early, without error, when `sink` returns `false` (the reader left).
pub(crate) fn write_csv(
    conn: &Connection,
    query: &TaskQuery,
    mut sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    let (wheres, params) = task_filter(query);
    let sql = format!(
        "SELECT {} FROM tasks {}",
        csv_line_sql(),
        where_clause(&wheres)
    );
    if !sink(CSV_HEADER.as_bytes().to_vec()) {
        return Ok(0);
    }
    let mut stmt = conn.prepare(&sql)?;
    let stream = stmt.stream_arrow(duckdb::params_from_iter(params))?;
    // `Arrow` panics when fetching a vector fails mid-stream; turn that into an error.
    let mut stream = std::panic::AssertUnwindSafe(stream);
    let mut written = 0u64;
    loop {
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.0.next()))
            .map_err(|_| StoreError::Corrupt("the export query failed mid-stream".into()))?;
        let Some(batch) = next else { break };
        let column = batch.column(0);
        let mut chunk = Vec::with_capacity(batch.num_rows() * 128);
        let mut push = |line: Option<&str>| {
            if let Some(line) = line {
                chunk.extend_from_slice(line.as_bytes());
                chunk.push(b'\n');
            }
        };
        if let Some(a) = column.as_any().downcast_ref::<StringArray>() {
            (0..a.len()).for_each(|i| push((!a.is_null(i)).then(|| a.value(i))));
        } else if let Some(a) = column.as_any().downcast_ref::<LargeStringArray>() {
            (0..a.len()).for_each(|i| push((!a.is_null(i)).then(|| a.value(i))));
        } else if let Some(a) = column.as_any().downcast_ref::<StringViewArray>() {
            (0..a.len()).for_each(|i| push((!a.is_null(i)).then(|| a.value(i))));
        } else {
            return Err(StoreError::Corrupt(format!(
                "the export query returned {:?}, not text",
                column.data_type()
            )));
        }
        written += batch.num_rows() as u64;
        if !sink(chunk) {
            break;
        }
    }
    Ok(written)
}

/// Writes every task matching `query`'s filters to `out` as Parquet (DuckDB's `COPY`), with the
/// same columns as the CSV (JSON values as text, times as UTC timestamps). Returns the number
/// of tasks written.
pub fn write_parquet(conn: &Connection, query: &TaskQuery, out: &Path) -> Result<u64, StoreError> {
    let (wheres, mut params) = task_filter(query);
    // Without insertion order DuckDB need not buffer rows to write them in order; small row
    // groups bound what each writer thread holds.
    conn.execute_batch("SET preserve_insertion_order = false")?;
    let sql = format!(
        "COPY (SELECT id, broker, queue, name, state, args, kwargs, result, error, traceback,
                      retries, worker, eta, enqueued_at, started_at, finished_at, runtime_ms,
                      updated_at, fingerprint
               FROM tasks {}) TO ? (FORMAT parquet, ROW_GROUP_SIZE 16384)",
        where_clause(&wheres)
    );
    params.push(DbValue::Text(out.to_string_lossy().into_owned()));
    let n = conn.execute(&sql, duckdb::params_from_iter(params))?;
    Ok(n as u64)
}

/// Writes the CSV of [`write_csv`] to `out`.
pub fn write_csv_file(
    conn: &Connection,
    query: &TaskQuery,
    out: &mut impl Write,
) -> Result<u64, StoreError> {
    let mut io_error = None;
    let n = write_csv(conn, query, |chunk| match out.write_all(&chunk) {
        Ok(()) => true,
        Err(e) => {
            io_error = Some(e);
            false
        }
    })?;
    match io_error {
        Some(e) => Err(StoreError::Io(e)),
        None => Ok(n),
    }
}

impl StoreReader {
    /// Streams the CSV of every task matching `query`'s filters into `tx`, chunk by chunk, on a
    /// blocking thread; the bounded channel is the back-pressure that keeps memory flat. Ends
    /// quietly when the receiver is dropped or takes no chunk for `send_timeout`; an error is
    /// sent as the last item.
    pub fn export_csv(
        &self,
        query: TaskQuery,
        tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, StoreError>>,
        send_timeout: std::time::Duration,
    ) {
        let reader = self.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            let err_tx = tx.clone();
            let result = reader
                .with_conn("export_csv", move |conn| {
                    write_csv(conn, &query, |chunk| {
                        // A client that takes nothing for `send_timeout` loses the export: it
                        // must not hold this thread and the read transaction forever.
                        let sent = runtime
                            .block_on(tokio::time::timeout(send_timeout, tx.send(Ok(chunk))));
                        match sent {
                            Ok(Ok(())) => true,
                            Ok(Err(_)) => false,
                            Err(_) => {
                                tracing::warn!(
                                    timeout = ?send_timeout,
                                    "CSV export abandoned: the client stopped reading."
                                );
                                false
                            }
                        }
                    })
                })
                .await;
            match result {
                Ok(rows) => tracing::debug!(rows, "CSV export finished."),
                Err(e) => {
                    tracing::error!(error = %e, "CSV export failed.");
                    let _ = err_tx.send(Err(e)).await;
                }
            }
        });
    }
}

/// Opens `path` read-only for a one-shot export (`taskscope export`), failing with a message
/// that says what to do when a running taskscope holds it.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            source: duckdb::Error::InvalidPath(path.to_path_buf()),
        });
    }
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    Connection::open_with_flags(path, config).map_err(|source| super::open_error(path, source))
}
