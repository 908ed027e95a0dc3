//! cqrs-es's `EventStore` for one aggregate type, over either backend: loads from the latest
//! snapshot plus the events after it (upcast first), and commits new events with their
//! sequence, metadata and hash-chain links, taking a snapshot every N events.

use std::collections::HashMap;
use std::marker::PhantomData;

use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chain::{self, ChainLink, GENESIS, HASH, PREV_HASH};
use chronicle_aggregates::codec;

use super::{Backend, LeaseSlot, Store, StoreError};

/// An aggregate as loaded: its state, its version (last sequence) and the hash that the
/// next event must chain to.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub aggregate_id: String,
    pub aggregate: A,
    pub version: usize,
    last_hash: String,
    snapshot_count: Option<usize>,
}

#[cfg(test)]
impl<A> Loaded<A> {
    pub(crate) fn for_tests(aggregate_id: &str, aggregate: A, version: usize) -> Self {
        Self {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            version,
            last_hash: GENESIS.to_owned(),
            snapshot_count: None,
        }
    }
}

impl<A: Aggregate> AggregateContext<A> for Loaded<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

/// What a snapshot row holds: the state, and the chain head so that loading from a snapshot
/// with no later events can still link the next event.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload<A> {
    state: A,
    last_hash: String,
}

/// The typed store for aggregate `A`.
pub struct AggregateStore<A> {
    store: Store,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> AggregateStore<A> {
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            _aggregate: PhantomData,
        }
    }

    /// An aggregate taken to have no events yet, without asking the store: for ids just
    /// minted. If it does exist after all, appending to it is a conflict.
    pub fn assume_new(&self, aggregate_id: &str) -> Loaded<A> {
        Loaded {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: A::default(),
            version: 0,
            last_hash: GENESIS.to_owned(),
            snapshot_count: None,
        }
    }

    /// The aggregate as this node last wrote or loaded it, if it still holds it: a guess to
    /// decide on, never an answer (see [`super::recent`]).
    pub fn recent(&self, aggregate_id: &str) -> Option<Loaded<A>>
    where
        A: Clone + 'static,
    {
        self.store.recent().get::<A>(aggregate_id)
    }

    /// Keeps `loaded` as this node's latest knowledge of the aggregate.
    pub fn remember(&self, loaded: &Loaded<A>)
    where
        A: Clone + 'static,
    {
        self.store.recent().put(loaded);
    }

    /// Drops this node's knowledge of the aggregate (after a conflict or a failed append).
    pub fn forget(&self, aggregate_id: &str) {
        self.store.recent().forget::<A>(aggregate_id);
    }

    /// The aggregate as it stands now (default state and version 0 when it has no events).
    pub async fn load(&self, aggregate_id: &str) -> Result<Loaded<A>, StoreError> {
        let repo = self.store.backend();
        let mut loaded = self.assume_new(aggregate_id);
        if self.store.options().snapshot_every > 0 {
            if let Some(snapshot) = repo.get_snapshot::<A>(aggregate_id).await? {
                // A snapshot that no longer decodes (the aggregate's shape changed) is only
                // a cache: fall back to a full replay.
                if let Ok(payload) =
                    serde_json::from_value::<SnapshotPayload<A>>(snapshot.aggregate)
                {
                    loaded.aggregate = payload.state;
                    loaded.version = snapshot.current_sequence;
                    loaded.last_hash = payload.last_hash;
                }
                loaded.snapshot_count = Some(snapshot.current_snapshot);
            }
        }
        let events = if loaded.version == 0 {
            repo.get_events::<A>(aggregate_id).await?
        } else {
            repo.get_last_events::<A>(aggregate_id, loaded.version)
                .await?
        };
        for event in events {
            let event = self.upcast(event);
            if event.sequence != loaded.version + 1 {
                return Err(StoreError::Codec(format!(
                    "{} {aggregate_id}: expected sequence {}, found {}",
                    A::TYPE,
                    loaded.version + 1,
                    event.sequence
                )));
            }
            if let Some(hash) = event.metadata.get(HASH).and_then(Value::as_str) {
                loaded.last_hash = hash.to_owned();
            }
            loaded.version = event.sequence;
            let domain_event = codec::decode::<A>(&event.event_type, event.payload)?;
            loaded.aggregate.apply(domain_event);
        }
        Ok(loaded)
    }

    /// Appends `events` after `loaded` (whose aggregate already has them applied, as
    /// cqrs-es's `EventSink` does), linking each into the hash chain. A concurrent append to
    /// the same aggregate fails the whole commit with [`StoreError::Conflict`].
    pub async fn append(
        &self,
        events: Vec<A::Event>,
        loaded: Loaded<A>,
        metadata: &HashMap<String, String>,
    ) -> Result<(Vec<EventEnvelope<A>>, Loaded<A>), StoreError> {
        self.append_with(events, loaded, metadata, None).await
    }

    /// Like [`append`](Self::append) for a lease: in the same transaction, `slot` is taken
    /// for the aggregate's first new event, or the append refused (see [`super::lease_slots`]).
    pub async fn append_with(
        &self,
        events: Vec<A::Event>,
        loaded: Loaded<A>,
        metadata: &HashMap<String, String>,
        slot: Option<&LeaseSlot>,
    ) -> Result<(Vec<EventEnvelope<A>>, Loaded<A>), StoreError> {
        if events.is_empty() {
            return Ok((Vec::new(), loaded));
        }
        let mut serialized = Vec::with_capacity(events.len());
        let mut envelopes = Vec::with_capacity(events.len());
        let mut prev_hash = loaded.last_hash.clone();
        // One time for the whole commit, set here so that the chain covers it.
        let recorded_at = chain::now();
        for (offset, event) in events.into_iter().enumerate() {
            let sequence = loaded.version + offset + 1;
            let (event_type, event_version, payload) = codec::encode::<A>(&event)?;
            let mut stored_metadata: Map<String, Value> = metadata
                .iter()
                .map(|(key, value)| (key.clone(), Value::String(value.clone())))
                .collect();
            stored_metadata.remove(HASH);
            stored_metadata.insert(PREV_HASH.into(), Value::String(prev_hash.clone()));
            let mut stored_metadata = Value::Object(stored_metadata);
            let hash = ChainLink {
                prev_hash: &prev_hash,
                aggregate_type: A::TYPE,
                aggregate_id: &loaded.aggregate_id,
                sequence: sequence as u64,
                event_type: &event_type,
                event_version: &event_version,
                recorded_at,
                payload: &payload,
                metadata: &stored_metadata,
            }
            .hash()?;
            if let Value::Object(map) = &mut stored_metadata {
                map.insert(HASH.into(), Value::String(hash.clone()));
            }
            let mut envelope_metadata = metadata.clone();
            envelope_metadata.insert(PREV_HASH.into(), prev_hash);
            envelope_metadata.insert(HASH.into(), hash.clone());
            serialized.push(SerializedEvent::new(
                loaded.aggregate_id.clone(),
                sequence,
                A::TYPE.to_owned(),
                event_type,
                event_version,
                payload,
                stored_metadata,
            ));
            envelopes.push(EventEnvelope {
                aggregate_id: loaded.aggregate_id.clone(),
                sequence,
                payload: event,
                metadata: envelope_metadata,
            });
            prev_hash = hash;
        }
        let new_version = loaded.version + envelopes.len();
        let every = self.store.options().snapshot_every;
        let snapshot_update = if every > 0 && new_version / every > loaded.version / every {
            let payload = serde_json::to_value(SnapshotPayload {
                state: &loaded.aggregate,
                last_hash: prev_hash.clone(),
            })?;
            Some((
                loaded.aggregate_id.clone(),
                payload,
                loaded.snapshot_count.map_or(1, |count| count + 1),
            ))
        } else {
            None
        };
        let snapshot_count = match &snapshot_update {
            Some((_, _, count)) => Some(*count),
            None => loaded.snapshot_count,
        };
        match (self.store.backend(), snapshot_update) {
            (Backend::Postgres(pg), None) => {
                pg.group()
                    .append(A::TYPE, serialized, recorded_at, slot.cloned())
                    .await?
            }
            (Backend::Postgres(pg), Some(snapshot_update)) => {
                pg.append_with_snapshot(A::TYPE, &serialized, snapshot_update, recorded_at, slot)
                    .await?
            }
            (Backend::Sqlite(lite), snapshot_update) => {
                lite.write(A::TYPE, serialized, snapshot_update, recorded_at, slot)
                    .await?
            }
        }
        let loaded = Loaded {
            version: new_version,
            last_hash: prev_hash,
            snapshot_count,
            ..loaded
        };
        Ok((envelopes, loaded))
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        self.store
            .upcasters()
            .iter()
            .fold(event, |event, upcaster| {
                if upcaster.can_upcast(&event.event_type, &event.event_version) {
                    upcaster.upcast(event)
                } else {
                    event
                }
            })
    }
}

