//! `taskscope export`: every task matching the task-list filters, from a history file, as CSV
//! or Parquet, without a running server.
//!
//! The file is opened read-only. DuckDB lets only one process open a file that a writer holds,
//! so while `taskscope serve` runs on it, use its `GET /export.csv` instead (same filters).

use crate::http::query::TaskFilterParams;
use crate::store;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// The output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

/// `taskscope export`: the filters are those of `/api/tasks`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The DuckDB history file to read.
    #[arg(
        long,
        env = "TASKSCOPE_DB",
        default_value = "./taskscope.duckdb",
        value_name = "PATH"
    )]
    pub db: PathBuf,
    /// `csv` (with a header row) or `parquet`.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Where to write; `-` is standard output (CSV only).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Broker or comma list (`celery,dramatiq`).
    #[arg(long)]
    pub broker: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    /// Task name, exactly.
    #[arg(long)]
    pub name: Option<String>,
    /// State or comma list (`failure,retried`).
    #[arg(long)]
    pub state: Option<String>,
    /// Case-insensitive substring of the id, name or arguments.
    #[arg(long)]
    pub q: Option<String>,
    /// Last activity at or after: RFC 3339, or a duration ago (`7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Last activity before: RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
}

/// Why an export failed: bad usage (exit 2) or anything else (exit 1).
#[derive(Debug)]
pub enum ExportError {
    Usage(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ExportError {
    fn from(e: anyhow::Error) -> Self {
        ExportError::Other(e)
    }
}

/// Runs the export; returns how many tasks were written.
pub fn run(args: ExportArgs) -> Result<u64, ExportError> {
    let params = TaskFilterParams {
        broker: args.broker,
        queue: args.queue,
        name: args.name,
        state: args.state,
        q: args.q,
        since: args.since,
        until: args.until,
        ..TaskFilterParams::default()
    };
    let query = params
        .to_query(chrono::Utc::now())
        .map_err(|e| ExportError::Usage(e.message))?;
    let to_stdout = args.out.as_os_str() == "-";
    if to_stdout && args.format == Format::Parquet {
        return Err(ExportError::Usage(
            "--format parquet needs a file: pass --out FILE".into(),
        ));
    }
    let conn = store::open_read_only(&args.db).map_err(|e| match e {
        store::StoreError::Locked { .. } => ExportError::Other(anyhow::anyhow!(
            "{e}; while taskscope serve runs on it, download GET /export.csv from the server instead"
        )),
        other => ExportError::Other(anyhow::Error::new(other)),
    })?;
    let n = match args.format {
        Format::Parquet => store::export_parquet(&conn, &query, &args.out)
            .with_context(|| format!("cannot write {}", args.out.display()))?,
        Format::Csv if to_stdout => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n =
                store::export_csv_to(&conn, &query, &mut out).context("cannot write the CSV")?;
            out.flush().context("cannot write the CSV")?;
            n
        }
        Format::Csv => {
            let file = std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
            let n = store::export_csv_to(&conn, &query, &mut out)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            out.flush()
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            n
        }
    };
    Ok(n)
}
