//! Sharing a resource with a team and taking it back: one path for tasks, workflows and
//! agents. The caller must be allowed to change the resource ([`crate::authz`]: 404 when
//! they may not see it, 403 when they may only look), and to put work in the team
//! ([`team_to_share_with`]); the aggregate decides the rest (an archived workflow, a
//! deregistered agent) and records the change as an event.

use chronicle_aggregates::agent::{Agent, AgentCommand};
use chronicle_aggregates::error::DomainError;
use chronicle_aggregates::task::{Task, TaskCommand};
use chronicle_aggregates::workflow::{Workflow, WorkflowCommand};
use chronicle_aggregates::CommandName;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::RequestMeta;
use super::AppState;
use crate::actor::Actor;
use crate::authz::{Action, Denied, Resource};
use crate::bus::Committed;

/// `POST /api/{tasks,workflows,agents}/{id}/share` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// A team the caller may put this kind of resource in (see each route).
    pub team_id: Uuid,
}

/// The team a new or shared resource is to belong to, if the caller may `action` in it.
/// A team they are not in is as good as none (422 on `team_id`); a team they are in with
/// too small a role is 403.
pub(crate) fn team_to_share_with(
    state: &AppState,
    actor: &Actor,
    action: Action,
    team_id: Uuid,
) -> Result<Uuid, ApiError> {
    match state.authz.require(actor, action, &Resource::team(team_id)) {
        Ok(()) => Ok(team_id),
        Err(Denied::Forbidden) => Err(ApiError::Forbidden),
        Err(Denied::Hidden) => Err(ApiError::validation(
            "team_id",
            "is not a team you belong to",
        )),
    }
}

/// An aggregate that may belong to a team.
pub(crate) trait Shareable: Aggregate<Services = ()> + Clone + 'static
where
    Self::Command: CommandName,
{
    /// What the authorisation needs of it; `None` when it does not exist.
    fn resource(&self) -> Option<Resource>;
    /// The role a caller needs in the team to share this kind of resource with it.
    const IN_TEAM: Action;
    fn share_command(team_id: Uuid, at: DateTime<Utc>) -> Self::Command;
    fn unshare_command(at: DateTime<Utc>) -> Self::Command;
}

impl Shareable for Task {
    fn resource(&self) -> Option<Resource> {
        self.state().map(Resource::task)
    }
    /// Whoever may start work in the team (a member) may hand it a task.
    const IN_TEAM: Action = Action::Run;
    fn share_command(team_id: Uuid, at: DateTime<Utc>) -> TaskCommand {
        TaskCommand::ShareTask { team_id, at }
    }
    fn unshare_command(at: DateTime<Utc>) -> TaskCommand {
        TaskCommand::UnshareTask { at }
    }
}

impl Shareable for Workflow {
    fn resource(&self) -> Option<Resource> {
        self.state().map(Resource::workflow)
    }
    const IN_TEAM: Action = Action::Write;
    fn share_command(team_id: Uuid, at: DateTime<Utc>) -> WorkflowCommand {
        WorkflowCommand::ShareWorkflow { team_id, at }
    }
    fn unshare_command(at: DateTime<Utc>) -> WorkflowCommand {
        WorkflowCommand::UnshareWorkflow { at }
    }
}

impl Shareable for Agent {
    fn resource(&self) -> Option<Resource> {
        self.state().map(Resource::agent)
    }
    const IN_TEAM: Action = Action::Write;
    fn share_command(team_id: Uuid, at: DateTime<Utc>) -> AgentCommand {
        AgentCommand::ShareAgent { team_id, at }
    }
    fn unshare_command(at: DateTime<Utc>) -> AgentCommand {
        AgentCommand::UnshareAgent { at }
    }
}

/// Shares aggregate `id` with `team_id`, or with `None` takes it back from its team; the
/// checks run on the state the command runs on.
pub(crate) async fn share<A>(
    state: &AppState,
    actor: &Actor,
    meta: &RequestMeta,
    id: Uuid,
    team_id: Option<Uuid>,
) -> Result<Committed<A>, ApiError>
where
    A: Shareable,
    A::Command: CommandName,
    A::Error: DomainError + Send + Sync + 'static,
{
    state
        .bus
        .execute::<A, ApiError>(&id.to_string(), &meta.context(actor), meta.if_match, |it| {
            let resource = it.resource().ok_or(ApiError::NotFound)?;
            state.authz.require(actor, Action::Write, &resource)?;
            let at = Utc::now();
            Ok(match team_id {
                Some(team_id) => {
                    A::share_command(team_to_share_with(state, actor, A::IN_TEAM, team_id)?, at)
                }
                None => A::unshare_command(at),
            })
        })
        .await
}
