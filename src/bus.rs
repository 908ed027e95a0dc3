//! The command bus: load an aggregate, let it decide, append its events — retrying a lost
//! optimistic-concurrency race a bounded number of times with fresh state.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, EventEnvelope};
use rand::Rng;

use crate::store::{Store, StoreError};

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
}

impl CommandBus {
    pub fn new(store: Store) -> Self {
        Self { store }
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
        A: Aggregate<Services = ()>,
        R: From<CommandError<A::Error>>,
    {
        self.run(aggregate_id, context, expected_version, false, decide)
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
        A: Aggregate<Services = ()>,
        R: From<CommandError<A::Error>>,
    {
        self.run(aggregate_id, context, None, true, decide).await
    }

    async fn run<A, R>(
        &self,
        aggregate_id: &str,
        context: &CommandContext,
        expected_version: Option<usize>,
        assume_new: bool,
        mut decide: impl FnMut(&A) -> Result<A::Command, R>,
    ) -> Result<Committed<A>, R>
    where
        A: Aggregate<Services = ()>,
        R: From<CommandError<A::Error>>,
    {
        let store = self.store.aggregate::<A>();
        let metadata = context.metadata();
        for attempt in 1..=MAX_ATTEMPTS {
            let assumed = assume_new && attempt == 1;
            let mut loaded = if assumed {
                store.assume_new(aggregate_id)
            } else {
                store
                    .load(aggregate_id)
                    .await
                    .map_err(|e| R::from(CommandError::Store(e)))?
            };
            // `decide` first: it says whether the caller may see the aggregate at all, and
            // a stranger's `If-Match` must get the same 404 as a missing id, not a 412
            // that confirms the aggregate and names its version.
            let command = match decide(&loaded.aggregate) {
                Ok(command) => command,
                // A refusal of an assumed state proves nothing: decide on the real one.
                Err(_) if assumed => continue,
                Err(refusal) => return Err(refusal),
            };
            if let Some(expected) = expected_version {
                if expected != loaded.version {
                    return Err(R::from(CommandError::PreconditionFailed {
                        expected,
                        current: loaded.version,
                    }));
                }
            }
            let sink = EventSink::default();
            if let Err(refusal) = loaded.aggregate.handle(command, &(), &sink).await {
                if assumed {
                    continue;
                }
                return Err(R::from(CommandError::Refused(refusal)));
            }
            let events = sink.collect().await;
            match store.append(events, loaded, &metadata).await {
                Ok((events, loaded)) => {
                    return Ok(Committed {
                        aggregate: loaded.aggregate,
                        version: loaded.version,
                        events,
                    })
                }
                Err(StoreError::Conflict) if attempt < MAX_ATTEMPTS => {
                    let jitter_ms = rand::rng().random_range(0..=2u64 << attempt);
                    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                }
                Err(StoreError::Conflict) => return Err(R::from(CommandError::Conflict)),
                Err(other) => return Err(R::from(CommandError::Store(other))),
            }
        }
        Err(R::from(CommandError::Conflict))
    }
}
