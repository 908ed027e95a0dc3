//! Why the Team aggregate refuses a command.

use crate::error::{DomainError, RefusalKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamError {
    #[error("the team already exists")]
    AlreadyExists,
    #[error("the team does not exist")]
    NotFound,
    #[error("the team is deleted")]
    Deleted,
    /// The acting user is not a member: the edge answers as if the team did not exist.
    #[error("not a member of the team")]
    NotAMember,
    #[error("your role in the team does not allow this")]
    NotPermitted,
    #[error("no such member")]
    NoSuchMember,
    #[error("already a member of the team")]
    AlreadyMember,
    #[error("no such invitation")]
    NoSuchInvitation,
    #[error("the invitation was accepted already")]
    InvitationUsed,
    #[error("the invitation has expired")]
    InvitationExpired,
    /// Accepting needs the account whose email was invited; to anyone else the invitation
    /// does not exist.
    #[error("the invitation is for another email address")]
    WrongInvitee,
    #[error("the team's last owner cannot leave, be removed or be demoted")]
    LastOwner,
    #[error("the invitation must expire after it is sent")]
    BadExpiry,
    /// Named in the message, so the caller knows what to unshare first.
    #[error("the team still has shared resources: {0}")]
    StillShared(String),
}

impl DomainError for TeamError {
    fn kind(&self) -> RefusalKind {
        match self {
            Self::NotFound
            | Self::NotAMember
            | Self::NoSuchMember
            | Self::NoSuchInvitation
            | Self::WrongInvitee => RefusalKind::NotFound,
            Self::NotPermitted => RefusalKind::Forbidden,
            Self::AlreadyExists
            | Self::Deleted
            | Self::AlreadyMember
            | Self::InvitationUsed
            | Self::InvitationExpired
            | Self::LastOwner
            | Self::StillShared(_) => RefusalKind::Conflict,
            Self::BadExpiry => RefusalKind::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists => "team.already_exists",
            Self::NotFound => "team.not_found",
            Self::Deleted => "team.deleted",
            Self::NotAMember => "team.not_a_member",
            Self::NotPermitted => "team.not_permitted",
            Self::NoSuchMember => "team.no_such_member",
            Self::AlreadyMember => "team.already_member",
            Self::NoSuchInvitation => "team.no_such_invitation",
            Self::InvitationUsed => "team.invitation_used",
            Self::InvitationExpired => "team.invitation_expired",
            Self::WrongInvitee => "team.wrong_invitee",
            Self::LastOwner => "team.last_owner",
            Self::BadExpiry => "team.bad_expiry",
            Self::StillShared(_) => "team.still_shared",
        }
    }
}
