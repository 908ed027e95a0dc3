//! How a domain event becomes `(event_type, event_version, payload)` and back.
//!
//! Event enums serialise externally tagged (`{"TaskCreated": {...}}`); the store keeps the
//! tag in `event_type` and only the inner object as `payload`, so a stored payload reads
//! as the event itself and the type is never written twice.

use cqrs_es::{Aggregate, DomainEvent};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// `(event_type, event_version, payload)` of one domain event.
pub fn encode<A: Aggregate>(event: &A::Event) -> Result<(String, String, Value), CodecError> {
    let event_type = event.event_type();
    let event_version = event.event_version();
    let value = serde_json::to_value(event).map_err(|e| CodecError(e.to_string()))?;
    let payload = match value {
        Value::Object(mut map) if map.len() == 1 => map.remove(&event_type).ok_or_else(|| {
            CodecError(format!(
                "{}: serde tag differs from event_type {event_type}",
                A::TYPE
            ))
        })?,
        _ => {
            return Err(CodecError(format!(
                "{}: events must serialise externally tagged",
                A::TYPE
            )))
        }
    };
    Ok((event_type, event_version, payload))
}

/// The domain event stored as `event_type` with `payload` (already upcast).
pub fn decode<A: Aggregate>(event_type: &str, payload: Value) -> Result<A::Event, CodecError> {
    let mut tagged = Map::with_capacity(1);
    tagged.insert(event_type.to_owned(), payload);
    serde_json::from_value(Value::Object(tagged)).map_err(|error| {
        CodecError(format!(
            "{} event {event_type} does not decode: {error}",
            A::TYPE
        ))
    })
}
