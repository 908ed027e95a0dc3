//! `Idempotency-Key` on every write (API.md, Conventions): the same key from the same user
//! within 24 h returns the first answer and has no second effect.
//!
//! A middleware behind authentication. The first request with a key claims it (a row in
//! `idempotency_keys`, keyed by user and key, holding a fingerprint of method, path, query
//! and body, and a fresh claim id), runs, and stores its answer; a repeat gets that answer
//! back with `Idempotent-Replayed: true`. A repeat while the first still runs waits for its
//! answer (up to [`WAIT_FOR_FIRST`], then 409: retry shortly); the same key on a different
//! request is 422.
//!
//! Once a command of the request has committed, the key is kept whatever happens next.
//! The bus notes each aggregate the request changed in its [`CommitLog`]; an answer of 500
//! or above (a view read failing after the write, say) keeps those notes instead of an
//! answer, and a repeat runs the handler again with the log *replaying* them: its commands
//! take the committed aggregates as they stand instead of acting again, so the repeat
//! answers the resource of the first effect, in the handler's own shape (a new API key's
//! secret is not known then: `key: null`). A 5xx before any commit frees the key (a
//! repeat runs again).
//!
//! A running first request renews its claim every [`RENEW_EVERY`], writing what it has
//! committed so far; a claim not renewed for [`ABANDONED_AFTER`] by the **database's**
//! clock (nodes' clocks may disagree) belongs to a request that died with its node, and a
//! repeat takes it over (a new claim id, so the first request's late writes miss) and runs,
//! replaying what the dead one had noted. A claim this node is still running is never
//! taken over by this node, however late its renewal (a slow SQLite writer). What stays
//! open: a node that dies within [`RENEW_EVERY`] after a commit and before noting it;
//! task creation is exactly-once even then, because a keyed task's id is derived from the
//! key (see [`super::idempotency`]).
//!
//! Not replayed: `/api/auth/*` (anonymous, and its answers are fresh credentials) and
//! requests without credentials. A first answer carrying a new API key secret is kept with
//! `key: null`: secrets are shown once and never stored in clear.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chronicle_projections::{on_tx, ReadDb};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{idempotency_key_is_valid, IDEMPOTENCY_KEY_RULE};
use super::AppState;
use crate::auth::keys::KEY_PREFIX;
use crate::auth::Authentication;
use crate::bus::{CommitLog, CommitRef};

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

/// The claims this node is running, by (user, key): never taken over here.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<(Uuid, String)>>);

impl InFlight {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<(Uuid, String)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, owner: Uuid, key: &str) -> bool {
        self.set().contains(&(owner, key.to_owned()))
    }
}

/// A stored first answer.
struct Stored {
    status: u16,
    headers: Option<String>,
    body: Option<String>,
}

