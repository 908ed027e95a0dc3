//! The one authorisation decision: may this actor do this to this resource?
//!
//! A resource belongs to a user (`owner_id`) and may also belong to a team (`team_id`).
//! Admins may do anything; auditors read everything and write nothing; an owner does
//! everything to their own; a team's members act by role — viewers read, members also
//! run, maintainers also change, owners also administer. Whatever a caller may not read
//! does not exist for them (404); what they may read but not change is 403
//! ([`Authz::require`]).

use chronicle_aggregates::agent::AgentState;
use chronicle_aggregates::task::TaskState;
use chronicle_aggregates::workflow::WorkflowState;
use chronicle_aggregates::workflow_run::RunState;
use chronicle_commands::team::TeamRole;
use chronicle_projections::ReadScope;
use uuid::Uuid;

use crate::actor::{Actor, Role};
use crate::teams::TeamDirectory;

/// What is asked, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// See it, its history and its live events.
    Read,
    /// Start work from it: execute a workflow, run a task.
    Run,
    /// Change it: update, cancel, archive, share, invite to a team.
    Write,
    /// Govern it: a team's roles, members and its deletion.
    Admin,
}

/// What kind of thing a resource is; the rules are the same for each, the table test
/// covers them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Agent,
    Workflow,
    WorkflowRun,
    Team,
}

/// What the decision needs to know of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    /// The user it belongs to; nil for a team itself and for the built-in agents.
    pub owner_id: Uuid,
    pub team_id: Option<Uuid>,
}

impl Resource {
    pub fn new(kind: Kind, owner_id: Uuid, team_id: Option<Uuid>) -> Self {
        Self {
            kind,
            owner_id,
            team_id,
        }
    }

    /// A team, governed by its own members.
    pub fn team(team_id: Uuid) -> Self {
        Self::new(Kind::Team, Uuid::nil(), Some(team_id))
    }

    pub fn task(task: &TaskState) -> Self {
        Self::new(Kind::Task, task.owner_id, task.team_id)
    }

    pub fn workflow(workflow: &WorkflowState) -> Self {
        Self::new(Kind::Workflow, workflow.owner_id, workflow.team_id)
    }

    pub fn run(run: &RunState) -> Self {
        Self::new(Kind::WorkflowRun, run.owner_id, run.team_id)
    }

    pub fn agent(agent: &AgentState) -> Self {
        Self::new(Kind::Agent, agent.owner_id, agent.team_id)
    }
}

/// Where the decision looks up team roles.
pub trait Memberships {
    fn role(&self, team_id: Uuid, user_id: Uuid) -> Option<TeamRole>;
}

impl Memberships for TeamDirectory {
    fn role(&self, team_id: Uuid, user_id: Uuid) -> Option<TeamRole> {
        TeamDirectory::role(self, team_id, user_id)
    }
}

/// May `actor` do `action` to `resource`?
pub fn can(
    memberships: &impl Memberships,
    actor: &Actor,
    action: Action,
    resource: &Resource,
) -> bool {
    if actor.has_role(Role::Admin) {
        return true;
    }
    let writes_nothing = actor.has_role(Role::Auditor);
    if action == Action::Read && writes_nothing {
        return true;
    }
    if writes_nothing {
        return false;
    }
    if resource.owner_id == actor.id && resource.kind != Kind::Team {
        return true;
    }
    let Some(role) = resource
        .team_id
        .and_then(|team_id| memberships.role(team_id, actor.id))
    else {
        return false;
    };
    match action {
        Action::Read => true,
        Action::Run => role.runs(),
        Action::Write => role.writes(),
        Action::Admin => role == TeamRole::Owner,
    }
}

/// Why [`Authz::require`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The caller may not even read it: it does not exist for them.
    Hidden,
    /// The caller may read it but not do this.
    Forbidden,
}

/// [`can`] over a node's [`TeamDirectory`]; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Authz {
    pub teams: TeamDirectory,
}

