//! The audit journal through the writer and the reader: ids, pages, filters, a task's entries,
//! and deletion only past `--audit-retention`.

use super::audit::*;
use super::maintenance::Step;
use super::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

fn at(days: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap() + Duration::days(days)
}

fn entry(day: i64, who: &str, action: &str, target: &str, new_task: Option<&str>) -> NewAuditEntry {
    NewAuditEntry {
        at: at(day),
        who: who.into(),
        action: action.into(),
        broker: Some("rq".into()),
        queue: Some("default".into()),
        target: Some(target.into()),
        arguments: Some(json!({"args": [1, 2]})),
        new_task_id: new_task.map(str::to_string),
        outcome: if who == "mallory" {
            AuditOutcome::Refused
        } else {
            AuditOutcome::Ok
        },
        error: (who == "mallory").then(|| "not allowed".to_string()),
        count: None,
    }
}

#[tokio::test]
async fn entries_are_numbered_paged_filtered_and_linked_to_their_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, handle) =
        open(&dir.path().join("a.duckdb"), StoreOptions::default()).unwrap();
    let first = writer
        .audit(entry(0, "alice", "run", "app.add", Some("t1")))
        .await
        .unwrap();
    assert_eq!(first.id, 1);
    writer
        .audit(entry(1, "bob", "retry", "t1", Some("t2")))
        .await
        .unwrap();
    writer
        .audit(entry(2, "mallory", "purge", "default", None))
        .await
        .unwrap();
    let page = reader
        .audit(&AuditQuery {
            limit: 2,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = page.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, [3, 2], "newest first");
    assert_eq!(page.next_cursor.as_deref(), Some("2"));
    let rest = reader
        .audit(&AuditQuery {
            limit: 2,
            before_id: Some(2),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.entries.len(), 1);
    assert_eq!(rest.entries[0], first);
    assert!(rest.next_cursor.is_none());
    let by = |q: AuditQuery| {
        let reader = reader.clone();
        async move {
            reader
                .audit(&AuditQuery { limit: 50, ..q })
                .await
                .unwrap()
                .entries
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(AuditQuery {
            who: Some("bob".into()),
            ..Default::default()
        })
        .await,
        [2]
    );
    assert_eq!(
        by(AuditQuery {
            action: Some("purge".into()),
            ..Default::default()
        })
        .await,
        [3]
    );
    assert_eq!(
        by(AuditQuery {
            since: Some(at(1)),
            ..Default::default()
        })
        .await,
        [3, 2]
    );
    assert_eq!(
        by(AuditQuery {
            until: Some(at(1)),
            ..Default::default()
        })
        .await,
        [1]
    );
    let refused = reader
        .audit(&AuditQuery {
            who: Some("mallory".into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refused.entries[0].outcome, AuditOutcome::Refused);
    assert_eq!(refused.entries[0].error.as_deref(), Some("not allowed"));
    // A retry shows on both tasks; the run on the task it created.
    let of = |id: &'static str| {
        let reader = reader.clone();
        async move {
            reader
                .audit_for_task(id)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(of("t1").await, [1, 2]);
    assert_eq!(of("t2").await, [2]);
    // Only entries older than the audit retention go.
    let deleted = writer
        .maintain(Step::DeleteAudit { before: at(1) })
        .await
        .unwrap();
    assert_eq!(deleted.rows, 1);
    assert_eq!(by(AuditQuery::default()).await, [3, 2]);
    drop(writer);
    drop(reader);
    handle.join().unwrap();
}
