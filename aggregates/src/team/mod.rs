//! The Team aggregate: a named group of users with roles, who share workflows, agents and
//! tasks. Its creator is its first owner; members join by accepting an invitation sent to
//! their email; a team always keeps at least one owner until it is deleted.

mod error;
mod events;

use std::collections::BTreeMap;

use chronicle_commands::auth::Email;
use chronicle_commands::team::{TeamName, TeamRole};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::TeamError;
pub use events::{
    TeamCreated, TeamDeleted, TeamEvent, TeamInvitationAccepted, TeamMemberInvited,
    TeamMemberRemoved, TeamMemberRoleChanged,
};

/// One member of a team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub email: Email,
    pub role: TeamRole,
    pub joined_at: DateTime<Utc>,
}

/// An invitation not accepted yet (it may have expired).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    pub email: Email,
    pub role: TeamRole,
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A team that exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamState {
    pub id: Uuid,
    pub name: TeamName,
    pub created_at: DateTime<Utc>,
    pub members: BTreeMap<Uuid, Member>,
    /// Open invitations by id; an accepted one moves to `accepted`.
    pub invitations: BTreeMap<Uuid, Invitation>,
    pub accepted: Vec<Uuid>,
    pub deleted: bool,
}

impl TeamState {
    /// The role of `user_id`, if a member.
    pub fn role_of(&self, user_id: Uuid) -> Option<TeamRole> {
        self.members.get(&user_id).map(|member| member.role)
    }

    pub fn owners(&self) -> usize {
        self.members
            .values()
            .filter(|member| member.role == TeamRole::Owner)
            .count()
    }
}

/// The aggregate: empty until `TeamCreated`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Team {
    state: Option<TeamState>,
}

impl Team {
    /// The team, or `None` when no `TeamCreated` has been applied.
    pub fn state(&self) -> Option<&TeamState> {
        self.state.as_ref()
    }
}

