//! Team events. Type strings and versions are written out, never derived from Rust names,
//! so renaming a variant cannot orphan stored events.

use chronicle_commands::auth::Email;
use chronicle_commands::team::{TeamName, TeamRole};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Serialized externally tagged; each `rename` equals its `event_type()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TeamEvent {
    #[serde(rename = "TeamCreated")]
    TeamCreated(TeamCreated),
    #[serde(rename = "TeamMemberInvited")]
    MemberInvited(TeamMemberInvited),
    #[serde(rename = "TeamInvitationAccepted")]
    InvitationAccepted(TeamInvitationAccepted),
    #[serde(rename = "TeamMemberRoleChanged")]
    MemberRoleChanged(TeamMemberRoleChanged),
    #[serde(rename = "TeamMemberRemoved")]
    MemberRemoved(TeamMemberRemoved),
    #[serde(rename = "TeamDeleted")]
    TeamDeleted(TeamDeleted),
}

/// The team exists; its creator is its first owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamCreated {
    pub team_id: Uuid,
    pub name: TeamName,
    pub owner_id: Uuid,
    pub owner_email: Email,
    pub at: DateTime<Utc>,
}

/// An invitation to the holder of `email`, open until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamMemberInvited {
    pub invitation_id: Uuid,
    pub email: Email,
    pub role: TeamRole,
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// The invitee, signed in with the invited email, joined with the invitation's role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamInvitationAccepted {
    pub invitation_id: Uuid,
    pub user_id: Uuid,
    pub email: Email,
    pub role: TeamRole,
    pub at: DateTime<Utc>,
}

/// A member's role changed; to `owner` is how ownership is handed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamMemberRoleChanged {
    pub user_id: Uuid,
    pub role: TeamRole,
    pub changed_by: Uuid,
    pub at: DateTime<Utc>,
}

/// A member left (`removed_by` is themself) or was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamMemberRemoved {
    pub user_id: Uuid,
    pub removed_by: Uuid,
    pub at: DateTime<Utc>,
}

/// The end of the team: no member has access through it any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamDeleted {
    pub deleted_by: Uuid,
    pub at: DateTime<Utc>,
}

impl DomainEvent for TeamEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TeamCreated(_) => "TeamCreated",
            Self::MemberInvited(_) => "TeamMemberInvited",
            Self::InvitationAccepted(_) => "TeamInvitationAccepted",
            Self::MemberRoleChanged(_) => "TeamMemberRoleChanged",
            Self::MemberRemoved(_) => "TeamMemberRemoved",
            Self::TeamDeleted(_) => "TeamDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::TeamCreated(_)
            | Self::MemberInvited(_)
            | Self::InvitationAccepted(_)
            | Self::MemberRoleChanged(_)
            | Self::MemberRemoved(_)
            | Self::TeamDeleted(_) => "1.0",
        }
        .to_owned()
    }
}
