//! `Idempotency-Key` on every write (API.md, Conventions): the same key from the same user
//! within 24 h returns the first answer and has no second effect.
//!
//! A middleware behind authentication. The first request with a key claims it (a row in
//! `idempotency_keys`, keyed by user and key, holding a fingerprint of method, path, query
//! and body), runs, and stores its answer; a repeat gets that answer back with
//! `Idempotent-Replayed: true`. A repeat while the first still runs waits for its answer
//! (up to [`WAIT_FOR_FIRST`], then 409: retry shortly); the same key on a different request
//! is 422. Answers of 500 and above are not kept, so a
//! repeat runs again. A running first request renews its claim every [`RENEW_EVERY`]; a
//! claim not renewed for [`ABANDONED_AFTER`] belongs to a request that died with its node,
//! and a repeat takes it over and runs. Should the node have died after the effect and
//! before keeping the answer, that repeat is a second attempt — except for task creation,
//! which is exactly-once even then, because a keyed task's id is derived from the key
//! (see [`super::idempotency`]).
//!
//! Not replayed: `/api/auth/*` (anonymous, and its answers are fresh credentials) and
//! requests without credentials. A first answer carrying a new API key secret is kept with
//! `key: null`: secrets are shown once and never stored in clear.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chronicle_projections::{on_tx, ReadDb};
use chrono::Utc;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{idempotency_key_is_valid, IDEMPOTENCY_KEY_RULE};
use super::AppState;
use crate::auth::keys::KEY_PREFIX;
use crate::auth::Authentication;

/// How long a key's first answer is kept.
pub const KEEP_MILLIS: i64 = 24 * 60 * 60 * 1000;
/// A running first request renews its claim this often…
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// …so a claim not renewed for this long belongs to a request that died with its node.
pub const ABANDONED_AFTER: i64 = 6 * 1000;

/// How long a repeat waits for the first request's answer: longer than the longest
/// long-poll.
pub const WAIT_FOR_FIRST: Duration = Duration::from_secs(35);
const WAIT_STEP: Duration = Duration::from_millis(20);

const KEY_HEADER: &str = "idempotency-key";
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The answer headers a replay repeats; the rest (request id, CORS) belong to the repeat.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];

/// A stored first answer.
struct Stored {
    status: u16,
    headers: Option<String>,
    body: Option<String>,
}

enum Claim {
    /// This request is the first: run it.
    Run,
    Replay(Stored),
    /// The key was used for another request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Only the writes: any other method (TRACE, …) goes on to routing, which answers 405.
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) || request.uri().path().starts_with("/api/auth/")
    {
        return next.run(request).await;
    }
    let Some(raw_key) = request.headers().get(KEY_HEADER) else {
        return next.run(request).await;
    };
    let key = match raw_key.to_str() {
        Ok(key) if idempotency_key_is_valid(key) => key.to_owned(),
        _ => return ApiError::BadRequest(IDEMPOTENCY_KEY_RULE.into()).into_response(),
    };
    let owner = match request.extensions().get::<Authentication>() {
        Some(Authentication::Actor(actor)) => actor.id,
        // No caller to scope the key to: the handler answers (401 where credentials are
        // needed).
        _ => return next.run(request).await,
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, state.settings.body_limit).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &body);
    let db = &state.read.db;
    let now = Utc::now().timestamp_millis();
    // A repeat that arrives while the first request runs waits for its answer.
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    let claimed = loop {
        match claim(db, owner, &key, &fingerprint, Utc::now().timestamp_millis()).await {
            Ok(Claim::InProgress) if Instant::now() < deadline => {
                tokio::time::sleep(WAIT_STEP).await;
            }
            other => break other,
        }
    };
    match claimed {
        Ok(Claim::Run) => {}
        Ok(Claim::Replay(stored)) => return replay(stored),
        Ok(Claim::Mismatch) => {
            return ApiError::Unprocessable {
                code: "idempotency.key_reused",
                detail: "this Idempotency-Key was used for a different request".into(),
            }
            .into_response()
        }
        Ok(Claim::InProgress) => {
            let mut response = ApiError::Conflict {
                code: "idempotency.in_progress",
                detail: "a request with this Idempotency-Key is still running; retry shortly"
                    .into(),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Err(error) => return ApiError::Internal(Box::new(error)).into_response(),
    }
    if rand::random::<u8>() == 0 {
        sweep(db, now).await;
    }
    let run = next.run(Request::from_parts(parts, Body::from(body)));
    tokio::pin!(run);
    let mut renew = tokio::time::interval_at(Instant::now() + RENEW_EVERY, RENEW_EVERY);
    let response = loop {
        tokio::select! {
            response = &mut run => break response,
            _ = renew.tick() => renew_claim(db, owner, &key, &fingerprint).await,
        }
    };
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            release(db, owner, &key).await;
            return ApiError::Internal(Box::new(error)).into_response();
        }
    };
    if parts.status.is_server_error() {
        release(db, owner, &key).await;
    } else {
        let stored = Stored {
            status: parts.status.as_u16(),
            headers: kept_headers(&parts.headers),
            body: stored_body(&body),
        };
        if let Err(error) = record(db, owner, &key, &fingerprint, &stored).await {
            // The answer still goes out; a repeat will find the claim abandoned later.
            tracing::warn!(%error, "cannot keep the answer of an idempotent request");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

fn fingerprint(method: &Method, uri: &axum::http::Uri, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for part in [
        method.as_str().as_bytes(),
        uri.path().as_bytes(),
        uri.query().unwrap_or_default().as_bytes(),
        body,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

fn kept_headers(headers: &HeaderMap) -> Option<String> {
    let kept: Map<String, Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), Value::String(value.to_owned())))
        })
        .collect();
    serde_json::to_string(&kept).ok()
}