impl<A: Aggregate> EventStore<A> for AggregateStore<A> {
    type AC = Loaded<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let events = self.store.backend().get_events::<A>(aggregate_id).await?;
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            let event = self.upcast(event);
            let metadata = match event.metadata {
                Value::Object(map) => map
                    .into_iter()
                    .filter_map(|(key, value)| match value {
                        Value::String(text) => Some((key, text)),
                        _ => None,
                    })
                    .collect(),
                _ => HashMap::new(),
            };
            envelopes.push(EventEnvelope {
                aggregate_id: event.aggregate_id,
                sequence: event.sequence,
                payload: codec::decode::<A>(&event.event_type, event.payload)
                    .map_err(|e| to_aggregate_error(e.into()))?,
                metadata,
            });
        }
        Ok(envelopes)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, AggregateError<A::Error>> {
        self.load(aggregate_id).await.map_err(to_aggregate_error)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Loaded<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.append(events, context, &metadata)
            .await
            .map(|(envelopes, _)| envelopes)
            .map_err(to_aggregate_error)
    }
}

fn to_aggregate_error<E: std::error::Error>(error: StoreError) -> AggregateError<E> {
    match error {
        StoreError::Conflict => AggregateError::AggregateConflict,
        StoreError::Unavailable(e) => AggregateError::DatabaseConnectionError(e),
        StoreError::Codec(message) => AggregateError::DeserializationError(message.into()),
        other => AggregateError::UnexpectedError(Box::new(other)),
    }
}
