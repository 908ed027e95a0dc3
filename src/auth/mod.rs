//! Authentication: who a request comes from, and the credentials that say so.
//!
//! Layout:
//! - [`secret`]: the server secret and the keys derived from it.
//! - [`password`]: argon2id hashing on the blocking pool.
//! - [`jwt`]: HS256 access tokens.
//! - [`refresh`]: opaque, MAC'd refresh tokens naming a session and a token.
//! - [`keys`]: self-locating `chr_` API keys, stored as HMACs.
//! - [`key_misses`]: a brief memory of keys that did not authenticate.
//! - [`accounts`]: creating users (register and the CLI), the first one as admin.
//! - [`sessions`]: starting, rotating and ending refresh-token families.

pub mod accounts;
pub mod jwt;
pub mod key_misses;
pub mod keys;
pub mod password;
pub mod refresh;
pub mod secret;
pub mod sessions;

use std::time::Instant;

use axum::http::{header, HeaderMap};
use chronicle_aggregates::api_key::ApiKey;
use chronicle_aggregates::user::User;
use chrono::Utc;

use crate::actor::Actor;
use crate::store::{Store, StoreError};
use jwt::JwtCodec;
use key_misses::KeyMisses;
use secret::ServerKeys;

/// The server's keys in the forms the request path needs them.
pub struct Authenticator {
    pub keys: ServerKeys,
    pub jwt: JwtCodec,
    pub misses: KeyMisses,
}

impl Authenticator {
    pub fn new(keys: ServerKeys) -> Self {
        Self {
            jwt: JwtCodec::new(&keys.jwt),
            misses: KeyMisses::default(),
            keys,
        }
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

pub async fn authenticate(
    store: &Store,
    auth: &Authenticator,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Authentication {
    match credential(headers, query_token) {
        Ok(None) => Authentication::Anonymous,
        Err(()) => Authentication::Invalid,
        Ok(Some(Credential::Jwt(token))) => match auth.jwt.verify(token) {
            Ok(claims) => Authentication::Actor(Actor::user(claims.sub, claims.roles)),
            Err(_) => Authentication::Invalid,
        },
        Ok(Some(Credential::ApiKey(raw))) if auth.misses.recalls(raw, Instant::now()) => {
            Authentication::Invalid
        }
        Ok(Some(Credential::ApiKey(raw))) => match api_key_actor(store, auth, raw).await {
            Ok(Some(actor)) => Authentication::Actor(actor),
            Ok(None) => {
                auth.misses.remember(raw, Instant::now());
                Authentication::Invalid
            }
            Err(error) => {
                tracing::warn!(%error, "cannot check an API key");
                Authentication::Unavailable
            }
        },
    }
}

/// The owner of a usable API key, with the roles they hold now.
async fn api_key_actor(
    store: &Store,
    auth: &Authenticator,
    raw: &str,
) -> Result<Option<Actor>, StoreError> {
    let Some(presented) = keys::parse(raw) else {
        return Ok(None);
    };
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
    Ok(user
        .aggregate
        .state()
        .map(|user| Actor::user(user.id, user.roles.iter().copied())))
}
