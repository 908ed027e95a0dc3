//! `/api/auth/*`: register, login, refresh, logout.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chronicle_aggregates::email_claim::EmailClaim;
use chronicle_aggregates::user::{User, UserState};
use chronicle_commands::auth::{LoginRequest, RefreshRequest, RegisterRequest, Role};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, MaybeActor, RequestMeta};
use super::AppState;
use crate::actor::Actor;
use crate::auth::accounts::{self, RoleChoice};
use crate::auth::password;
use crate::auth::sessions::{Sessions, TokenPair};
use crate::bus::CommandContext;
use crate::config::Registration;

/// What sessions are made with, from the server's state.
fn sessions(state: &AppState) -> Sessions<'_> {
    Sessions {
        bus: &state.bus,
        auth: &state.auth,
        settings: &state.settings.auth,
    }
}

/// The request's metadata for a credential's events; the credential names the actor.
fn origin(meta: &RequestMeta) -> CommandContext {
    CommandContext {
        actor: String::new(),
        ..meta.context(&Actor::system())
    }
}

/// `User` of API.md; never the password hash.
#[derive(Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub roles: Vec<Role>,
    pub created_at: DateTime<Utc>,
}

impl From<&UserState> for UserView {
    fn from(user: &UserState) -> Self {
        Self {
            id: user.id,
            email: user.email.to_string(),
            display_name: user.display_name.to_string(),
            roles: user.roles.iter().copied().collect(),
            created_at: user.created_at,
        }
    }
}

/// A `TokenPair` and the user it is for.
#[derive(Serialize, ToSchema)]
pub struct SignedIn {
    #[serde(flatten)]
    tokens: TokenPair,
    user: UserView,
}

/// Register a user and sign them in.
///
/// The first user of an empty system becomes admin. With registration closed, only an
/// admin may register someone (then the admin's credentials are required).
#[utoipa::path(
    post,
    path = "/auth/register",
    operation_id = "register_user",
    tag = "auth",
    security((), ("bearer_jwt" = []), ("bearer_api_key" = []), ("api_key" = [])),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and signed in", body = SignedIn),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "Registration is closed and the caller is not an admin"),
        (status = 409, description = "The email is taken"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn register(
    State(state): State<AppState>,
    MaybeActor(caller): MaybeActor,
    meta: RequestMeta,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<SignedIn>), ApiError> {
    let is_admin = caller.as_ref().is_some_and(|c| c.has_role(Role::Admin));
    if state.settings.registration == Registration::Closed && !is_admin {
        return Err(ApiError::Forbidden);
    }
    let registration = request.validate()?;
    let mut context = meta.context(caller.as_ref().unwrap_or(&Actor::system()));
    if caller.is_none() {
        // The new user is the actor of their own registration.
        context.actor.clear();
    }
    let user =
        accounts::create_user(&state.bus, registration, RoleChoice::FirstIsAdmin, context).await?;
    tracing::info!(user_id = %user.id, "user registered");
    let tokens = sessions(&state).start(&user, &origin(&meta)).await?;
    Ok((
        StatusCode::CREATED,
        Json(SignedIn {
            tokens,
            user: UserView::from(&user),
        }),
    ))
}

/// Sign in with email and password.
#[utoipa::path(
    post,
    path = "/auth/login",
    operation_id = "login",
    tag = "auth",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = SignedIn),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "Wrong email or password (which one is not said)"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<SignedIn>, ApiError> {
    let login = request.validate()?;
    let claim = state
        .store
        .aggregate::<EmailClaim>()
        .load(login.email.as_str())
        .await?;
    let user = match claim.aggregate.state() {
        Some(claim) => state
            .store
            .aggregate::<User>()
            .load(&claim.user_id.to_string())
            .await?
            .aggregate
            .state()
            .cloned(),
        None => None,
    };
    let verified = password::verify(
        login.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let user = match user {
        Some(user) if verified => user,
        _ => return Err(ApiError::Unauthorized("invalid email or password")),
    };
    let tokens = sessions(&state).start(&user, &origin(&meta)).await?;
    Ok(Json(SignedIn {
        tokens,
        user: UserView::from(&user),
    }))
}

/// Trade a refresh token for a new token pair.
///
/// The old refresh token is dead afterwards; presenting a dead one again revokes its whole
/// family.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    operation_id = "refresh_tokens",
    tag = "auth",
    security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "The refresh token is not valid, expired, revoked or reused"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let raw = request.validate()?;
    let answer = sessions(&state).refresh(&raw, &origin(&meta)).await;
    if answer.is_err() {
        // A reused token may have just revoked its session: every node's revocations
        // look now (see `auth::revocation`).
        state.read.notify();
    }
    Ok(Json(answer?))
}

/// End the session of a refresh token.
#[utoipa::path(
    post,
    path = "/auth/logout",
    operation_id = "logout",
    tag = "auth",
    security(()),
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "The session is over"),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "The refresh token is not valid"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "An invalid field"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let raw = request.validate()?;
    sessions(&state).end(&raw, &origin(&meta)).await?;
    // Its access tokens end now on every node (see `auth::revocation`).
    state.read.notify();
    Ok(StatusCode::NO_CONTENT)
}
