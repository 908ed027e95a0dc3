//! The command bus: load an aggregate, let it decide, append its events — retrying a lost
//! optimistic-concurrency race a bounded number of times with fresh state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chronicle_aggregates::CommandName;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, EventEnvelope};
use rand::Rng;

use crate::meters;
use crate::store::aggregate_store::{AggregateStore, Loaded};
use crate::store::{LeaseSlot, Store, StoreError};

/// How often a command is tried against fresh state before a conflict is reported.
const MAX_ATTEMPTS: u32 = 5;

/// Where a command came from; becomes the metadata of every event it produces.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// `user:<id>`, `agent:<id>` or `system:…`.
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// The commits of the request this command belongs to, when it carries an
    /// `Idempotency-Key` (see [`CommitLog`]).
    pub commit_log: Option<CommitLog>,
}

/// One aggregate a request changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitRef {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

#[derive(Debug, Default)]
struct CommitLogInner {
    committed: Vec<CommitRef>,
    replay: VecDeque<CommitRef>,
}

/// What an idempotent request has committed, so that its key outlives a failure after the
/// commit; and, for a repeat of such a request, the commits to answer from instead of
/// deciding again: the next command on an aggregate type of `replay` takes that aggregate
/// as it stands, with no new events.
#[derive(Debug, Clone, Default)]
pub struct CommitLog(Arc<Mutex<CommitLogInner>>);

impl CommitLog {
    /// A log for a repeat of a request that committed `replay` before it failed.
    pub fn replaying(replay: Vec<CommitRef>) -> Self {
        let log = Self::default();
        log.lock().replay = replay.into();
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CommitLogInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every aggregate changed so far (replayed ones included).
    pub fn committed(&self) -> Vec<CommitRef> {
        self.lock().committed.clone()
    }

    fn record(&self, aggregate_type: &str, aggregate_id: &str) {
        self.lock().committed.push(CommitRef {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
        });
    }

    /// The ids of the commits of `aggregate_type` still to replay.
    pub fn pending(&self, aggregate_type: &str) -> Vec<String> {
        self.lock()
            .replay
            .iter()
            .filter(|r| r.aggregate_type == aggregate_type)
            .map(|r| r.aggregate_id.clone())
            .collect()
    }

    /// The next commit to replay if it is of `aggregate_type`.
    fn take_replay(&self, aggregate_type: &str) -> Option<String> {
        let mut inner = self.lock();
        let position = inner
            .replay
            .iter()
            .position(|r| r.aggregate_type == aggregate_type)?;
        let taken = inner.replay.remove(position)?;
        inner.committed.push(taken.clone());
        Some(taken.aggregate_id)
    }
}

impl CommandContext {
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::with_capacity(5);
        metadata.insert("actor".to_owned(), self.actor.clone());
        metadata.insert("correlation_id".to_owned(), self.correlation_id.clone());
        let optional = [
            ("causation_id", &self.causation_id),
            ("request_id", &self.request_id),
            ("idempotency_key", &self.idempotency_key),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                metadata.insert(key.to_owned(), value.clone());
            }
        }
        metadata
    }
}

/// Why a command had no effect.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Refused(E),
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate kept changing concurrently")]
    Conflict,
    /// The caller expected another version (`If-Match`).
    #[error("expected version {expected}, the current version is {current}")]
    PreconditionFailed { expected: usize, current: usize },
    #[error(transparent)]
    Store(StoreError),
}

/// The aggregate after the command, with the events it appended.
pub struct Committed<A: Aggregate> {
    pub aggregate: A,
    pub version: usize,
    pub events: Vec<EventEnvelope<A>>,
}

#[derive(Clone)]
pub struct CommandBus {
    store: Store,
    /// A test hook: this many commits of idempotent requests fail right after they
    /// committed, as a view read failing after the write would.
    failures_after_commit: Arc<AtomicU32>,
}