impl Authz {
    pub fn can(&self, actor: &Actor, action: Action, resource: &Resource) -> bool {
        can(&self.teams, actor, action, resource)
    }

    /// `Ok` when allowed; otherwise hidden (404) unless the caller may read it (403).
    pub fn require(
        &self,
        actor: &Actor,
        action: Action,
        resource: &Resource,
    ) -> Result<(), Denied> {
        if self.can(actor, action, resource) {
            Ok(())
        } else if self.can(actor, Action::Read, resource) {
            Err(Denied::Forbidden)
        } else {
            Err(Denied::Hidden)
        }
    }

    /// The teams whose resources `actor` may read, for the lists.
    pub fn readable_teams(&self, actor: &Actor) -> Vec<Uuid> {
        self.teams.team_ids_of(actor.id)
    }

    /// Whose resources `actor` may read, for whatever reads many at once — the lists, the
    /// feed, live subscriptions, sync's pull, analytics and search: exactly the resources
    /// [`can`] lets them read (`readers_are_what_can_reads` proves it), decided now, so a
    /// removed member's next read leaves the team out.
    pub fn readers(&self, actor: &Actor) -> ReadScope {
        scope(actor, self.readable_teams(actor))
    }

    /// What is the caller's own — theirs and their teams' — whatever else their role lets
    /// them read: the live `mine` topic and sync's pull.
    pub fn mine(&self, actor: &Actor) -> ReadScope {
        ReadScope::Of {
            owner_id: actor.id,
            team_ids: self.readable_teams(actor),
        }
    }
}

