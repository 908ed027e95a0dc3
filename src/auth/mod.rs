//! Authentication: who a request comes from, and the credentials that say so.
//!
//! Layout:
//! - [`secret`]: the server secret and the keys derived from it.
//! - [`password`]: argon2id hashing on the blocking pool.
//! - [`jwt`]: HS256 access tokens.
//! - [`refresh`]: opaque, MAC'd refresh tokens naming a session and a token.
//! - [`keys`]: self-locating `chr_` API keys, stored as HMACs.
//! - [`key_misses`]: a brief memory of keys that did not authenticate.
//! - [`key_cache`]: a short memory of keys that did, ended by revocations.
//! - [`accounts`]: creating users (register and the CLI), the first one as admin.
//! - [`sessions`]: starting, rotating and ending refresh-token families.
//! - [`revocation`]: credentials that ended before they expire, on every node.
//! - [`error`]: why a credential operation failed, without HTTP in it.

pub mod accounts;
pub mod error;
pub mod jwt;
pub mod key_cache;
pub mod key_misses;
pub mod keys;
pub mod password;
pub mod refresh;
pub mod revocation;
pub mod secret;
pub mod sessions;

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use chronicle_aggregates::api_key::ApiKey;
use chronicle_aggregates::user::User;
use chrono::Utc;
use uuid::Uuid;

use crate::actor::Actor;
use crate::store::{Store, StoreError};
use jwt::JwtCodec;
use key_cache::KeyCache;
use key_misses::KeyMisses;
use revocation::{Grant, Revocations};
use secret::ServerKeys;

/// The server's keys in the forms the request path needs them, and what ended.
pub struct Authenticator {
    pub keys: ServerKeys,
    pub jwt: JwtCodec,
    pub revocations: Revocations,
    pub misses: KeyMisses,
    pub verified: KeyCache,
}

impl Authenticator {
    /// Without a cache of verified API keys (see [`Self::with_key_cache`]).
    pub fn new(keys: ServerKeys, access_ttl_secs: u64) -> Self {
        Self {
            jwt: JwtCodec::new(&keys.jwt),
            misses: KeyMisses::default(),
            keys,
            revocations: Revocations::new(access_ttl_secs),
            verified: KeyCache::new(0, Duration::ZERO),
        }
    }

    /// Trusts a verified API key for `ttl` (never longer than the revocations remember what
    /// ended), up to `capacity` keys.
    pub fn with_key_cache(self, capacity: usize, ttl: Duration) -> Self {
        let window = self.revocations.window().to_std().unwrap_or_default();
        Self {
            verified: KeyCache::new(capacity, ttl.min(window)),
            ..self
        }
    }

    /// This node revoked (`revoked`) or rotated key `key_id` with the event at `sequence`:
    /// it ends here at once, on other nodes when their revocation feed reads it.
    pub fn key_changed(&self, key_id: Uuid, sequence: usize, revoked: bool) {
        self.revocations.key_changed(key_id, sequence, revoked);
        self.verified.forget(key_id);
    }
}

/// What a request's credentials turned out to be.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No credentials were sent.
    Anonymous,
    Actor(Actor),
    /// Credentials were sent and are not valid (unknown, expired, revoked, malformed).
    Invalid,
    /// The store could not be asked.
    Unavailable,
}

enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

/// A bearer token by its shape: API keys start with `chr_`, anything else is a JWT.
fn bearer(token: &str) -> Credential<'_> {
    if token.starts_with(keys::KEY_PREFIX) {
        Credential::ApiKey(token)
    } else {
        Credential::Jwt(token)
    }
}

/// `Authorization: Bearer <jwt | chr_ key>` wins over `X-API-Key: <chr_ key>`, which wins
/// over a token from the query (`query_token`, accepted only where a browser cannot send
/// headers: WebSocket upgrades).
fn credential<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Result<Option<Credential<'a>>, ()> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ())?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(());
        }
        return Ok(Some(bearer(token.trim())));
    }
    if let Some(value) = headers.get("x-api-key") {
        return Ok(Some(Credential::ApiKey(
            value.to_str().map_err(|_| ())?.trim(),
        )));
    }
    Ok(query_token.map(|token| bearer(token.trim())))
}

/// Who the request's credentials name, and what they granted (for a socket to watch).
pub async fn authenticate(
    store: &Store,
    auth: &Authenticator,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> (Authentication, Option<Grant>) {
    match credential(headers, query_token) {
        Ok(None) => (Authentication::Anonymous, None),
        Err(()) => (Authentication::Invalid, None),
        Ok(Some(credential)) => check(store, auth, credential).await,
    }
}

/// A bare access token or API key, as a socket's `auth` message carries it.
pub async fn authenticate_bearer(
    store: &Store,
    auth: &Authenticator,
    token: &str,
) -> (Authentication, Option<Grant>) {
    check(store, auth, bearer(token.trim())).await
}

async fn check(
    store: &Store,
    auth: &Authenticator,
    credential: Credential<'_>,
) -> (Authentication, Option<Grant>) {
    match credential {
        Credential::Jwt(token) => match auth.jwt.verify(token) {
            Ok(claims) => {
                let grant = Grant::token(&claims);
                if auth.revocations.revoked(&grant).is_some() {
                    return (Authentication::Invalid, None);
                }
                let actor = Actor::user(claims.sub, claims.roles);
                (Authentication::Actor(actor), Some(grant))
            }
            Err(_) => (Authentication::Invalid, None),
        },
        Credential::ApiKey(raw) if auth.misses.recalls(raw, Instant::now()) => {
            (Authentication::Invalid, None)
        }
        Credential::ApiKey(raw) => match api_key_actor(store, auth, raw).await {
            Ok(Some((actor, grant))) => (Authentication::Actor(actor), Some(grant)),
            Ok(None) => {
                auth.misses.remember(raw, Instant::now());
                (Authentication::Invalid, None)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot check an API key");
                (Authentication::Unavailable, None)
            }
        },
    }
}

/// The owner of a usable API key, with the roles they hold now.
async fn api_key_actor(
    store: &Store,
    auth: &Authenticator,
    raw: &str,
) -> Result<Option<(Actor, Grant)>, StoreError> {
    let Some(presented) = keys::parse(raw) else {
        return Ok(None);
    };
    let checked_at = Instant::now();
    if let Some(hit) = auth.verified.get(
        &presented,
        &auth.keys.api_key,
        &auth.revocations,
        checked_at,
    ) {
        return Ok(Some(hit));
    }
    if auth.revocations.key_revoked(presented.key_id) {
        return Ok(None);
    }
    let loaded = store
        .aggregate::<ApiKey>()
        .load(&presented.key_id.to_string())
        .await?;
    let Some(key) = loaded.aggregate.state() else {
        return Ok(None);
    };
    if !key.is_usable(Utc::now()) || !presented.matches(&auth.keys.api_key, &key.secret_hash) {
        return Ok(None);
    }
    let user = store
        .aggregate::<User>()
        .load(&key.owner_id.to_string())
        .await?;
    let version = |version: usize| i64::try_from(version).unwrap_or(i64::MAX);
    let Some(state) = user.aggregate.state() else {
        return Ok(None);
    };
    let grant = Grant::ApiKey {
        key_id: presented.key_id,
        user_id: state.id,
        key_version: version(loaded.version),
        user_version: version(user.version),
        expires_at: key.expires_at,
    };
    let actor = Actor::user(state.id, state.roles.iter().copied());
    auth.verified.put(
        presented.key_id,
        key.secret_hash.clone(),
        actor.clone(),
        grant.clone(),
        checked_at,
    );
    Ok(Some((actor, grant)))
}