/// The body as kept: UTF-8 text (answers are JSON), with a new API key secret taken out.
fn stored_body(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut object))
            if object
                .get("key")
                .and_then(Value::as_str)
                .is_some_and(|key| key.starts_with(KEY_PREFIX)) =>
        {
            object.insert("key".into(), Value::Null);
            serde_json::to_string(&object).ok()
        }
        _ => Some(text.to_owned()),
    }
}

fn replay(stored: Stored) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body.unwrap_or_default()).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    if let Some(Ok(Value::Object(kept))) = stored.headers.as_deref().map(serde_json::from_str) {
        for (name, value) in kept {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                headers.insert(name, value);
            }
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

type Row = (String, Option<i32>, Option<String>, Option<String>);

async fn claim(
    db: &ReadDb,
    owner: Uuid,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> Result<Claim, sqlx::Error> {
    let owner = owner.to_string();
    let mut tx = db.begin().await?;
    // An answer past its 24 h, or a claim whose request died, frees the key.
    on_tx!(&mut tx, |conn| {
        sqlx::query(
            "DELETE FROM idempotency_keys
              WHERE owner_id = $1 AND key = $2
                AND (claimed_at < $3 OR (status IS NULL AND claimed_at < $4))",
        )
        .bind(&owner)
        .bind(key)
        .bind(now - KEEP_MILLIS)
        .bind(now - ABANDONED_AFTER)
        .execute(&mut *conn)
        .await
        .map(|_| ())
    })?;
    let claimed = on_tx!(&mut tx, |conn| {
        sqlx::query(
            "INSERT INTO idempotency_keys (owner_id, key, fingerprint, claimed_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner_id, key) DO NOTHING",
        )
        .bind(&owner)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
    })?;
    if claimed == 1 {
        tx.commit().await?;
        return Ok(Claim::Run);
    }
    let row: Option<Row> = on_tx!(&mut tx, |conn| {
        sqlx::query_as(
            "SELECT fingerprint, status, headers, body FROM idempotency_keys
              WHERE owner_id = $1 AND key = $2",
        )
        .bind(&owner)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
    })?;
    tx.commit().await?;
    Ok(match row {
        // Gone between the two statements: a race with a sweep; treat as in progress.
        None => Claim::InProgress,
        Some((stored, _, _, _)) if stored != fingerprint => Claim::Mismatch,
        Some((_, None, _, _)) => Claim::InProgress,
        Some((_, Some(status), headers, body)) => Claim::Replay(Stored {
            status: u16::try_from(status).unwrap_or(200),
            headers,
            body,
        }),
    })
}

/// One statement, built by `$query` for whichever backend, in its own write transaction.
macro_rules! write_one {
    ($db:expr, $query:expr) => {
        async {
            let mut tx = $db.begin().await?;
            on_tx!(&mut tx, |conn| $query.execute(&mut *conn).await.map(|_| ()))?;
            tx.commit().await
        }
    };
}

async fn record(
    db: &ReadDb,
    owner: Uuid,
    key: &str,
    fingerprint: &str,
    stored: &Stored,
) -> Result<(), sqlx::Error> {
    write_one!(
        db,
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, headers = $5, body = $6
              WHERE owner_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL",
        )
        .bind(owner.to_string())
        .bind(key)
        .bind(fingerprint)
        .bind(i32::from(stored.status))
        .bind(stored.headers.as_deref())
        .bind(stored.body.as_deref())
    )
    .await
}

/// Tells repeats that the first request is still running.
async fn renew_claim(db: &ReadDb, owner: Uuid, key: &str, fingerprint: &str) {
    let renewed: Result<(), sqlx::Error> = write_one!(
        db,
        sqlx::query(
            "UPDATE idempotency_keys SET claimed_at = $4
              WHERE owner_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL",
        )
        .bind(owner.to_string())
        .bind(key)
        .bind(fingerprint)
        .bind(Utc::now().timestamp_millis())
    )
    .await;
    if let Err(error) = renewed {
        tracing::warn!(%error, "cannot renew an idempotency claim");
    }
}

/// Frees the key after an answer not worth keeping (5xx): a repeat runs again.
async fn release(db: &ReadDb, owner: Uuid, key: &str) {
    let released: Result<(), sqlx::Error> = write_one!(
        db,
        sqlx::query(
            "DELETE FROM idempotency_keys
              WHERE owner_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(owner.to_string())
        .bind(key)
    )
    .await;
    if let Err(error) = released {
        tracing::warn!(%error, "cannot free an idempotency key; it frees itself later");
    }
}

/// Forgets answers past their 24 h (now and then, from a write).
async fn sweep(db: &ReadDb, now: i64) {
    let swept: Result<(), sqlx::Error> = write_one!(
        db,
        sqlx::query("DELETE FROM idempotency_keys WHERE claimed_at < $1").bind(now - KEEP_MILLIS)
    )
    .await;
    if let Err(error) = swept {
        tracing::warn!(%error, "cannot sweep old idempotency keys");
    }
}