enum Claim {
    /// This request runs, replaying what an earlier attempt committed (if anything).
    Run {
        claim_id: Uuid,
        replay: Vec<CommitRef>,
    },
    Replay(Stored),
    /// The key was used for another request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// The claim a request holds while it runs. Dropped unfinished (the client went away and
/// the handler with it), it still keeps or frees the key as a 5xx would.
struct Holding<'a> {
    state: &'a AppState,
    owner: Uuid,
    key: String,
    claim_id: Uuid,
    log: CommitLog,
    finished: bool,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.state
            .idempotency
            .set()
            .remove(&(self.owner, std::mem::take(&mut self.key)));
        if self.finished {
            return;
        }
        // Without a runtime (the process is ending) the claim is left to be found
        // abandoned, with what the last renewal wrote.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let db = self.state.read.db.clone();
            let (claim_id, committed) = (self.claim_id, self.log.committed());
            runtime.spawn(async move { keep_or_release(&db, claim_id, &committed).await });
        }
    }
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
    let (mut parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, state.settings.body_limit).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &body);
    let db = &state.read.db;
    // A repeat that arrives while the first request runs waits for its answer.
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    let claimed = loop {
        let running_here = state.idempotency.contains(owner, &key);
        match claim(db, owner, &key, &fingerprint, running_here).await {
            Ok(Claim::InProgress) if Instant::now() < deadline => {
                tokio::time::sleep(WAIT_STEP).await;
            }
            other => break other,
        }
    };
    let (claim_id, replaying) = match claimed {
        Ok(Claim::Run { claim_id, replay }) => (claim_id, replay),
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
    };
    state.idempotency.set().insert((owner, key.clone()));
    let is_replay = !replaying.is_empty();
    let log = CommitLog::replaying(replaying);
    let mut holding = Holding {
        state: &state,
        owner,
        key,
        claim_id,
        log: log.clone(),
        finished: false,
    };
    if rand::random::<u8>() == 0 {
        sweep(db).await;
    }
    parts.extensions.insert(log.clone());
    let run = next.run(Request::from_parts(parts, Body::from(body)));
    tokio::pin!(run);
    let mut renew = tokio::time::interval_at(Instant::now() + RENEW_EVERY, RENEW_EVERY);
    let response = loop {
        tokio::select! {
            response = &mut run => break response,
            _ = renew.tick() => renew_claim(db, claim_id, &log.committed()).await,
        }
    };
    let (mut parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            holding.finished = true;
            keep_or_release(db, claim_id, &log.committed()).await;
            return ApiError::Internal(Box::new(error)).into_response();
        }
    };
    holding.finished = true;
    if parts.status.is_server_error() {
        keep_or_release(db, claim_id, &log.committed()).await;
        return Response::from_parts(parts, Body::from(body));
    }
    let stored = Stored {
        status: parts.status.as_u16(),
        headers: kept_headers(&parts.headers),
        body: stored_body(&body),
    };
    if let Err(error) = record(db, claim_id, &stored).await {
        // The answer still goes out; a repeat will find the claim abandoned later.
        tracing::warn!(%error, "cannot keep the answer of an idempotent request");
    }
    if is_replay {
        // Answered from an earlier attempt's commits: the handler's own answer, but a
        // secret it drew now was never stored and would not work.
        parts
            .headers
            .insert(REPLAYED, HeaderValue::from_static("true"));
        let body = stored.body.unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(body));
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

