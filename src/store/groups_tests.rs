//! Failure groups in the store: counted per fingerprint from raw transitions, then from the
//! roll-ups once retention deleted the raw rows; `?fingerprint=` of the task list; quiet groups
//! with `state=all`.

use super::maintenance::{Period, Step};
use super::*;
use broker_adapters::{Broker, Observation, TaskEvent, TaskObservation};
use chrono::{DateTime, Duration, TimeZone, Utc};

fn at(mins: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + Duration::minutes(mins)
}

fn failed(id: &str, mins: i64, event: TaskEvent, error: &str) -> Vec<TaskObservation> {
    let mut queued = TaskObservation::new(Broker::Rq, id, at(mins), TaskEvent::Queued, "test");
    queued.fields.name = Some("billing.charge".into());
    queued.fields.queue = Some("default".into());
    let mut out = TaskObservation::new(Broker::Rq, id, at(mins), event, "test");
    out.fields.error = Some(error.into());
    out.fields.traceback = Some(format!(
        "Traceback (most recent call last):\n  File \"/srv/app/billing.py\", line 3, in charge\n    x\n{error}\n"
    ));
    vec![queued, out]
}

fn range(from_mins: i64, to_mins: i64) -> ReportRange {
    ReportRange {
        since: at(from_mins),
        until: at(to_mins),
        step_us: 3_600_000_000,
    }
}

async fn groups(reader: &StoreReader, r: ReportRange, state: GroupState) -> Vec<FailureGroup> {
    reader
        .failure_groups(r, ReportFilter::default(), state, 50)
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_group_by_fingerprint_and_their_counts_survive_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) =
        open(&dir.path().join("g.duckdb"), StoreOptions::default()).unwrap();
    let mut obs = Vec::new();
    obs.extend(failed(
        "a",
        1,
        TaskEvent::Failed,
        "ValueError: card declined 3",
    ));
    obs.extend(failed(
        "b",
        2,
        TaskEvent::Failed,
        "ValueError: card declined 41",
    ));
    obs.extend(failed(
        "c",
        3,
        TaskEvent::Retried,
        "ValueError: card declined 5",
    ));
    obs.extend(failed("d", 70, TaskEvent::Failed, "KeyError: 'account 7'"));
    writer
        .observe(obs.into_iter().map(Observation::Task).collect())
        .await
        .unwrap();
    writer.flush().await.unwrap();

    let check = |g: &[FailureGroup], samples: bool| {
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[0].exception.as_deref(), Some("ValueError"));
        assert_eq!(g[0].message, "card declined <n>");
        assert_eq!(g[0].count, 3, "two failures and a retry");
        assert_eq!(g[0].names, ["billing.charge"]);
        assert_eq!(g[0].brokers, [Broker::Rq]);
        assert_eq!(g[0].frames, ["app.billing:charge"]);
        assert_eq!(g[0].first_seen, Some(at(1)));
        assert_eq!(g[0].last_seen, Some(at(3)));
        assert_eq!(
            g[0].points,
            [(at(0), 3), (at(60), 0)],
            "dense hourly points"
        );
        assert_eq!(g[1].exception.as_deref(), Some("KeyError"));
        assert_eq!(g[1].message, "<str>");
        assert_eq!(g[1].count, 1);
        if samples {
            assert_eq!(g[0].sample_task_id.as_deref(), Some("c"), "the newest");
        } else {
            assert_eq!(g[0].sample_task_id, None, "no raw rows left");
        }
    };
    let raw = groups(&reader, range(0, 120), GroupState::Open).await;
    check(&raw, true);

    // `?fingerprint=`: the tasks of the group, the retried one included.
    let query = TaskQuery {
        fingerprint: Some(raw[0].fingerprint.clone()),
        limit: 10,
        ..TaskQuery::default()
    };
    let mut ids: Vec<String> = reader
        .list_tasks(&query)
        .await
        .unwrap()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);

    // A window after the first hour: only the KeyError is open; `all` lists the quiet one too.
    let later = groups(&reader, range(60, 120), GroupState::Open).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].exception.as_deref(), Some("KeyError"));
    let all = groups(&reader, range(60, 120), GroupState::All).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].exception.as_deref(), Some("ValueError"));
    assert_eq!(all[1].count, 0);

    // Roll up both hours, delete the raw history: the counts remain.
    writer
        .maintain(Step::Rollup {
            period: Period::Hour,
            until: at(180),
            max_periods: 10,
        })
        .await
        .unwrap();
    writer
        .maintain(Step::DeleteTransitions {
            from: at(-60),
            to: at(120),
        })
        .await
        .unwrap();
    writer
        .maintain(Step::DeleteTasks {
            from: at(-60),
            to: at(120),
        })
        .await
        .unwrap();
    writer.maintain(Step::SetRawFloor(at(120))).await.unwrap();
    let rolled = groups(&reader, range(0, 120), GroupState::Open).await;
    check(&rolled, false);

    drop(writer);
    handle.join().unwrap();
}

#[tokio::test]
async fn the_csv_export_ends_each_line_with_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) =
        open(&dir.path().join("csv.duckdb"), StoreOptions::default()).unwrap();
    let mut obs = failed("a", 1, TaskEvent::Failed, "ValueError: card declined 3");
    let mut ok = TaskObservation::new(Broker::Rq, "b", at(2), TaskEvent::Succeeded, "test");
    ok.fields.queue = Some("default".into());
    obs.push(ok);
    writer
        .observe(obs.into_iter().map(Observation::Task).collect())
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let fingerprint = reader
        .column_for_test("SELECT fingerprint FROM tasks WHERE id = 'a'")
        .await
        .remove(0);
    assert_eq!(fingerprint.len(), 16, "{fingerprint}");
    let csv = reader
        .with_conn("test", |conn| {
            let mut out = Vec::new();
            export::write_csv_file(conn, &TaskQuery::default(), &mut out)?;
            Ok(String::from_utf8(out).unwrap())
        })
        .await
        .unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",runtime_ms,updated_at,fingerprint"),
        "{csv}"
    );
    // The traceback spans lines inside its quoted field: the fingerprint ends the record.
    assert!(csv.contains(&format!(",\"{fingerprint}\"\n")), "{csv}");
    let of = |id: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("\"{id}\"")))
            .unwrap()
    };
    assert!(
        of("b").ends_with(','),
        "no fingerprint: an empty last field: {csv}"
    );
    drop(writer);
    drop(reader);
    handle.join().unwrap();
}
