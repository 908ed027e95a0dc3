//! Who is acting: the caller of a request, an agent, or Chronicle itself.

use std::fmt;

use uuid::Uuid;

/// What an actor may do beyond its own resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Own resources only.
    User,
    /// Reads everything, writes nothing.
    Auditor,
    /// May do all.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    User,
    Agent,
    System,
}

/// The caller on whose behalf a command runs; recorded as `metadata.actor` on every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    pub kind: ActorKind,
    pub roles: Vec<Role>,
}

impl Actor {
    /// The single local user that every request acts as until authentication is
    /// configured (see README, "Development user").
    pub fn development_user() -> Self {
        Self {
            id: Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001),
            kind: ActorKind::User,
            roles: vec![Role::User],
        }
    }

    pub fn system() -> Self {
        Self {
            id: Uuid::nil(),
            kind: ActorKind::System,
            roles: vec![Role::Admin],
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// May this actor see every user's resources?
    pub fn can_read_all(&self) -> bool {
        self.has_role(Role::Admin) || self.has_role(Role::Auditor)
    }

    /// May this actor see a resource owned by `owner`?
    pub fn can_read(&self, owner: Uuid) -> bool {
        owner == self.id || self.has_role(Role::Admin) || self.has_role(Role::Auditor)
    }

    /// May this actor change a resource owned by `owner`?
    pub fn can_write(&self, owner: Uuid) -> bool {
        (owner == self.id && !self.has_role(Role::Auditor)) || self.has_role(Role::Admin)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ActorKind::User => "user",
            ActorKind::Agent => "agent",
            ActorKind::System => "system",
        };
        write!(f, "{kind}:{}", self.id)
    }
}