impl CommandBus {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            failures_after_commit: Arc::default(),
        }
    }

    /// Makes the next `n` commits of requests with an `Idempotency-Key` answer 503 after
    /// committing (tests only: see `Settings::fail_after_commit`).
    pub fn fail_after_commits(self, n: u32) -> Self {
        self.failures_after_commit.store(n, Ordering::Relaxed);
        self
    }

    fn inject_failure(&self) -> bool {
        self.failures_after_commit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs the command that `decide` builds from the aggregate's current state. `decide`
    /// may refuse with the caller's own error (say, "not yours"); it runs again on fresh
    /// state if the append loses a race. With `expected_version`, the command only runs on
    /// exactly that version; `decide` is asked before the version is compared, so its
    /// refusal wins over a precondition failure.
    pub async fn execute<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        expected_version: Option<usize>,
        decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: CommandName,
        R: From<CommandError<A::Error>>,
    {
        self.run(aggregate_id, context, expected_version, false, None, decide)
            .await
    }

    /// Like [`execute`](Self::execute) for a lease: the append also takes `slot`, in its
    /// own transaction, or fails with [`StoreError::NoFreeSlot`] or
    /// [`StoreError::AgentRetired`] (see [`crate::store::lease_slots`]).
    pub async fn lease<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        slot: &LeaseSlot,
        decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: CommandName,
        R: From<CommandError<A::Error>>,
    {
        self.run(aggregate_id, context, None, false, Some(slot), decide)
            .await
    }

    /// Like [`execute`](Self::execute) for an aggregate whose id was just minted: the first
    /// attempt skips loading it (it cannot have events), saving the reads on the hot path
    /// of creation. Should the id exist after all, the append conflicts and the command
    /// runs again on the loaded state.
    pub async fn create<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: CommandName,
        R: From<CommandError<A::Error>>,
    {
        self.run(aggregate_id, context, None, true, None, decide)
            .await
    }

    /// [`attempts`](Self::attempts), measured: `chronicle_commands_total` and its latency
    /// by aggregate, command (the last one decided) and outcome.
    async fn run<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        expected_version: Option<usize>,
        assume_new: bool,
        slot: Option<&LeaseSlot>,
        mut decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: CommandName,
        R: From<CommandError<A::Error>>,
    {
        let started = Instant::now();
        let mut command = "unknown";
        let mut outcome = "refused";
        let result = self
            .attempts(
                aggregate_id,
                context,
                expected_version,
                assume_new,
                slot,
                &mut outcome,
                |a: &A| {
                    let decided = decide(a);
                    if let Ok(c) = &decided {
                        command = c.name();
                    }
                    decided
                },
            )
            .await;
        if result.is_ok() {
            outcome = "ok";
        }
        meters::command(A::TYPE, command, outcome, started.elapsed());
        result
    }

    /// Load, decide, append, up to [`MAX_ATTEMPTS`] times; `outcome` names why it ended
    /// when it fails (a refusal unless set otherwise).
    #[allow(
        clippy::too_many_arguments,
        reason = "run's arguments passed on, plus where the outcome goes"
    )]
    async fn attempts<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        expected_version: Option<usize>,
        assume_new: bool,
        slot: Option<&LeaseSlot>,
        outcome: &mut &'static str,
        mut decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        R: From<CommandError<A::Error>>,
    {
        let store = self.store.aggregate::<A>();
        let log = context.commit_log.as_ref();
        if let Some(committed_id) = log.and_then(|log| log.take_replay(A::TYPE)) {
            let loaded = store.load(&committed_id).await.map_err(|e| {
                *outcome = "store_error";
                R::from(CommandError::Store(e))
            })?;
            return Ok(Committed {
                aggregate: loaded.aggregate,
                version: loaded.version,
                events: Vec::new(),
            });
        }
        let metadata = context.metadata();
        // The first try decides on a guess when there is one — an id just minted has no
        // events, or this node holds the aggregate as it last wrote or loaded it — and any
        // refusal, failed precondition or conflict on a guess is asked again of state loaded
        // from the store, without counting as an attempt.
        let mut guess = if assume_new {
            Guess::New
        } else {
            Guess::Recent
        };
        let mut attempt = 1;
        loop {
            let (mut loaded, guessed) = match std::mem::replace(&mut guess, Guess::None) {
                Guess::New => (store.assume_new(aggregate_id), true),
                Guess::Recent => match store.recent(aggregate_id) {
                    Some(recent) => (recent, true),
                    None => (self.load(&store, aggregate_id, outcome).await?, false),
                },
                Guess::None => (self.load(&store, aggregate_id, outcome).await?, false),
            };
            // `decide` first: it says whether the caller may see the aggregate at all, and
            // a stranger's `If-Match` must get the same 404 as a missing id, not a 412
            // that confirms the aggregate and names its version.
            let command = match decide(&loaded.aggregate) {
                Ok(command) => command,
                // A refusal of a guessed state proves nothing: decide on the real one.
                Err(_) if guessed => continue,
                Err(refusal) => return Err(refusal),
            };
            if let Some(expected) = expected_version {
                if expected != loaded.version {
                    if guessed {
                        continue;
                    }
                    *outcome = "precondition_failed";
                    return Err(R::from(CommandError::PreconditionFailed {
                        expected,
                        current: loaded.version,
                    }));
                }
            }
            let sink = EventSink::default();
            if let Err(refusal) = loaded.aggregate.handle(command, &(), &sink).await {
                if guessed {
                    continue;
                }
                return Err(R::from(CommandError::Refused(refusal)));
            }
            let events = sink.collect().await;
            let task_times = meters::TaskTimes::of(&loaded.aggregate, &events);
            match store.append_with(events, loaded, &metadata, slot).await {
                Ok((events, loaded)) => {
                    store.remember(&loaded);
                    meters::events_appended(A::TYPE, events.len());
                    if let Some(times) = task_times {
                        times.record();
                    }
                    if let Some(log) = log.filter(|_| !events.is_empty()) {
                        log.record(A::TYPE, aggregate_id);
                        if self.inject_failure() {
                            return Err(R::from(CommandError::Store(StoreError::Unavailable(
                                "failure injected after the commit".into(),
                            ))));
                        }
                    }
                    return Ok(Committed {
                        aggregate: loaded.aggregate,
                        version: loaded.version,
                        events,
                    });
                }
                // Another writer got there first: what this node knew is out of date.
                Err(StoreError::Conflict) if guessed => store.forget(aggregate_id),
                Err(StoreError::Conflict) if attempt < MAX_ATTEMPTS => {
                    store.forget(aggregate_id);
                    meters::conflict(A::TYPE);
                    let jitter_ms = rand::rng().random_range(0..=2u64 << attempt);
                    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                    attempt += 1;
                }
                Err(StoreError::Conflict) => {
                    store.forget(aggregate_id);
                    meters::conflict(A::TYPE);
                    *outcome = "conflict";
                    return Err(R::from(CommandError::Conflict));
                }
                Err(other) => {
                    // Whether it was written is unknown: the next command loads.
                    store.forget(aggregate_id);
                    *outcome = "store_error";
                    return Err(R::from(CommandError::Store(other)));
                }
            }
        }
    }

    /// The aggregate from the store, kept as this node's latest knowledge of it.
    async fn load<A, R>(
        &self,
        store: &AggregateStore<A>,
        aggregate_id: &str,
        outcome: &mut &'static str,
    ) -> Result<Loaded<A>, R>
    where
        A: Aggregate + Clone + 'static,
        R: From<CommandError<A::Error>>,
    {
        let loaded = store.load(aggregate_id).await.map_err(|e| {
            *outcome = "store_error";
            R::from(CommandError::Store(e))
        })?;
        store.remember(&loaded);
        Ok(loaded)
    }
}

/// What the first try of a command decides on.
enum Guess {
    /// The id was just minted: no events.
    New,
    /// This node's latest knowledge of the aggregate, if it has any.
    Recent,
    /// Nothing: load it.
    None,
}
