//! `/api/teams` and `/api/invitations`: teams, their members and roles, invitations by
//! email. The Team aggregate decides who may change what; [`crate::authz`] hides a team
//! from whoever is not in it (404). Every commit is learnt by this node's team directory
//! (which the authorisation reads) and the team view (which the reads answer from) at
//! once, and by the other nodes from the feed.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chronicle_aggregates::team::{Team, TeamCommand, TeamState};
use chronicle_aggregates::user::User;
use chronicle_commands::auth::Email;
use chronicle_commands::team::{TeamName, TeamRole};
use chronicle_projections::agent_view::AgentView;
use chronicle_projections::task_view::TaskView;
use chronicle_projections::team_view::TeamView;
use chronicle_projections::workflow_view::WorkflowView;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, IdPath, RequestMeta};
use super::paging::{Page, Paging};
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Resource};
use crate::bus::Committed;

/// How long an invitation stays open.
const INVITATION_TTL_DAYS: i64 = 7;

/// How many shared resources a refused delete names.
const NAMED_IN_REFUSAL: u32 = 5;

/// One member of a team.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBody {
    pub user_id: Uuid,
    pub email: String,
    pub role: TeamRole,
}

/// A team and its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamBody {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Ordered by user id.
    pub members: Vec<MemberBody>,
}

impl From<&TeamState> for TeamBody {
    fn from(team: &TeamState) -> Self {
        Self {
            id: team.id,
            name: team.name.as_str().to_owned(),
            created_at: team.created_at,
            members: team
                .members
                .iter()
                .map(|(user_id, member)| MemberBody {
                    user_id: *user_id,
                    email: member.email.as_str().to_owned(),
                    role: member.role,
                })
                .collect(),
        }
    }
}

/// An invitation, as its sender sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationBody {
    pub id: Uuid,
    pub team_id: Uuid,
    pub email: String,
    pub role: TeamRole,
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/teams` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeamRequest {
    /// 1 to 100 characters, trimmed.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// `POST /api/teams/{id}/invitations` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The account that may accept: whoever signs in with this email.
    pub email: String,
    /// Only an owner invites an owner.
    pub role: TeamRole,
}

/// `PATCH /api/teams/{id}/members/{user_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    /// `owner` hands ownership on (the last owner is never demoted).
    pub role: TeamRole,
}

/// `GET /api/teams` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// `/teams/{id}/members/{user_id}`.
pub struct MemberPath {
    team_id: Uuid,
    user_id: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for MemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((team, user)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        match (Uuid::parse_str(&team), Uuid::parse_str(&user)) {
            (Ok(team_id), Ok(user_id)) => Ok(Self { team_id, user_id }),
            _ => Err(ApiError::NotFound),
        }
    }
}

/// The caller's email, as their account has it.
async fn email_of(state: &AppState, actor: &Actor) -> Result<Email, ApiError> {
    let loaded = state
        .store
        .aggregate::<User>()
        .load(&actor.id.to_string())
        .await?;
    loaded
        .aggregate
        .state()
        .map(|user| user.email.clone())
        // API keys and tokens name a user; one without an account has no email to match.
        .ok_or(ApiError::Forbidden)
}

