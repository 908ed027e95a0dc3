//! Whose rows a reader sees: every row, or one user's and those of the teams they are in.
//! The runtime's authorisation (`authz`) decides the scope; the read models only apply it,
//! each in its own query, with the same SQL text for both backends.

use uuid::Uuid;

/// A reader's scope over owned (and team-shared) rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Auditors and admins.
    All,
    /// The rows `owner_id` owns and those shared with one of `team_ids`.
    Of { owner_id: Uuid, team_ids: Vec<Uuid> },
}

impl ReadScope {
    /// A user who reads only their own rows (no teams).
    pub fn owner(owner_id: Uuid) -> Self {
        Self::Of {
            owner_id,
            team_ids: Vec::new(),
        }
    }

    /// The owner to bind, `None` for everyone's rows.
    pub fn owner_param(&self) -> Option<String> {
        match self {
            Self::All => None,
            Self::Of { owner_id, .. } => Some(owner_id.to_string()),
        }
    }

    /// The teams as one text parameter, `,id,id,` (`,` for none): a row's team is in the
    /// scope when `($n <> ',' AND $n LIKE '%,' || team_id || ',%')`, which both backends
    /// read alike (ids are UUIDs: no `%` or `_` in them). The `<> ','` guard lets the
    /// planner drop the team branch for a reader in no team, so the owner index serves
    /// their lists as before teams existed.
    pub fn teams_param(&self) -> String {
        match self {
            Self::All => ",".to_owned(),
            Self::Of { team_ids, .. } => {
                let mut text = String::from(",");
                for id in team_ids {
                    text.push_str(&id.to_string());
                    text.push(',');
                }
                text
            }
        }
    }

    /// Whether a row of `owner_id`, shared with `team_id`, is in the scope.
    pub fn admits(&self, owner_id: Uuid, team_id: Option<Uuid>) -> bool {
        match self {
            Self::All => true,
            Self::Of {
                owner_id: me,
                team_ids,
            } => *me == owner_id || team_id.is_some_and(|team| team_ids.contains(&team)),
        }
    }

    /// Whether `team_id` is one of the scope's teams (everyone's for [`Self::All`]).
    pub fn has_team(&self, team_id: Uuid) -> bool {
        match self {
            Self::All => true,
            Self::Of { team_ids, .. } => team_ids.contains(&team_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teams_parameter_is_delimited_on_both_sides() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let scope = ReadScope::Of {
            owner_id: Uuid::now_v7(),
            team_ids: vec![a, b],
        };
        assert_eq!(scope.teams_param(), format!(",{a},{b},"));
        assert_eq!(ReadScope::owner(a).teams_param(), ",");
        assert!(scope.admits(Uuid::now_v7(), Some(b)));
        assert!(!scope.admits(Uuid::now_v7(), None));
        assert!(ReadScope::All.admits(Uuid::now_v7(), None));
    }
}
