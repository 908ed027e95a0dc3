//! The gate every request passes before its handler: rate-limit per client IP (so that a
//! flood of bogus credentials is refused before it costs a store read), authenticate
//! once, then rate-limit per user when authenticated, per client IP otherwise, and per IP
//! again, more strictly, on `/api/auth/*`. Over the limit → 429 with `Retry-After`. The
//! client IP is [`super::client_ip`]'s: behind a trusted proxy, the address it forwarded;
//! IPv6 clients count by their /64.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::client_ip::ClientIp;
use super::error::ApiError;
use super::{query_token, AppState};
use crate::auth::{authenticate, Authentication};
use crate::config::RateLimitSettings;

/// Forget idle keys every this many checks, so the limiter's memory stays bounded.
const CLEANUP_EVERY: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(Uuid),
    Ip(IpAddr),
}

pub struct RateLimits {
    general: DefaultKeyedRateLimiter<Key>,
    auth: DefaultKeyedRateLimiter<IpAddr>,
    before_auth: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    checks: AtomicU64,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            general: RateLimiter::keyed(per_minute(settings.per_minute)),
            auth: RateLimiter::keyed(per_minute(settings.auth_per_minute)),
            before_auth: RateLimiter::keyed(per_minute(settings.per_ip())),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    fn tidy(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % CLEANUP_EVERY == CLEANUP_EVERY - 1 {
            self.general.retain_recent();
            self.auth.retain_recent();
            self.before_auth.retain_recent();
        }
    }

    /// `Err(seconds to wait)` when `key` is over its limit.
    fn check_general(&self, key: Key) -> Result<(), ApiError> {
        self.tidy();
        self.general
            .check_key(&key)
            .map_err(|not_until| self.too_many(not_until.wait_time_from(self.clock.now())))
    }

    fn check_before_auth(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.before_auth
            .check_key(&ip)
            .map_err(|not_until| self.too_many(not_until.wait_time_from(self.clock.now())))
    }

    fn check_auth(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.auth
            .check_key(&ip)
            .map_err(|not_until| self.too_many(not_until.wait_time_from(self.clock.now())))
    }

    fn too_many(&self, wait: std::time::Duration) -> ApiError {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::TooManyRequests {
            retry_after_secs: secs.max(1),
        }
    }
}

/// Authenticates, applies the limits, and leaves the [`Authentication`] in the request's
/// extensions for the `Actor` extractor.
pub async fn gate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ClientIp>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |client| {
            client.rate_key()
        });
    if let Err(error) = state.limits.check_before_auth(ip) {
        return error.into_response();
    }
    if request.uri().path().starts_with("/api/auth/") {
        if let Err(error) = state.limits.check_auth(ip) {
            return error.into_response();
        }
    }
    let query_token = query_token::websocket_token(&request);
    let (authentication, grant) = authenticate(
        &state.store,
        &state.auth,
        request.headers(),
        query_token.as_deref(),
    )
    .await;
    let key = match &authentication {
        Authentication::Actor(actor) => {
            super::request_span::record_actor(actor);
            Key::User(actor.id)
        }
        _ => Key::Ip(ip),
    };
    if let Err(error) = state.limits.check_general(key) {
        return error.into_response();
    }
    request.extensions_mut().insert(authentication);
    if let Some(grant) = grant {
        request.extensions_mut().insert(grant);
    }
    next.run(request).await
}
