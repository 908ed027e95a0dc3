//! The anchored chain: `recorded_at` is hashed, and checkpoints catch what a database writer
//! could otherwise hide (re-hashing, truncation, deletion); on both backends, tampering with
//! raw SQL.

use std::collections::BTreeSet;
use std::time::Duration;

use chronicle::bus::CommandBus;
use chronicle::store::chain::{ChainLink, GENESIS};
use chronicle::store::checkpoint::Recording;
use chronicle::store::{AggregateFilter, AuditKey, Backend as StoreBackend, Store};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestDb};
use crate::store::{no_snapshots, run, tamper, CounterCommand};

async fn keyed_store(db: &TestDb) -> Store {
    let store = db.store(no_snapshots()).await;
    store.set_audit_key(AuditKey::derive(b"test audit secret"));
    store
}

/// Five counters `a`…`e` with five events each.
async fn seed(store: &Store) -> CommandBus {
    let bus = CommandBus::new(store.clone());
    for id in ["a", "b", "c", "d", "e"] {
        for amount in 1..=5 {
            run(&bus, id, || CounterCommand::Add(amount)).await.unwrap();
        }
    }
    bus
}

fn findings(store_report: &chronicle::store::VerifyReport) -> BTreeSet<(String, i64, String)> {
    store_report
        .broken
        .iter()
        .map(|b| (b.aggregate_id.clone(), b.sequence, b.reason.clone()))
        .collect()
}