/// [`Authz::readers`] of an actor in `team_ids` (any role reads).
fn scope(actor: &Actor, team_ids: Vec<Uuid>) -> ReadScope {
    if actor.has_role(Role::Admin) || actor.has_role(Role::Auditor) {
        ReadScope::All
    } else {
        ReadScope::Of {
            owner_id: actor.id,
            team_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Roles(HashMap<(Uuid, Uuid), TeamRole>);

    impl Memberships for Roles {
        fn role(&self, team_id: Uuid, user_id: Uuid) -> Option<TeamRole> {
            self.0.get(&(team_id, user_id)).copied()
        }
    }

    /// Who asks, relative to a resource owned by `owner` and shared with `team`.
    #[derive(Debug, Clone, Copy)]
    enum Caller {
        Owner,
        Team(TeamRole),
        Stranger,
        Auditor,
        Admin,
        /// A member of another team.
        OtherTeam,
    }

    const KINDS: [Kind; 4] = [Kind::Task, Kind::Agent, Kind::Workflow, Kind::WorkflowRun];
    const ACTIONS: [Action; 4] = [Action::Read, Action::Run, Action::Write, Action::Admin];

    /// The expected answer, written out per caller: `[read, run, write, admin]`.
    fn expected(caller: Caller, shared: bool) -> [bool; 4] {
        match caller {
            Caller::Owner | Caller::Admin => [true; 4],
            Caller::Auditor => [true, false, false, false],
            Caller::Stranger | Caller::OtherTeam => [false; 4],
            Caller::Team(_) if !shared => [false; 4],
            Caller::Team(TeamRole::Owner) => [true; 4],
            Caller::Team(TeamRole::Maintainer) => [true, true, true, false],
            Caller::Team(TeamRole::Member) => [true, true, false, false],
            Caller::Team(TeamRole::Viewer) => [true, false, false, false],
        }
    }

    #[test]
    fn roles_times_actions_times_kinds() {
        let (owner, team, other_team) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut roles = HashMap::new();
        let mut callers = vec![
            (Caller::Owner, Actor::user(owner, [Role::User])),
            (Caller::Stranger, Actor::user(Uuid::now_v7(), [Role::User])),
            (
                Caller::Auditor,
                Actor::user(Uuid::now_v7(), [Role::Auditor]),
            ),
            (Caller::Admin, Actor::user(Uuid::now_v7(), [Role::Admin])),
        ];
        let outsider = Uuid::now_v7();
        roles.insert((other_team, outsider), TeamRole::Owner);
        callers.push((Caller::OtherTeam, Actor::user(outsider, [Role::User])));
        for role in TeamRole::ALL {
            let member = Uuid::now_v7();
            roles.insert((team, member), role);
            callers.push((Caller::Team(role), Actor::user(member, [Role::User])));
        }
        let roles = Roles(roles);
        let mut checked = 0;
        for kind in KINDS {
            for shared in [false, true] {
                let resource = Resource::new(kind, owner, shared.then_some(team));
                for (caller, actor) in &callers {
                    for (action, expected) in ACTIONS.iter().zip(expected(*caller, shared)) {
                        assert_eq!(
                            can(&roles, actor, *action, &resource),
                            expected,
                            "{caller:?} {action:?} a {kind:?} (shared: {shared})"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 2 * 9 * 4);
    }

    /// What many-at-once reads admit ([`Authz::readers`]) is what [`can`] lets one read.
    #[test]
    fn readers_are_what_can_reads() {
        let (owner, team, other_team) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut roles = HashMap::new();
        let mut callers = vec![
            (Actor::user(owner, [Role::User]), vec![]),
            (Actor::user(Uuid::now_v7(), [Role::User]), vec![]),
            (Actor::user(Uuid::now_v7(), [Role::Auditor]), vec![]),
            (Actor::user(Uuid::now_v7(), [Role::Admin]), vec![]),
        ];
        let outsider = Uuid::now_v7();
        roles.insert((other_team, outsider), TeamRole::Owner);
        callers.push((Actor::user(outsider, [Role::User]), vec![other_team]));
        for role in TeamRole::ALL {
            let member = Uuid::now_v7();
            roles.insert((team, member), role);
            callers.push((Actor::user(member, [Role::User]), vec![team]));
        }
        let roles = Roles(roles);
        for kind in KINDS {
            for team_id in [None, Some(team), Some(other_team)] {
                let resource = Resource::new(kind, owner, team_id);
                for (actor, teams) in &callers {
                    assert_eq!(
                        scope(actor, teams.clone()).admits(resource.owner_id, resource.team_id),
                        can(&roles, actor, Action::Read, &resource),
                        "{actor:?} reading a {kind:?} of team {team_id:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_team_is_governed_by_its_roles_only() {
        let team = Uuid::now_v7();
        let mut roles = HashMap::new();
        let members: Vec<(TeamRole, Actor)> = TeamRole::ALL
            .into_iter()
            .map(|role| {
                let id = Uuid::now_v7();
                roles.insert((team, id), role);
                (role, Actor::user(id, [Role::User]))
            })
            .collect();
        let roles = Roles(roles);
        let resource = Resource::team(team);
        for (role, actor) in &members {
            let answers: Vec<bool> = ACTIONS
                .iter()
                .map(|action| can(&roles, actor, *action, &resource))
                .collect();
            let expected = match role {
                TeamRole::Owner => vec![true, true, true, true],
                TeamRole::Maintainer => vec![true, true, true, false],
                TeamRole::Member => vec![true, true, false, false],
                TeamRole::Viewer => vec![true, false, false, false],
            };
            assert_eq!(answers, expected, "{role:?}");
        }
        // The nil owner is nobody's.
        let nobody = Actor::user(Uuid::nil(), [Role::User]);
        assert!(!can(&roles, &nobody, Action::Read, &resource));
    }

    #[test]
    fn a_removed_member_is_hidden_at_once() {
        let authz = Authz::default();
        let resource = Resource::new(Kind::Workflow, Uuid::now_v7(), Some(Uuid::now_v7()));
        let stranger = Actor::user(Uuid::now_v7(), [Role::User]);
        assert_eq!(
            authz.require(&stranger, Action::Read, &resource),
            Err(Denied::Hidden)
        );
    }
}