/// Milliseconds since the epoch by the database's clock, in each backend's SQL.
fn now_ms(db: &ReadDb) -> &'static str {
    match db {
        ReadDb::Postgres(_) => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        ReadDb::Sqlite { .. } => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

/// `sql` with `NOW_MS` spelled for `db`: an expression, never a value.
fn with_now(db: &ReadDb, sql: &str) -> String {
    sql.replace("NOW_MS", now_ms(db))
}

type Row = (
    String,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

async fn claim(
    db: &ReadDb,
    owner: Uuid,
    key: &str,
    fingerprint: &str,
    running_here: bool,
) -> Result<Claim, sqlx::Error> {
    let owner = owner.to_string();
    let claim_id = Uuid::new_v4();
    let mut tx = db.begin().await?;
    // An answer past its 24 h frees the key.
    let expire = with_now(
        db,
        "DELETE FROM idempotency_keys
          WHERE owner_id = $1 AND key = $2 AND claimed_at < NOW_MS - $3",
    );
    on_tx!(&mut tx, |conn| {
        sqlx::query(&expire)
            .bind(&owner)
            .bind(key)
            .bind(KEEP_MILLIS)
            .execute(&mut *conn)
            .await
            .map(|_| ())
    })?;
    let insert = with_now(
        db,
        "INSERT INTO idempotency_keys (owner_id, key, fingerprint, claimed_at, claim_id)
         VALUES ($1, $2, $3, NOW_MS, $4)
         ON CONFLICT (owner_id, key) DO NOTHING",
    );
    let claimed = on_tx!(&mut tx, |conn| {
        sqlx::query(&insert)
            .bind(&owner)
            .bind(key)
            .bind(fingerprint)
            .bind(claim_id.to_string())
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected())
    })?;
    if claimed == 1 {
        tx.commit().await?;
        return Ok(Claim::Run {
            claim_id,
            replay: Vec::new(),
        });
    }
    let select = with_now(
        db,
        "SELECT fingerprint, status, headers, body, claim_id, committed, claimed_at,
                NOW_MS AS now_ms
           FROM idempotency_keys
          WHERE owner_id = $1 AND key = $2",
    );
    let row: Option<Row> = on_tx!(&mut tx, |conn| {
        sqlx::query_as(&select)
            .bind(&owner)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
    })?;
    let outcome = match row {
        // Gone between the two statements: a race with a sweep; treat as in progress.
        None => Claim::InProgress,
        Some((stored, ..)) if stored != fingerprint => Claim::Mismatch,
        Some((_, Some(status), headers, body, ..)) => Claim::Replay(Stored {
            status: u16::try_from(status).unwrap_or(200),
            headers,
            body,
        }),
        Some((_, None, _, _, held_by, committed, claimed_at, now)) => {
            if running_here || claimed_at >= now - ABANDONED_AFTER {
                Claim::InProgress
            } else {
                // Abandoned (or failed after committing): take it over.
                let take = with_now(
                    db,
                    "UPDATE idempotency_keys SET claim_id = $3, claimed_at = NOW_MS
                      WHERE owner_id = $1 AND key = $2 AND status IS NULL
                        AND COALESCE(claim_id, '') = COALESCE($4, '')",
                );
                let taken = on_tx!(&mut tx, |conn| {
                    sqlx::query(&take)
                        .bind(&owner)
                        .bind(key)
                        .bind(claim_id.to_string())
                        .bind(held_by.as_deref())
                        .execute(&mut *conn)
                        .await
                        .map(|r| r.rows_affected())
                })?;
                if taken == 1 {
                    let replay = committed
                        .as_deref()
                        .and_then(|text| serde_json::from_str(text).ok())
                        .unwrap_or_default();
                    Claim::Run { claim_id, replay }
                } else {
                    Claim::InProgress
                }
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
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

async fn record(db: &ReadDb, claim_id: Uuid, stored: &Stored) -> Result<(), sqlx::Error> {
    write_one!(
        db,
        sqlx::query(
            "UPDATE idempotency_keys SET status = $2, headers = $3, body = $4
              WHERE claim_id = $1 AND status IS NULL",
        )
        .bind(claim_id.to_string())
        .bind(i32::from(stored.status))
        .bind(stored.headers.as_deref())
        .bind(stored.body.as_deref())
    )
    .await
}

fn committed_json(committed: &[CommitRef]) -> Option<String> {
    if committed.is_empty() {
        None
    } else {
        serde_json::to_string(committed).ok()
    }
}

/// Tells repeats that the first request is still running, and what it has committed.
async fn renew_claim(db: &ReadDb, claim_id: Uuid, committed: &[CommitRef]) {
    let sql = with_now(
        db,
        "UPDATE idempotency_keys SET claimed_at = NOW_MS, committed = $2
          WHERE claim_id = $1 AND status IS NULL",
    );
    let renewed: Result<(), sqlx::Error> = write_one!(
        db,
        sqlx::query(&sql)
            .bind(claim_id.to_string())
            .bind(committed_json(committed))
    )
    .await;
    if let Err(error) = renewed {
        tracing::warn!(%error, "cannot renew an idempotency claim");
    }
}

/// After a 5xx or a request cut short: with nothing committed the key is free (a repeat
/// runs again); otherwise it keeps the commits, marked abandoned, so that the next repeat
/// takes it over at once and answers from them.
async fn keep_or_release(db: &ReadDb, claim_id: Uuid, committed: &[CommitRef]) {
    let result: Result<(), sqlx::Error> = match committed_json(committed) {
        None => {
            write_one!(
                db,
                sqlx::query("DELETE FROM idempotency_keys WHERE claim_id = $1 AND status IS NULL")
                    .bind(claim_id.to_string())
            )
            .await
        }
        Some(committed) => {
            let sql = with_now(
                db,
                "UPDATE idempotency_keys SET committed = $2, claimed_at = NOW_MS - $3
                  WHERE claim_id = $1 AND status IS NULL",
            );
            write_one!(
                db,
                sqlx::query(&sql)
                    .bind(claim_id.to_string())
                    .bind(committed)
                    .bind(ABANDONED_AFTER + 1)
            )
            .await
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle an idempotency claim; it frees itself later");
    }
}

/// Forgets answers past their 24 h (now and then, from a write).
async fn sweep(db: &ReadDb) {
    let sql = with_now(
        db,
        "DELETE FROM idempotency_keys WHERE claimed_at < NOW_MS - $1",
    );
    let swept: Result<(), sqlx::Error> = write_one!(db, sqlx::query(&sql).bind(KEEP_MILLIS)).await;
    if let Err(error) = swept {
        tracing::warn!(%error, "cannot sweep old idempotency keys");
    }
}
