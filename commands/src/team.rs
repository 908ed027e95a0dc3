//! Team requests and the values inside them: a team's name and a member's role.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a member of a team may do with the team's resources: owners and maintainers
/// change them, members read and run them, viewers only read. Ordered from most to least.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    Owner,
    Maintainer,
    Member,
    Viewer,
}

impl TeamRole {
    pub const ALL: [Self; 4] = [Self::Owner, Self::Maintainer, Self::Member, Self::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Maintainer => "maintainer",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    /// May change the team's resources (and invite).
    pub fn writes(self) -> bool {
        matches!(self, Self::Owner | Self::Maintainer)
    }

    /// May run the team's workflows and tasks.
    pub fn runs(self) -> bool {
        self != Self::Viewer
    }
}

/// A team's name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TeamName(String);

impl TeamName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("must not be empty");
        }
        if name.chars().count() > Self::MAX_LEN {
            return Err("must be at most 100 characters");
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(TeamName::parse("  Ops ").map(|n| n.0), Ok("Ops".to_owned()));
        assert!(TeamName::parse("   ").is_err());
        assert!(TeamName::parse(&"x".repeat(101)).is_err());
        assert!(TeamName::parse("a\nb").is_err());
    }

    #[test]
    fn roles_read_as_api_md_names_them() {
        for role in TeamRole::ALL {
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, role.as_str());
        }
        assert!(TeamRole::Maintainer.writes() && !TeamRole::Member.writes());
        assert!(TeamRole::Member.runs() && !TeamRole::Viewer.runs());
    }
}