/// 404 unless the caller is in the team (or reads everything).
fn visible(state: &AppState, actor: &Actor, team_id: Uuid) -> Result<(), ApiError> {
    if state
        .authz
        .can(actor, Action::Read, &Resource::team(team_id))
    {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

/// Runs a command on the team and tells this node's directory at once.
async fn team_command(
    state: &AppState,
    actor: &Actor,
    meta: &RequestMeta,
    team_id: Uuid,
    command: impl Fn(&Team) -> Result<TeamCommand, ApiError>,
) -> Result<Committed<Team>, ApiError> {
    let committed = state
        .bus
        .execute::<Team, ApiError>(
            &team_id.to_string(),
            &meta.context(actor),
            meta.if_match,
            command,
        )
        .await?;
    learn(state, &committed).await;
    Ok(committed)
}

/// Tells this node's directory (the authorisation) and the team view of a committed team
/// at once, so the caller reads its own write either way.
async fn learn(state: &AppState, committed: &Committed<Team>) {
    state
        .authz
        .teams
        .learn(&committed.aggregate, committed.version);
    state
        .read
        .team_committed(&committed.aggregate, committed.version)
        .await;
}

fn team_answer(status: StatusCode, team: &Team) -> Result<Response, ApiError> {
    let body = team
        .state()
        .filter(|team| !team.deleted)
        .map(TeamBody::from)
        .ok_or(ApiError::NotFound)?;
    Ok((status, Json(body)).into_response())
}

/// Create a team; the caller is its owner.
#[utoipa::path(
    post,
    path = "/teams",
    operation_id = "create_team",
    tag = "teams",
    request_body = CreateTeamRequest,
    responses(
        (status = 201, description = "Created", body = TeamBody),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller may not create (auditor)"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "A bad `name`"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id))]
pub async fn create(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ApiJson(request): ApiJson<CreateTeamRequest>,
) -> Result<Response, ApiError> {
    if !actor.can_create() {
        return Err(ApiError::Forbidden);
    }
    let name = TeamName::parse(&request.name).map_err(|e| ApiError::validation("name", e))?;
    let owner_email = email_of(&state, &actor).await?;
    let team_id = Uuid::now_v7();
    tracing::Span::current().record("team_id", tracing::field::display(team_id));
    let committed = state
        .bus
        .create::<Team, ApiError>(&team_id.to_string(), &meta.context(&actor), |_| {
            Ok(TeamCommand::CreateTeam {
                team_id,
                name: name.clone(),
                owner_id: actor.id,
                owner_email: owner_email.clone(),
                at: Utc::now(),
            })
        })
        .await?;
    learn(&state, &committed).await;
    team_answer(StatusCode::CREATED, &committed.aggregate)
}

/// The teams the caller belongs to, newest first.
#[utoipa::path(
    get,
    path = "/teams",
    operation_id = "list_teams",
    tag = "teams",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's teams", body = Page<TeamBody>),
        (status = 422, description = "A bad query parameter"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<TeamBody>>, ApiError> {
    let paging = Paging::parse(query.limit, query.cursor.as_deref())?;
    let rows = TeamView::of_member(&state.read.db, actor.id, paging.before_id, paging.fetch())
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(paging.page(
        rows,
        |row| row.state().map(TeamBody::from),
        |team| team.id,
    )))
}

/// Read a team and its members.
#[utoipa::path(
    get,
    path = "/teams/{id}",
    operation_id = "get_team",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The team's id")),
    responses(
        (status = 200, description = "The team", body = TeamBody),
        (status = 404, description = "No such team, or the caller is not in it"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    actor: Actor,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    visible(&state, &actor, id)?;
    let row = TeamView::get(&state.read.db, id)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let team = match row {
        Some(row) => row.team,
        // Not in the view yet (its inline write failed): the event store answers.
        None => {
            state
                .store
                .aggregate::<Team>()
                .load(&id.to_string())
                .await?
                .aggregate
        }
    };
    team_answer(StatusCode::OK, &team)
}

/// Delete a team (its owners only), once nothing is shared with it any more; otherwise 409
/// naming what still is.
#[utoipa::path(
    delete,
    path = "/teams/{id}",
    operation_id = "delete_team",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The team's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is in the team but not an owner"),
        (status = 404, description = "No such team, or the caller is not in it"),
        (status = 409, description = "Workflows (not archived), agents (not deregistered) or unfinished tasks are still shared with the team (`team.still_shared`, named in `detail`)"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    visible(&state, &actor, id)?;
    let shared = still_shared(&state, id).await?;
    team_command(&state, &actor, &meta, id, |_| {
        Ok(TeamCommand::DeleteTeam {
            by: actor.id,
            shared: shared.clone(),
            at: Utc::now(),
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What is still shared with a team, named (at most [`NAMED_IN_REFUSAL`] of each kind):
/// workflows not archived, agents not deregistered and unfinished tasks.
async fn still_shared(state: &AppState, team_id: Uuid) -> Result<Vec<String>, ApiError> {
    let db = &state.read.db;
    let internal = |e| ApiError::Internal(Box::new(e));
    let workflows = WorkflowView::shared_with(db, team_id, NAMED_IN_REFUSAL)
        .await
        .map_err(internal)?;
    let agents = AgentView::shared_with(db, team_id, NAMED_IN_REFUSAL)
        .await
        .map_err(internal)?;
    let tasks = TaskView::shared_with(db, team_id, NAMED_IN_REFUSAL)
        .await
        .map_err(internal)?;
    let named = |kind: &str, ids: Vec<String>| -> Vec<String> {
        ids.into_iter().map(|id| format!("{kind} {id}")).collect()
    };
    Ok([
        named("workflow", workflows),
        named("agent", agents),
        named("task", tasks),
    ]
    .concat())
}

/// Invite whoever holds an email address, with a role; they accept while signed in.
#[utoipa::path(
    post,
    path = "/teams/{id}/invitations",
    operation_id = "invite_to_team",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The team's id")),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "The invitation, open for 7 days", body = InvitationBody),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller is a member or viewer, or a maintainer inviting an owner"),
        (status = 404, description = "No such team, or the caller is not in it"),
        (status = 409, description = "The email is a member's already"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "A bad `email` or `role`"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id = %id, invitation_id))]
pub async fn invite(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
    ApiJson(request): ApiJson<InviteRequest>,
) -> Result<Response, ApiError> {
    visible(&state, &actor, id)?;
    let email = Email::parse(&request.email).map_err(|e| ApiError::validation("email", e))?;
    let invitation_id = Uuid::now_v7();
    tracing::Span::current().record("invitation_id", tracing::field::display(invitation_id));
    let at = Utc::now();
    let expires_at = at + Duration::days(INVITATION_TTL_DAYS);
    team_command(&state, &actor, &meta, id, |_| {
        Ok(TeamCommand::InviteMember {
            by: actor.id,
            invitation_id,
            email: email.clone(),
            role: request.role,
            expires_at,
            at,
        })
    })
    .await?;
    let body = InvitationBody {
        id: invitation_id,
        team_id: id,
        email: email.as_str().to_owned(),
        role: request.role,
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Accept an invitation: the caller must be signed in with the invited email.
#[utoipa::path(
    post,
    path = "/invitations/{id}/accept",
    operation_id = "accept_invitation",
    tag = "teams",
    params(("id" = Uuid, Path, description = "The invitation's id")),
    responses(
        (status = 200, description = "The team joined", body = TeamBody),
        (status = 404, description = "No such invitation, or it is for another email"),
        (status = 409, description = "Accepted already, expired, or the caller is a member already"),
    ),
)]
#[tracing::instrument(skip_all, fields(invitation_id = %id))]
pub async fn accept(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let team_id = state
        .authz
        .teams
        .invitation_team(id)
        .ok_or(ApiError::NotFound)?;
    let email = email_of(&state, &actor).await?;
    let committed = team_command(&state, &actor, &meta, team_id, |_| {
        Ok(TeamCommand::AcceptInvitation {
            invitation_id: id,
            user_id: actor.id,
            email: email.clone(),
            at: Utc::now(),
        })
    })
    .await?;
    team_answer(StatusCode::OK, &committed.aggregate)
}

/// Change a member's role (owners only); `owner` hands ownership on.
#[utoipa::path(
    patch,
    path = "/teams/{id}/members/{user_id}",
    operation_id = "change_team_member_role",
    tag = "teams",
    params(
        ("id" = Uuid, Path, description = "The team's id"),
        ("user_id" = Uuid, Path, description = "The member's user id"),
    ),
    request_body = ChangeRoleRequest,
    responses(
        (status = 200, description = "The team after the change", body = TeamBody),
        (status = 400, description = "Malformed JSON"),
        (status = 403, description = "The caller is in the team but not an owner"),
        (status = 404, description = "No such team or member, or the caller is not in it"),
        (status = 409, description = "That would leave the team without an owner (`team.last_owner`)"),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The body is not JSON"),
        (status = 422, description = "A bad `role`"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id = %ids.team_id, user_id = %ids.user_id))]
pub async fn change_role(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ids: MemberPath,
    ApiJson(request): ApiJson<ChangeRoleRequest>,
) -> Result<Response, ApiError> {
    visible(&state, &actor, ids.team_id)?;
    let committed = team_command(&state, &actor, &meta, ids.team_id, |_| {
        Ok(TeamCommand::ChangeRole {
            by: actor.id,
            user_id: ids.user_id,
            role: request.role,
            at: Utc::now(),
        })
    })
    .await?;
    team_answer(StatusCode::OK, &committed.aggregate)
}

/// Remove a member (owners), or leave (any member, their own id). Their access to the
/// team's resources ends at once, on open sockets too.
#[utoipa::path(
    delete,
    path = "/teams/{id}/members/{user_id}",
    operation_id = "remove_team_member",
    tag = "teams",
    params(
        ("id" = Uuid, Path, description = "The team's id"),
        ("user_id" = Uuid, Path, description = "The member's user id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller is in the team but not an owner, and not removing themself"),
        (status = 404, description = "No such team or member, or the caller is not in it"),
        (status = 409, description = "The team's last owner cannot leave (`team.last_owner`)"),
    ),
)]
#[tracing::instrument(skip_all, fields(team_id = %ids.team_id, user_id = %ids.user_id))]
pub async fn remove_member(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    ids: MemberPath,
) -> Result<Response, ApiError> {
    visible(&state, &actor, ids.team_id)?;
    team_command(&state, &actor, &meta, ids.team_id, |_| {
        Ok(TeamCommand::RemoveMember {
            by: actor.id,
            user_id: ids.user_id,
            at: Utc::now(),
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