/// What can be asked of a team. `by` is the acting user; time and ids come in the command.
#[derive(Debug, Clone, PartialEq)]
pub enum TeamCommand {
    CreateTeam {
        team_id: Uuid,
        name: TeamName,
        owner_id: Uuid,
        owner_email: Email,
        at: DateTime<Utc>,
    },
    /// By an owner or a maintainer; only an owner invites another owner.
    InviteMember {
        by: Uuid,
        invitation_id: Uuid,
        email: Email,
        role: TeamRole,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// By the invitee: `email` is the signed-in account's.
    AcceptInvitation {
        invitation_id: Uuid,
        user_id: Uuid,
        email: Email,
        at: DateTime<Utc>,
    },
    /// By an owner. Making another member `owner` hands ownership on; the last owner is
    /// never demoted.
    ChangeRole {
        by: Uuid,
        user_id: Uuid,
        role: TeamRole,
        at: DateTime<Utc>,
    },
    /// By an owner, or by the member themself (leaving); never the last owner.
    RemoveMember {
        by: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    /// By an owner, when nothing is shared with the team any more: `shared` names what
    /// still is (found by the caller in the read models).
    DeleteTeam {
        by: Uuid,
        shared: Vec<String>,
        at: DateTime<Utc>,
    },
}

crate::command_names!(TeamCommand {
    CreateTeam,
    InviteMember,
    AcceptInvitation,
    ChangeRole,
    RemoveMember,
    DeleteTeam
});

type Decision = Result<TeamEvent, TeamError>;

fn decide(state: Option<&TeamState>, command: TeamCommand) -> Decision {
    if let TeamCommand::CreateTeam {
        team_id,
        name,
        owner_id,
        owner_email,
        at,
    } = command
    {
        if state.is_some() {
            return Err(TeamError::AlreadyExists);
        }
        return Ok(TeamEvent::TeamCreated(TeamCreated {
            team_id,
            name,
            owner_id,
            owner_email,
            at,
        }));
    }
    let state = match state {
        None => return Err(TeamError::NotFound),
        Some(state) if state.deleted => return Err(TeamError::Deleted),
        Some(state) => state,
    };
    match command {
        TeamCommand::CreateTeam { .. } => Err(TeamError::AlreadyExists),
        TeamCommand::InviteMember {
            by,
            invitation_id,
            email,
            role,
            expires_at,
            at,
        } => {
            let inviter = role_of(state, by)?;
            if !inviter.writes() || (role == TeamRole::Owner && inviter != TeamRole::Owner) {
                return Err(TeamError::NotPermitted);
            }
            if state.members.values().any(|member| member.email == email) {
                return Err(TeamError::AlreadyMember);
            }
            if state.invitations.contains_key(&invitation_id)
                || state.accepted.contains(&invitation_id)
            {
                return Err(TeamError::AlreadyExists);
            }
            if expires_at <= at {
                return Err(TeamError::BadExpiry);
            }
            Ok(TeamEvent::MemberInvited(TeamMemberInvited {
                invitation_id,
                email,
                role,
                invited_by: by,
                expires_at,
                at,
            }))
        }
        TeamCommand::AcceptInvitation {
            invitation_id,
            user_id,
            email,
            at,
        } => {
            if state.accepted.contains(&invitation_id) {
                return Err(TeamError::InvitationUsed);
            }
            let invitation = state
                .invitations
                .get(&invitation_id)
                .ok_or(TeamError::NoSuchInvitation)?;
            if invitation.email != email {
                return Err(TeamError::WrongInvitee);
            }
            if at >= invitation.expires_at {
                return Err(TeamError::InvitationExpired);
            }
            if state.members.contains_key(&user_id) {
                return Err(TeamError::AlreadyMember);
            }
            Ok(TeamEvent::InvitationAccepted(TeamInvitationAccepted {
                invitation_id,
                user_id,
                email,
                role: invitation.role,
                at,
            }))
        }
        TeamCommand::ChangeRole {
            by,
            user_id,
            role,
            at,
        } => {
            if role_of(state, by)? != TeamRole::Owner {
                return Err(TeamError::NotPermitted);
            }
            let current = state.role_of(user_id).ok_or(TeamError::NoSuchMember)?;
            if current == TeamRole::Owner && role != TeamRole::Owner && state.owners() == 1 {
                return Err(TeamError::LastOwner);
            }
            Ok(TeamEvent::MemberRoleChanged(TeamMemberRoleChanged {
                user_id,
                role,
                changed_by: by,
                at,
            }))
        }
        TeamCommand::RemoveMember { by, user_id, at } => {
            let actor = role_of(state, by)?;
            if by != user_id && actor != TeamRole::Owner {
                return Err(TeamError::NotPermitted);
            }
            let current = state.role_of(user_id).ok_or(TeamError::NoSuchMember)?;
            if current == TeamRole::Owner && state.owners() == 1 {
                return Err(TeamError::LastOwner);
            }
            Ok(TeamEvent::MemberRemoved(TeamMemberRemoved {
                user_id,
                removed_by: by,
                at,
            }))
        }
        TeamCommand::DeleteTeam { by, shared, at } => {
            if role_of(state, by)? != TeamRole::Owner {
                return Err(TeamError::NotPermitted);
            }
            if !shared.is_empty() {
                return Err(TeamError::StillShared(shared.join(", ")));
            }
            Ok(TeamEvent::TeamDeleted(TeamDeleted { deleted_by: by, at }))
        }
    }
}

/// The acting user's role; a stranger is told the team does not exist for them.
fn role_of(state: &TeamState, user_id: Uuid) -> Result<TeamRole, TeamError> {
    state.role_of(user_id).ok_or(TeamError::NotAMember)
}

impl Aggregate for Team {
    const TYPE: &'static str = "team";
    type Command = TeamCommand;
    type Event = TeamEvent;
    type Error = TeamError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = decide(self.state.as_ref(), command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match (event, self.state.as_mut()) {
            (TeamEvent::TeamCreated(created), _) => {
                let owner = Member {
                    email: created.owner_email,
                    role: TeamRole::Owner,
                    joined_at: created.at,
                };
                self.state = Some(TeamState {
                    id: created.team_id,
                    name: created.name,
                    created_at: created.at,
                    members: BTreeMap::from([(created.owner_id, owner)]),
                    invitations: BTreeMap::new(),
                    accepted: Vec::new(),
                    deleted: false,
                });
            }
            (TeamEvent::MemberInvited(invited), Some(state)) => {
                state.invitations.insert(
                    invited.invitation_id,
                    Invitation {
                        email: invited.email,
                        role: invited.role,
                        invited_by: invited.invited_by,
                        expires_at: invited.expires_at,
                    },
                );
            }
            (TeamEvent::InvitationAccepted(accepted), Some(state)) => {
                state.invitations.remove(&accepted.invitation_id);
                state.accepted.push(accepted.invitation_id);
                state.members.insert(
                    accepted.user_id,
                    Member {
                        email: accepted.email,
                        role: accepted.role,
                        joined_at: accepted.at,
                    },
                );
            }
            (TeamEvent::MemberRoleChanged(changed), Some(state)) => {
                if let Some(member) = state.members.get_mut(&changed.user_id) {
                    member.role = changed.role;
                }
            }
            (TeamEvent::MemberRemoved(removed), Some(state)) => {
                state.members.remove(&removed.user_id);
            }
            (TeamEvent::TeamDeleted(_), Some(state)) => {
                state.deleted = true;
            }
            // Only a corrupt stream has events before its `TeamCreated`.
            (_, None) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