/// Rewrites counter `id` from `from` on with a new payload and recomputes every hash after
/// it, as a database writer who knows the formula would.
async fn rehash(store: &Store, id: &str, from: i64) {
    let history = store.history("counter", id).await.unwrap();
    let mut prev = if from == 1 {
        GENESIS.to_owned()
    } else {
        history[(from - 2) as usize]
            .metadata_str("hash")
            .unwrap()
            .to_owned()
    };
    for event in history.iter().filter(|e| e.sequence >= from) {
        let payload = json!({"amount": 1000});
        let mut metadata = event.metadata.clone();
        metadata["prev_hash"] = Value::String(prev.clone());
        let hash = ChainLink {
            prev_hash: &prev,
            aggregate_type: "counter",
            aggregate_id: id,
            sequence: event.sequence as u64,
            event_type: &event.event_type,
            event_version: &event.event_version,
            recorded_at: event.recorded_at,
            payload: &payload,
            metadata: &metadata,
        }
        .hash()
        .unwrap();
        metadata["hash"] = Value::String(hash.clone());
        let (payload, metadata) = (payload.to_string(), metadata.to_string());
        match store.backend() {
            StoreBackend::Postgres(pg) => {
                sqlx::query(
                    "UPDATE events SET payload = $1::json, metadata = $2::json
                      WHERE aggregate_id = $3 AND sequence = $4",
                )
                .bind(payload)
                .bind(metadata)
                .bind(id)
                .bind(event.sequence)
                .execute(pg.pool())
                .await
                .unwrap();
            }
            StoreBackend::Sqlite(lite) => {
                sqlx::query(
                    "UPDATE events SET payload = ?1, metadata = ?2
                      WHERE aggregate_id = ?3 AND sequence = ?4",
                )
                .bind(payload)
                .bind(metadata)
                .bind(id)
                .bind(event.sequence)
                .execute(lite.writer())
                .await
                .unwrap();
            }
        }
        prev = hash;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn verify_names_every_kind_of_tampering_against_the_checkpoint(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = keyed_store(&db).await;
    let bus = seed(&store).await;
    let checkpoint = store
        .record_checkpoint(Recording::Background)
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(checkpoint.count, 25);
    assert_eq!(checkpoint.chain_version, 2);
    // Appends after the checkpoint are fine: to a covered aggregate and to a new one.
    run(&bus, "a", || CounterCommand::Add(6)).await.unwrap();
    run(&bus, "f", || CounterCommand::Add(1)).await.unwrap();
    let intact = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(intact.ok, "{intact:?}");
    assert_eq!(intact.checked, 27);
    assert_eq!(intact.chain_version, Some(2));
    let check = intact
        .checkpoint
        .as_ref()
        .expect("checked against the checkpoint");
    assert_eq!(check.status, "ok");
    assert_eq!(check.root, checkpoint.root);

    tamper(
        &store,
        r#"UPDATE events SET payload = '{"amount": 999}' WHERE aggregate_id = 'a' AND sequence = 3"#,
        r#"UPDATE events SET payload = '{"amount": 999}' WHERE aggregate_id = 'a' AND sequence = 3"#,
    )
    .await;
    rehash(&store, "b", 2).await;
    tamper(
        &store,
        "UPDATE events SET recorded_at = recorded_at - interval '1 hour' WHERE aggregate_id = 'c' AND sequence = 4",
        "UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE aggregate_id = 'c' AND sequence = 4",
    )
    .await;
    let delete_last = "DELETE FROM events WHERE aggregate_id = 'd' AND sequence = 5";
    tamper(&store, delete_last, delete_last).await;
    let delete_all = "DELETE FROM events WHERE aggregate_id = 'e'";
    tamper(&store, delete_all, delete_all).await;

    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(!report.ok);
    let expected: BTreeSet<(String, i64, String)> = [
        ("a", 3, "hash mismatch"),
        ("b", 5, "head differs from checkpoint"),
        ("c", 4, "hash mismatch"),
        ("d", 5, "truncated since checkpoint"),
        ("e", 5, "missing since checkpoint"),
    ]
    .into_iter()
    .map(|(id, sequence, reason)| (id.to_owned(), sequence, reason.to_owned()))
    .collect();
    assert_eq!(findings(&report), expected, "{report:?}");
    // The re-hashed chain holds on its own: only the checkpoint catches it.
    assert!(!report
        .broken
        .iter()
        .any(|b| b.aggregate_id == "b" && b.reason.contains("mismatch")));

    // A filter checks only the heads it covers.
    let only_e = store
        .verify(&AggregateFilter {
            aggregate_type: Some("counter".into()),
            aggregate_id: Some("e".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        findings(&only_e),
        BTreeSet::from([("e".to_owned(), 5, "missing since checkpoint".to_owned())])
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_forged_checkpoint_is_named(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = keyed_store(&db).await;
    seed(&store).await;
    store
        .record_checkpoint(Recording::Background)
        .await
        .unwrap()
        .expect("a checkpoint");
    assert!(store.verify(&AggregateFilter::default()).await.unwrap().ok);

    // Heads rewritten to match a cut-short aggregate, the root left alone: the MAC'd root
    // no longer matches them.
    let heads = "UPDATE chain_checkpoint_heads SET sequence = 4 WHERE aggregate_id = 'd'";
    tamper(&store, heads, heads).await;
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(!report.ok);
    assert_eq!(
        report.checkpoint.as_ref().unwrap().status,
        "heads do not match the root"
    );

    // A new root without the key: the MAC does not hold.
    let forged = "UPDATE chain_checkpoints SET root = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'";
    tamper(&store, forged, forged).await;
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(!report.ok);
    assert!(report.broken.is_empty());
    assert_eq!(report.checkpoint.as_ref().unwrap().status, "mac mismatch");

    // A store opened with another key does not accept the checkpoint either.
    let other = db.store(no_snapshots()).await;
    other.set_audit_key(AuditKey::derive(b"another secret"));
    let fresh = other
        .record_checkpoint(Recording::Background)
        .await
        .unwrap();
    assert!(fresh.is_some());
    assert!(other.verify(&AggregateFilter::default()).await.unwrap().ok);
    let mine = keyed_store(&db).await;
    let report = mine.verify(&AggregateFilter::default()).await.unwrap();
    assert_eq!(report.checkpoint.as_ref().unwrap().status, "mac mismatch");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_published_checkpoint_is_checked_even_without_stored_heads(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = keyed_store(&db).await;
    let bus = seed(&store).await;
    let published = store
        .record_checkpoint(Recording::Published)
        .await
        .unwrap()
        .expect("a checkpoint");
    let line = serde_json::to_string(&published).unwrap();
    let published: chronicle::store::Checkpoint = serde_json::from_str(&line).unwrap();
    for amount in 1..=3 {
        run(&bus, "a", || CounterCommand::Add(amount))
            .await
            .unwrap();
    }
    // Later checkpoints do not drop a published one's heads.
    store
        .record_checkpoint(Recording::Background)
        .await
        .unwrap();
    let report = store
        .verify_against(&AggregateFilter::default(), &published)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");

    // With its heads gone, the published root is recomputed from the store.
    let drop_heads = "DELETE FROM chain_checkpoint_heads";
    tamper(&store, drop_heads, drop_heads).await;
    let report = store
        .verify_against(&AggregateFilter::default(), &published)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoint.as_ref().unwrap().status, "ok");

    let delete_last = "DELETE FROM events WHERE aggregate_id = 'd' AND sequence = 5";
    tamper(&store, delete_last, delete_last).await;
    let report = store
        .verify_against(&AggregateFilter::default(), &published)
        .await
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.checkpoint.as_ref().unwrap().status, "root mismatch");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn recorded_at_is_the_hashed_time_at_microseconds(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = keyed_store(&db).await;
    seed(&store).await;
    let history = store.history("counter", "a").await.unwrap();
    for event in &history {
        assert_eq!(event.recorded_at.timestamp_subsec_nanos() % 1_000, 0);
    }
    // Commits in order: their times never go back.
    assert!(history
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
    // Every link recomputes from the stored recorded_at (and a second later does not).
    assert!(store.verify(&AggregateFilter::default()).await.unwrap().ok);
    let event = &history[0];
    let link = |recorded_at| ChainLink {
        prev_hash: GENESIS,
        aggregate_type: "counter",
        aggregate_id: "a",
        sequence: 1,
        event_type: &event.event_type,
        event_version: &event.event_version,
        recorded_at,
        payload: &event.payload,
        metadata: &event.metadata,
    };
    assert_eq!(
        link(event.recorded_at).hash().unwrap(),
        event.metadata_str("hash").unwrap()
    );
    assert_ne!(
        link(event.recorded_at + chrono::Duration::seconds(1))
            .hash()
            .unwrap(),
        event.metadata_str("hash").unwrap()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_server_records_checkpoints_and_shows_the_latest_to_auditors(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| settings.audit.checkpoint_every = 1).await;
    let admin = app.register_user().await;
    let user = app.register_user().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let checkpoint: Value = loop {
        let response = admin
            .client
            .get(app.url("/api/audit/checkpoint"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break response.json().await.unwrap();
        }
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for key in ["position", "count", "root", "mac", "created_at"] {
        assert!(!checkpoint[key].is_null(), "checkpoint.{key}: {checkpoint}");
    }
    assert!(checkpoint["count"].as_i64().unwrap() >= 1);
    let response = user
        .client
        .get(app.url("/api/audit/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = reqwest::get(app.url("/api/audit/checkpoint"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
