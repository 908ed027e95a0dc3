//! Who is acting: the caller of a request, an agent, or Chronicle itself.

use std::fmt;

use uuid::Uuid;

/// What an actor may do beyond its own resources: the roles a user holds.
pub use chronicle_commands::auth::Role;

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
    /// A user authenticated with these roles.
    pub fn user(id: Uuid, roles: impl IntoIterator<Item = Role>) -> Self {
        Self {
            id,
            kind: ActorKind::User,
            roles: roles.into_iter().collect(),
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

    /// May this actor create resources of its own? Auditors write nothing.
    pub fn can_create(&self) -> bool {
        !self.has_role(Role::Auditor) || self.has_role(Role::Admin)
    }

    /// May this actor change a resource owned by `owner`?
    pub fn can_write(&self, owner: Uuid) -> bool {
        (owner == self.id && self.can_create()) || self.has_role(Role::Admin)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auditors_read_everything_and_write_nothing() {
        let owner = Uuid::now_v7();
        let auditor = Actor::user(Uuid::now_v7(), [Role::Auditor]);
        assert!(auditor.can_read(owner));
        assert!(!auditor.can_write(owner));
        assert!(!auditor.can_write(auditor.id));
        assert!(!auditor.can_create());
        let user = Actor::user(owner, [Role::User]);
        assert!(user.can_read(owner) && user.can_write(owner) && user.can_create());
        let stranger = Actor::user(Uuid::now_v7(), [Role::User]);
        assert!(!stranger.can_read(owner) && !stranger.can_write(owner));
        let admin = Actor::user(Uuid::now_v7(), [Role::Admin]);
        assert!(admin.can_read(owner) && admin.can_write(owner) && admin.can_create());
    }
}
