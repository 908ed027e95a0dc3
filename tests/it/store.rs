//! The store conformance suite: every case runs on SQLite and on PostgreSQL, each in its
//! own fresh database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronicle::bus::{CommandBus, CommandContext, CommandError};
use chronicle::store::{
    AggregateFilter, Backend as StoreBackend, FeedCursor, Store, StoreError, StoreOptions,
};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SemanticVersionEventUpcaster;
use cqrs_es::{Aggregate, DomainEvent};
use rand::Rng;
use rstest::rstest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::helpers::{Backend, TestDb};

/// A minimal aggregate for exercising the store: a counter with a name.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counter {
    name: String,
    value: i64,
    applied: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum CounterEvent {
    #[serde(rename = "Added")]
    Added(Added),
    #[serde(rename = "Named")]
    Named(Named),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Added {
    amount: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Named {
    name: String,
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Added(_) => "Added".into(),
            Self::Named(_) => "Named".into(),
        }
    }
    fn event_version(&self) -> String {
        match self {
            Self::Added(_) => "1.0".into(),
            Self::Named(_) => "2.0".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("refused")]
pub(crate) struct Refused;

pub(crate) enum CounterCommand {
    Add(i64),
    AddMany(Vec<i64>),
}

impl chronicle_aggregates::CommandName for CounterCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Add(_) => "Add",
            Self::AddMany(_) => "AddMany",
        }
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = Refused;
    type Services = ();

    async fn handle(
        &mut self,
        command: CounterCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Refused> {
        match command {
            CounterCommand::Add(0) => return Err(Refused),
            CounterCommand::Add(amount) => {
                sink.write(CounterEvent::Added(Added { amount }), self)
                    .await
            }
            CounterCommand::AddMany(amounts) => {
                for amount in amounts {
                    sink.write(CounterEvent::Added(Added { amount }), self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        self.applied += 1;
        match event {
            CounterEvent::Added(added) => self.value += added.amount,
            CounterEvent::Named(named) => self.name = named.name,
        }
    }
}

fn context() -> CommandContext {
    CommandContext {
        actor: "user:test".into(),
        correlation_id: "corr-1".into(),
        causation_id: Some("cause-1".into()),
        request_id: Some("req-1".into()),
        idempotency_key: Some("idem-1".into()),
        ..CommandContext::default()
    }
}

pub(crate) async fn run(
    bus: &CommandBus,
    id: &str,
    command: impl Fn() -> CounterCommand,
) -> Result<usize, CommandError<Refused>> {
    bus.execute::<Counter, CommandError<Refused>>(id, &context(), None, |_| Ok(command()))
        .await
        .map(|committed| committed.version)
}

pub(crate) fn no_snapshots() -> StoreOptions {
    StoreOptions {
        snapshot_every: 0,
        max_connections: 16,
        ..StoreOptions::default()
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn append_then_load_round_trips(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let bus = CommandBus::new(store.clone());
    assert_eq!(run(&bus, "c1", || CounterCommand::Add(2)).await.unwrap(), 1);
    assert_eq!(
        run(&bus, "c1", || CounterCommand::AddMany(vec![3, 4]))
            .await
            .unwrap(),
        3
    );
    run(&bus, "c2", || CounterCommand::Add(10)).await.unwrap();

    let loaded = store.aggregate::<Counter>().load("c1").await.unwrap();
    assert_eq!(loaded.version, 3);
    assert_eq!(loaded.aggregate.value, 9);

    let history = store.history("counter", "c1").await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(
        history.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let first = &history[0];
    assert_eq!(first.event_type, "Added");
    assert_eq!(first.event_version, "1.0");
    assert_eq!(first.payload, json!({"amount": 2}));
    for key in [
        "actor",
        "correlation_id",
        "causation_id",
        "request_id",
        "idempotency_key",
    ] {
        assert!(first.metadata_str(key).is_some(), "metadata.{key} missing");
    }
    assert_eq!(first.metadata_str("actor"), Some("user:test"));
    assert!(history.windows(2).all(|w| w[0].position < w[1].position));

    // A refused command appends nothing.
    assert!(matches!(
        run(&bus, "c1", || CounterCommand::Add(0)).await,
        Err(CommandError::Refused(Refused))
    ));
    assert_eq!(store.history("counter", "c1").await.unwrap().len(), 3);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_stale_version_is_a_typed_conflict(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let counters = store.aggregate::<Counter>();
    let bus = CommandBus::new(store.clone());
    run(&bus, "c", || CounterCommand::Add(1)).await.unwrap();

    let first = counters.load("c").await.unwrap();
    let second = counters.load("c").await.unwrap();
    let event = || vec![CounterEvent::Added(Added { amount: 1 })];
    counters
        .append(event(), first, &HashMap::new())
        .await
        .unwrap();
    let lost = counters.append(event(), second, &HashMap::new()).await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    assert_eq!(store.history("counter", "c").await.unwrap().len(), 2);

    // A stale append of several events where only the first collides leaves none behind.
    let first = counters.load("c").await.unwrap();
    let second = counters.load("c").await.unwrap();
    counters
        .append(event(), first, &HashMap::new())
        .await
        .unwrap();
    let many = vec![
        CounterEvent::Added(Added { amount: 5 }),
        CounterEvent::Added(Added { amount: 6 }),
        CounterEvent::Added(Added { amount: 7 }),
    ];
    let lost = counters.append(many, second, &HashMap::new()).await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    let history = store.history("counter", "c").await.unwrap();
    assert_eq!(
        history.len(),
        3,
        "no orphan events after a lost multi-event append"
    );
    assert!(store.verify(&AggregateFilter::default()).await.unwrap().ok);

    // `create` assumes a fresh id; on an existing one the append conflicts and the command
    // runs again on the loaded state instead of forking the history.
    let created = bus
        .create::<Counter, CommandError<Refused>>("c", &context(), |_| Ok(CounterCommand::Add(0)))
        .await;
    assert!(
        matches!(created, Err(CommandError::Refused(Refused))),
        "decided on loaded state"
    );
    let created = bus
        .create::<Counter, CommandError<Refused>>("c", &context(), |counter| {
            Ok(CounterCommand::Add(if counter.value == 3 { 1 } else { 0 }))
        })
        .await
        .unwrap();
    assert_eq!(created.version, 4);
    assert_eq!(store.history("counter", "c").await.unwrap().len(), 4);

    // Through the bus, racing commands are retried on fresh state: all of them land.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { run(&bus, "c", || CounterCommand::Add(1)).await })
        })
        .collect();
    let mut landed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => landed += 1,
            Err(CommandError::Conflict) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let loaded = counters.load("c").await.unwrap();
    assert_eq!(loaded.aggregate.value, 4 + landed);
    assert_eq!(loaded.version as i64, 4 + landed);
    assert!(store.verify(&AggregateFilter::default()).await.unwrap().ok);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn snapshot_then_load_equals_full_replay(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let with_snapshots = db
        .store(StoreOptions {
            snapshot_every: 3,
            max_connections: 4,
            ..StoreOptions::default()
        })
        .await;
    let bus = CommandBus::new(with_snapshots.clone());
    for amount in 1..=10 {
        run(&bus, "s", || CounterCommand::Add(amount))
            .await
            .unwrap();
    }
    run(&bus, "s", || {
        CounterCommand::AddMany(vec![100, 200, 300, 400])
    })
    .await
    .unwrap();
    let from_snapshot = with_snapshots
        .aggregate::<Counter>()
        .load("s")
        .await
        .unwrap();

    let replay_only = db.store(no_snapshots()).await;
    let replayed = replay_only.aggregate::<Counter>().load("s").await.unwrap();
    assert_eq!(from_snapshot.version, 14);
    assert_eq!(from_snapshot.version, replayed.version);
    assert_eq!(from_snapshot.aggregate.value, replayed.aggregate.value);
    assert_eq!(replayed.aggregate.value, 55 + 1000);
    // The snapshot was used: fewer events were applied than the aggregate has.
    assert!(from_snapshot.aggregate.applied >= replayed.aggregate.applied);

    // The chain continues across a snapshot boundary.
    run(&bus, "s", || CounterCommand::Add(1)).await.unwrap();
    let report = with_snapshots
        .verify(&AggregateFilter::default())
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked, 15);
}

pub(crate) async fn tamper(store: &Store, sql_pg: &str, sql_lite: &str) {
    match store.backend() {
        StoreBackend::Postgres(pg) => {
            sqlx::query(sql_pg).execute(pg.pool()).await.unwrap();
        }
        StoreBackend::Sqlite(lite) => {
            sqlx::query(sql_lite).execute(lite.writer()).await.unwrap();
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn verify_names_the_altered_event(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let bus = CommandBus::new(store.clone());
    for id in ["a", "b"] {
        for amount in 1..=5 {
            run(&bus, id, || CounterCommand::Add(amount)).await.unwrap();
        }
    }
    let intact = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(intact.ok);
    assert_eq!(intact.checked, 10);
    let history = store.history("counter", "a").await.unwrap();
    assert_eq!(
        history[0].metadata_str("prev_hash"),
        Some(chronicle::store::chain::GENESIS)
    );
    assert_eq!(
        history[1].metadata_str("prev_hash"),
        history[0].metadata_str("hash")
    );

    tamper(
        &store,
        r#"UPDATE events SET payload = '{"amount": 999}' WHERE aggregate_id = 'b' AND sequence = 3"#,
        r#"UPDATE events SET payload = '{"amount": 999}' WHERE aggregate_id = 'b' AND sequence = 3"#,
    )
    .await;
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.checked, 10);
    assert_eq!(report.broken.len(), 1);
    let broken = &report.broken[0];
    assert_eq!(
        (
            broken.aggregate_type.as_str(),
            broken.aggregate_id.as_str(),
            broken.sequence
        ),
        ("counter", "b", 3)
    );
    assert_eq!(broken.reason, "hash mismatch");

    // Rewriting the actor is caught too: the metadata is part of the chain.
    tamper(
        &store,
        r#"UPDATE events SET metadata = jsonb_set(metadata::jsonb, '{actor}', '"user:mallory"')::json WHERE aggregate_id = 'a' AND sequence = 2"#,
        r#"UPDATE events SET metadata = json_set(metadata, '$.actor', 'user:mallory') WHERE aggregate_id = 'a' AND sequence = 2"#,
    )
    .await;
    let filtered = store
        .verify(&AggregateFilter {
            aggregate_type: Some("counter".into()),
            aggregate_id: Some("a".into()),
        })
        .await
        .unwrap();
    assert_eq!(filtered.checked, 5);
    assert_eq!(filtered.broken.len(), 1);
    assert_eq!(filtered.broken[0].sequence, 2);

    // Deleting an event breaks the chain at the gap.
    tamper(
        &store,
        "DELETE FROM events WHERE aggregate_id = 'b' AND sequence = 5",
        "DELETE FROM events WHERE aggregate_id = 'b' AND sequence = 5",
    )
    .await;
    tamper(
        &store,
        "DELETE FROM events WHERE aggregate_id = 'a' AND sequence = 4",
        "DELETE FROM events WHERE aggregate_id = 'a' AND sequence = 4",
    )
    .await;
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert_eq!(report.broken.len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn old_event_versions_are_upcast_on_load(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    // A "Named" event as version 1.0 wrote it: the name was called `label`.
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('counter', 'old', 1, 'Named', '1.0', '{\"label\": \"legacy\"}', '{}')";
    tamper(&store, insert, insert).await;
    let plain = store.aggregate::<Counter>().load("old").await;
    assert!(plain.is_err(), "a 1.0 payload must not decode as 2.0");

    let upcaster = SemanticVersionEventUpcaster::new(
        "Named",
        "2.0",
        Box::new(|mut payload| {
            if let Some(label) = payload.as_object_mut().and_then(|map| map.remove("label")) {
                payload["name"] = label;
            }
            payload
        }),
    );
    let store = store
        .with_upcasters(vec![Box::new(upcaster)])
        .unwrap_or_else(|_| panic!("store is not shared"));
    let loaded = store.aggregate::<Counter>().load("old").await.unwrap();
    assert_eq!(loaded.aggregate.name, "legacy");
    // Stored events are never rewritten.
    let history = store.history("counter", "old").await.unwrap();
    assert_eq!(history[0].event_version, "1.0");
}

const WRITERS: usize = 8;
const EVENTS_PER_WRITER: usize = 2_000;

/// Appends `EVENTS_PER_WRITER` events in transactions of 1–4 events, sleeping at random
/// inside each transaction so that commits land out of insertion order.
async fn slow_writer(store: Store, writer: usize) {
    let mut written = 0;
    let mut sequence = 0i64;
    let aggregate_id = format!("writer-{writer}");
    while written < EVENTS_PER_WRITER {
        let batch = rand::rng()
            .random_range(1..=4)
            .min(EVENTS_PER_WRITER - written);
        let sleeps: Vec<u64> = (0..batch + 1)
            .map(|_| rand::rng().random_range(0..=2))
            .collect();
        macro_rules! write_batch {
            ($pool:expr, $sql:literal) => {{
                let mut tx = $pool.begin().await.unwrap();
                for index in 0..batch {
                    sequence += 1;
                    sqlx::query($sql)
                        .bind(&aggregate_id)
                        .bind(sequence)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(sleeps[index])).await;
                }
                tokio::time::sleep(Duration::from_millis(sleeps[batch])).await;
                tx.commit().await.unwrap();
            }};
        }
        match store.backend() {
            StoreBackend::Postgres(pg) => write_batch!(
                pg.pool(),
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('feed', $1, $2, 'Tick', '1.0', '{}', '{}')"
            ),
            StoreBackend::Sqlite(lite) => write_batch!(
                lite.writer(),
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('feed', ?1, ?2, 'Tick', '1.0', '{}', '{}')"
            ),
        }
        written += batch;
    }
}

/// Many writers whose transactions commit out of order, one reader paging the feed: every
/// event is seen exactly once. Fails if the feed pages by `position > last` alone.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_never_skips_an_event_under_concurrent_appends(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db
        .store(StoreOptions {
            snapshot_every: 0,
            max_connections: WRITERS as u32 + 4,
            ..StoreOptions::default()
        })
        .await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: HashSet<(String, i64)> = HashSet::new();
            let mut duplicates = 0;
            let mut cursor = FeedCursor::default();
            let filter = AggregateFilter::default();
            // Other transactions on the cluster (other databases too) hold the horizon back,
            // so an empty page says nothing: stop once everything arrived and a few more
            // pages brought no duplicate, or after a long time without progress.
            let expected = WRITERS * EVENTS_PER_WRITER;
            let mut last_progress = std::time::Instant::now();
            let mut rounds_after_complete = 0;
            loop {
                let page = store.feed(cursor, 100, &filter).await.unwrap();
                if let Some(last) = page.last() {
                    assert!(last.cursor() > cursor, "the feed must move forward");
                    cursor = last.cursor();
                    last_progress = std::time::Instant::now();
                }
                for event in &page {
                    if !seen.insert((event.aggregate_id.clone(), event.sequence)) {
                        duplicates += 1;
                    }
                }
                if seen.len() >= expected && done.load(Ordering::Acquire) {
                    rounds_after_complete += 1;
                    if rounds_after_complete >= 5 {
                        break;
                    }
                }
                if last_progress.elapsed() > Duration::from_secs(20) {
                    break;
                }
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (seen.len(), duplicates)
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| tokio::spawn(slow_writer(store.clone(), writer)))
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let (seen, duplicates) = reader.await.unwrap();
    assert_eq!(duplicates, 0, "an event was delivered twice");
    assert_eq!(seen, WRITERS * EVENTS_PER_WRITER, "the feed skipped events");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_feed_resumes_after_a_position(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let bus = CommandBus::new(store.clone());
    for id in ["x", "y", "z"] {
        run(&bus, id, || CounterCommand::AddMany(vec![1, 2]))
            .await
            .unwrap();
    }
    // Other tests' transactions on the cluster may hold the horizon back for a moment.
    let watermark = store.feed_watermark().await.unwrap();
    while !store.feed_reached(watermark).await.unwrap() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let all = store
        .feed(FeedCursor::default(), 100, &AggregateFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let third = all[2].position;
    let cursor = store.cursor_after(third).await.unwrap().unwrap();
    let rest = store
        .feed(cursor, 100, &AggregateFilter::default())
        .await
        .unwrap();
    assert_eq!(rest, all[3..].to_vec());
    let only_y = store
        .feed(
            FeedCursor::default(),
            100,
            &AggregateFilter {
                aggregate_type: Some("counter".into()),
                aggregate_id: Some("y".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(only_y.len(), 2);
    assert!(store.cursor_after(999_999).await.unwrap().is_none() || backend == Backend::Sqlite);
}

/// Each node keeps the aggregates it wrote last and decides its next command on them
/// without a load (`src/store/recent.rs`). Two stores on one database are two nodes: what
/// one knows goes stale when the other writes, and that must cost a reload, never a wrong
/// version, a wrong refusal, a failed precondition or a broken chain.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_stale_recent_aggregate_costs_a_reload_not_a_wrong_answer(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let (node_a, node_b) = (
        db.store(no_snapshots()).await,
        db.store(no_snapshots()).await,
    );
    let (bus_a, bus_b) = (CommandBus::new(node_a.clone()), CommandBus::new(node_b));
    let id = "counter-recent";
    assert_eq!(run(&bus_a, id, || CounterCommand::Add(1)).await.unwrap(), 1);
    assert_eq!(
        run(&bus_b, id, || CounterCommand::Add(10)).await.unwrap(),
        2
    );
    // A still holds version 1: the append at 2 conflicts, A reloads and appends at 3.
    let committed = bus_a
        .execute::<Counter, CommandError<Refused>>(id, &context(), None, |_| {
            Ok(CounterCommand::Add(100))
        })
        .await
        .unwrap();
    assert_eq!((committed.version, committed.aggregate.value), (3, 111));

    // A decision that depends on the state: A's guess (111) would refuse it, the truth
    // (116) allows it.
    assert_eq!(run(&bus_b, id, || CounterCommand::Add(5)).await.unwrap(), 4);
    let committed = bus_a
        .execute::<Counter, CommandError<Refused>>(id, &context(), None, |counter| {
            if counter.value == 116 {
                Ok(CounterCommand::Add(1))
            } else {
                Err(CommandError::Refused(Refused))
            }
        })
        .await
        .unwrap();
    assert_eq!((committed.version, committed.aggregate.value), (5, 117));

    // A precondition on the version: A's guess is 5, the store is at 6.
    assert_eq!(run(&bus_b, id, || CounterCommand::Add(1)).await.unwrap(), 6);
    let committed = bus_a
        .execute::<Counter, CommandError<Refused>>(id, &context(), Some(6), |_| {
            Ok(CounterCommand::Add(1))
        })
        .await
        .unwrap();
    assert_eq!((committed.version, committed.aggregate.value), (7, 119));
    // And a precondition that really fails still fails, naming the true version.
    let stale = bus_a
        .execute::<Counter, CommandError<Refused>>(id, &context(), Some(3), |_| {
            Ok(CounterCommand::Add(1))
        })
        .await;
    assert!(
        matches!(
            stale,
            Err(CommandError::PreconditionFailed {
                expected: 3,
                current: 7
            })
        ),
        "{:?}",
        stale.map(|committed| committed.version)
    );
    // A refusal of the true state is still a refusal.
    assert!(matches!(
        run(&bus_a, id, || CounterCommand::Add(0)).await,
        Err(CommandError::Refused(Refused))
    ));

    let loaded = node_a.aggregate::<Counter>().load(id).await.unwrap();
    assert_eq!((loaded.version, loaded.aggregate.value), (7, 119));
    assert!(node_a.verify(&AggregateFilter::default()).await.unwrap().ok);
}

/// Group commit: many tasks appending at once all land — each counter whole, a shared one
/// raced through the bus's retries — the feed yields every event once, in position order,
/// and every chain verifies.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_many_tasks_all_land(#[case] backend: Backend) {
    const TASKS: usize = 32;
    const EACH: usize = 10;
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let bus = CommandBus::new(store.clone());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut shared = 0;
                for _ in 0..EACH {
                    run(&bus, &format!("many-{task}"), || CounterCommand::Add(1))
                        .await
                        .unwrap();
                    match run(&bus, "shared", || CounterCommand::Add(1)).await {
                        Ok(_) => shared += 1,
                        Err(CommandError::Conflict) => {}
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                shared
            })
        })
        .collect();
    let mut shared = 0;
    for task in tasks {
        shared += task.await.unwrap();
    }
    let counters = store.aggregate::<Counter>();
    for task in 0..TASKS {
        let loaded = counters.load(&format!("many-{task}")).await.unwrap();
        assert_eq!(
            (loaded.version, loaded.aggregate.value),
            (EACH, EACH as i64)
        );
    }
    let loaded = counters.load("shared").await.unwrap();
    assert!(shared > 0);
    assert_eq!(
        (loaded.version, loaded.aggregate.value),
        (shared, shared as i64)
    );

    let expected = TASKS * EACH + shared;
    // Transactions of other tests on the PostgreSQL cluster may hold the feed's horizon
    // back for a moment: wait until it has passed everything written above.
    let watermark = store.feed_watermark().await.unwrap();
    while !store.feed_reached(watermark).await.unwrap() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut seen = HashSet::new();
    let mut cursor = FeedCursor::default();
    let mut last_position = 0;
    loop {
        let page = store
            .feed(cursor, 100, &AggregateFilter::default())
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.cursor();
        for event in &page {
            assert!(seen.insert((event.aggregate_id.clone(), event.sequence)));
            if backend == Backend::Sqlite {
                assert!(
                    event.position > last_position,
                    "position order is feed order"
                );
                last_position = event.position;
            }
        }
    }
    assert_eq!(seen.len(), expected);
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(report.ok, "{:?}", report.broken);
    assert_eq!(report.checked as usize, expected);
}

/// Commands committed in one transaction still answer alone: of two appends at the same
/// version of one aggregate, one lands and the other is a conflict that leaves nothing
/// behind; the batch's other commands land. On SQLite the writer connection is held while
/// they queue, so all of them are in one transaction (one commit).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_conflict_in_a_batch_fails_only_that_command(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store(no_snapshots()).await;
    let bus = CommandBus::new(store.clone());
    for id in ["x", "y", "z"] {
        run(&bus, id, || CounterCommand::Add(1)).await.unwrap();
    }
    let counters = store.aggregate::<Counter>();
    let (x1, x2) = (
        counters.load("x").await.unwrap(),
        counters.load("x").await.unwrap(),
    );
    let (y, z) = (
        counters.load("y").await.unwrap(),
        counters.load("z").await.unwrap(),
    );
    let held = match store.backend() {
        StoreBackend::Sqlite(lite) => Some((
            lite.writer().acquire().await.unwrap(),
            lite.appends_submitted(),
            lite.commits(),
        )),
        StoreBackend::Postgres(_) => None,
    };
    let append = |events: Vec<i64>, loaded| {
        let counters = store.aggregate::<Counter>();
        tokio::spawn(async move {
            let events = events
                .into_iter()
                .map(|amount| CounterEvent::Added(Added { amount }))
                .collect();
            counters
                .append(events, loaded, &HashMap::new())
                .await
                .map(|(_, loaded)| loaded.version)
        })
    };
    let appends = [
        append(vec![10], x1),
        append(vec![20, 30], x2),
        append(vec![2], y),
        append(vec![3, 4, 5], z),
    ];
    if let (Some((connection, submitted, commits)), StoreBackend::Sqlite(lite)) =
        (held, store.backend())
    {
        while lite.appends_submitted() < submitted + 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(connection);
        let mut outcomes = Vec::new();
        for append in appends {
            outcomes.push(append.await.unwrap());
        }
        assert_eq!(
            lite.commits(),
            commits + 1,
            "the four appends shared one commit"
        );
        check_batch_outcomes(&store, outcomes).await;
    } else {
        let mut outcomes = Vec::new();
        for append in appends {
            outcomes.push(append.await.unwrap());
        }
        check_batch_outcomes(&store, outcomes).await;
    }
}

async fn check_batch_outcomes(store: &Store, outcomes: Vec<Result<usize, StoreError>>) {
    let counters = store.aggregate::<Counter>();
    let x = counters.load("x").await.unwrap();
    match (&outcomes[0], &outcomes[1]) {
        (Ok(2), Err(StoreError::Conflict)) => assert_eq!(x.aggregate.value, 11),
        (Err(StoreError::Conflict), Ok(3)) => assert_eq!(x.aggregate.value, 51),
        other => panic!("one of the two appends at version 1 must win: {other:?}"),
    }
    assert_eq!(
        store.history("counter", "x").await.unwrap().len(),
        x.version
    );
    assert!(matches!(outcomes[2], Ok(2)), "{:?}", outcomes[2]);
    assert!(matches!(outcomes[3], Ok(4)), "{:?}", outcomes[3]);
    assert_eq!(counters.load("y").await.unwrap().aggregate.value, 3);
    assert_eq!(counters.load("z").await.unwrap().aggregate.value, 13);
    let report = store.verify(&AggregateFilter::default()).await.unwrap();
    assert!(report.ok, "{:?}", report.broken);
}
