//! Given/when/then tests of the Team aggregate, and a property test over random command
//! sequences: the team never loses its last owner and a user is a member at most once.

use chrono::TimeZone;
use cqrs_es::test::TestFramework;

use super::*;
use crate::error::{DomainError, RefusalKind};

type TeamTest = TestFramework<Team>;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).unwrap()
}

fn team_id() -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_7e01)
}

fn user(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 + n)
}

fn email(n: u128) -> Email {
    Email::parse(&format!("user{n}@example.com")).unwrap()
}

fn invitation(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0001_0000 + n)
}

fn created() -> TeamEvent {
    TeamEvent::TeamCreated(TeamCreated {
        team_id: team_id(),
        name: TeamName::parse("Ops").unwrap(),
        owner_id: user(1),
        owner_email: email(1),
        at: at(0),
    })
}

fn invited(n: u128, role: TeamRole) -> TeamEvent {
    TeamEvent::MemberInvited(TeamMemberInvited {
        invitation_id: invitation(n),
        email: email(n),
        role,
        invited_by: user(1),
        expires_at: at(1000),
        at: at(1),
    })
}

fn accepted(n: u128, role: TeamRole) -> TeamEvent {
    TeamEvent::InvitationAccepted(TeamInvitationAccepted {
        invitation_id: invitation(n),
        user_id: user(n),
        email: email(n),
        role,
        at: at(2),
    })
}

/// Created by user 1 (owner), with user 2 joined as `role`.
fn with_member(role: TeamRole) -> Vec<TeamEvent> {
    vec![created(), invited(2, role), accepted(2, role)]
}

fn invite(by: u128, n: u128, role: TeamRole) -> TeamCommand {
    TeamCommand::InviteMember {
        by: user(by),
        invitation_id: invitation(n),
        email: email(n),
        role,
        expires_at: at(1000),
        at: at(1),
    }
}

fn accept(n: u128, at_secs: i64) -> TeamCommand {
    TeamCommand::AcceptInvitation {
        invitation_id: invitation(n),
        user_id: user(n),
        email: email(n),
        at: at(at_secs),
    }
}

#[test]
fn the_creator_is_the_owner() {
    TeamTest::with(())
        .given_no_previous_events()
        .when(TeamCommand::CreateTeam {
            team_id: team_id(),
            name: TeamName::parse("Ops").unwrap(),
            owner_id: user(1),
            owner_email: email(1),
            at: at(0),
        })
        .then_expect_events(vec![created()]);
    let mut team = Team::default();
    team.apply(created());
    assert_eq!(
        team.state().unwrap().role_of(user(1)),
        Some(TeamRole::Owner)
    );
}

#[test]
fn create_twice_is_refused() {
    TeamTest::with(())
        .given(vec![created()])
        .when(TeamCommand::CreateTeam {
            team_id: team_id(),
            name: TeamName::parse("Again").unwrap(),
            owner_id: user(1),
            owner_email: email(1),
            at: at(5),
        })
        .then_expect_error(TeamError::AlreadyExists);
}

#[test]
fn commands_on_no_team_are_not_found() {
    TeamTest::with(())
        .given_no_previous_events()
        .when(invite(1, 2, TeamRole::Member))
        .then_expect_error(TeamError::NotFound);
}

#[test]
fn an_owner_invites() {
    TeamTest::with(())
        .given(vec![created()])
        .when(invite(1, 2, TeamRole::Maintainer))
        .then_expect_events(vec![invited(2, TeamRole::Maintainer)]);
}

#[test]
fn a_maintainer_invites_but_not_an_owner() {
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(invite(2, 3, TeamRole::Viewer))
        .then_expect_events(vec![TeamEvent::MemberInvited(TeamMemberInvited {
            invitation_id: invitation(3),
            email: email(3),
            role: TeamRole::Viewer,
            invited_by: user(2),
            expires_at: at(1000),
            at: at(1),
        })]);
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(invite(2, 3, TeamRole::Owner))
        .then_expect_error(TeamError::NotPermitted);
}

#[test]
fn members_and_viewers_do_not_invite_and_strangers_are_not_members() {
    for role in [TeamRole::Member, TeamRole::Viewer] {
        TeamTest::with(())
            .given(with_member(role))
            .when(invite(2, 3, TeamRole::Viewer))
            .then_expect_error(TeamError::NotPermitted);
    }
    TeamTest::with(())
        .given(vec![created()])
        .when(invite(9, 3, TeamRole::Viewer))
        .then_expect_error(TeamError::NotAMember);
}

#[test]
fn inviting_a_member_or_with_a_past_expiry_is_refused() {
    TeamTest::with(())
        .given(with_member(TeamRole::Member))
        .when(invite(1, 2, TeamRole::Viewer))
        .then_expect_error(TeamError::AlreadyMember);
    TeamTest::with(())
        .given(vec![created()])
        .when(TeamCommand::InviteMember {
            by: user(1),
            invitation_id: invitation(2),
            email: email(2),
            role: TeamRole::Member,
            expires_at: at(1),
            at: at(1),
        })
        .then_expect_error(TeamError::BadExpiry);
}

#[test]
fn the_invitee_accepts_with_the_invited_role() {
    TeamTest::with(())
        .given(vec![created(), invited(2, TeamRole::Viewer)])
        .when(accept(2, 2))
        .then_expect_events(vec![accepted(2, TeamRole::Viewer)]);
}

#[test]
fn another_account_cannot_accept() {
    TeamTest::with(())
        .given(vec![created(), invited(2, TeamRole::Viewer)])
        .when(TeamCommand::AcceptInvitation {
            invitation_id: invitation(2),
            user_id: user(3),
            email: email(3),
            at: at(2),
        })
        .then_expect_error(TeamError::WrongInvitee);
}

#[test]
fn an_invitation_is_accepted_once_and_before_it_expires() {
    TeamTest::with(())
        .given(with_member(TeamRole::Member))
        .when(accept(2, 3))
        .then_expect_error(TeamError::InvitationUsed);
    TeamTest::with(())
        .given(vec![created(), invited(2, TeamRole::Member)])
        .when(accept(2, 1000))
        .then_expect_error(TeamError::InvitationExpired);
    TeamTest::with(())
        .given(vec![created()])
        .when(accept(2, 2))
        .then_expect_error(TeamError::NoSuchInvitation);
}

#[test]
fn an_owner_changes_roles_and_hands_on_ownership() {
    TeamTest::with(())
        .given(with_member(TeamRole::Member))
        .when(TeamCommand::ChangeRole {
            by: user(1),
            user_id: user(2),
            role: TeamRole::Owner,
            at: at(3),
        })
        .then_expect_events(vec![TeamEvent::MemberRoleChanged(TeamMemberRoleChanged {
            user_id: user(2),
            role: TeamRole::Owner,
            changed_by: user(1),
            at: at(3),
        })]);
    let mut given = with_member(TeamRole::Owner);
    given.push(TeamEvent::MemberRoleChanged(TeamMemberRoleChanged {
        user_id: user(2),
        role: TeamRole::Owner,
        changed_by: user(1),
        at: at(3),
    }));
    // With a second owner, the first may step down.
    TeamTest::with(())
        .given(given)
        .when(TeamCommand::ChangeRole {
            by: user(1),
            user_id: user(1),
            role: TeamRole::Maintainer,
            at: at(4),
        })
        .then_expect_events(vec![TeamEvent::MemberRoleChanged(TeamMemberRoleChanged {
            user_id: user(1),
            role: TeamRole::Maintainer,
            changed_by: user(1),
            at: at(4),
        })]);
}

#[test]
fn only_owners_change_roles() {
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::ChangeRole {
            by: user(2),
            user_id: user(2),
            role: TeamRole::Owner,
            at: at(3),
        })
        .then_expect_error(TeamError::NotPermitted);
    TeamTest::with(())
        .given(vec![created()])
        .when(TeamCommand::ChangeRole {
            by: user(1),
            user_id: user(5),
            role: TeamRole::Viewer,
            at: at(3),
        })
        .then_expect_error(TeamError::NoSuchMember);
}

#[test]
fn the_last_owner_is_never_demoted_removed_or_gone() {
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::ChangeRole {
            by: user(1),
            user_id: user(1),
            role: TeamRole::Member,
            at: at(3),
        })
        .then_expect_error(TeamError::LastOwner);
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::RemoveMember {
            by: user(1),
            user_id: user(1),
            at: at(3),
        })
        .then_expect_error(TeamError::LastOwner);
}

#[test]
fn a_member_leaves_and_an_owner_removes() {
    let removed = |by| {
        TeamEvent::MemberRemoved(TeamMemberRemoved {
            user_id: user(2),
            removed_by: user(by),
            at: at(3),
        })
    };
    TeamTest::with(())
        .given(with_member(TeamRole::Viewer))
        .when(TeamCommand::RemoveMember {
            by: user(2),
            user_id: user(2),
            at: at(3),
        })
        .then_expect_events(vec![removed(2)]);
    TeamTest::with(())
        .given(with_member(TeamRole::Viewer))
        .when(TeamCommand::RemoveMember {
            by: user(1),
            user_id: user(2),
            at: at(3),
        })
        .then_expect_events(vec![removed(1)]);
}

#[test]
fn a_non_owner_removes_nobody_else() {
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::RemoveMember {
            by: user(2),
            user_id: user(1),
            at: at(3),
        })
        .then_expect_error(TeamError::NotPermitted);
}

#[test]
fn an_owner_deletes_a_team_with_nothing_shared() {
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::DeleteTeam {
            by: user(1),
            shared: Vec::new(),
            at: at(4),
        })
        .then_expect_events(vec![TeamEvent::TeamDeleted(TeamDeleted {
            deleted_by: user(1),
            at: at(4),
        })]);
    TeamTest::with(())
        .given(with_member(TeamRole::Maintainer))
        .when(TeamCommand::DeleteTeam {
            by: user(2),
            shared: Vec::new(),
            at: at(4),
        })
        .then_expect_error(TeamError::NotPermitted);
}

#[test]
fn a_team_with_shared_resources_is_not_deleted_and_says_why() {
    TeamTest::with(())
        .given(vec![created()])
        .when(TeamCommand::DeleteTeam {
            by: user(1),
            shared: vec!["workflow 0193".into()],
            at: at(4),
        })
        .then_expect_error(TeamError::StillShared("workflow 0193".into()));
}

#[test]
fn a_deleted_team_takes_no_commands() {
    TeamTest::with(())
        .given(vec![
            created(),
            TeamEvent::TeamDeleted(TeamDeleted {
                deleted_by: user(1),
                at: at(4),
            }),
        ])
        .when(invite(1, 2, TeamRole::Member))
        .then_expect_error(TeamError::Deleted);
}

#[test]
fn refusals_are_classified_for_the_edge() {
    assert_eq!(TeamError::NotAMember.kind(), RefusalKind::NotFound);
    assert_eq!(TeamError::WrongInvitee.kind(), RefusalKind::NotFound);
    assert_eq!(TeamError::NotPermitted.kind(), RefusalKind::Forbidden);
    assert_eq!(TeamError::LastOwner.kind(), RefusalKind::Conflict);
    assert_eq!(
        TeamError::StillShared(String::new()).code(),
        "team.still_shared"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::codec;

    /// Users 1..=4; user 1 creates the team.
    #[derive(Debug, Clone)]
    enum Op {
        Invite { by: u128, who: u128, role: TeamRole },
        Accept { who: u128 },
        ChangeRole { by: u128, who: u128, role: TeamRole },
        Remove { by: u128, who: u128 },
        Delete { by: u128, shared: bool },
    }

    fn role() -> impl Strategy<Value = TeamRole> {
        prop_oneof![
            Just(TeamRole::Owner),
            Just(TeamRole::Maintainer),
            Just(TeamRole::Member),
            Just(TeamRole::Viewer),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 1u128..=4;
        prop_oneof![
            4 => (who.clone(), who.clone(), role())
                .prop_map(|(by, who, role)| Op::Invite { by, who, role }),
            4 => who.clone().prop_map(|who| Op::Accept { who }),
            3 => (who.clone(), who.clone(), role())
                .prop_map(|(by, who, role)| Op::ChangeRole { by, who, role }),
            3 => (who.clone(), who.clone()).prop_map(|(by, who)| Op::Remove { by, who }),
            1 => (who, any::<bool>()).prop_map(|(by, shared)| Op::Delete { by, shared }),
        ]
    }

    fn handle(
        runtime: &tokio::runtime::Runtime,
        team: &mut Team,
        command: TeamCommand,
    ) -> Result<Vec<TeamEvent>, TeamError> {
        runtime.block_on(async {
            let sink = cqrs_es::event_sink::EventSink::default();
            team.handle(command, &(), &sink).await?;
            Ok(sink.collect().await)
        })
    }

    fn command(op: &Op, step: i64, invitations: &mut BTreeMap<u128, Uuid>) -> TeamCommand {
        let now = at(10 + step);
        match *op {
            Op::Invite { by, who, role } => {
                let id = Uuid::from_u128(0x0193_0000_0000_7000_9000_0000_0000_0000 + step as u128);
                invitations.insert(who, id);
                TeamCommand::InviteMember {
                    by: user(by),
                    invitation_id: id,
                    email: email(who),
                    role,
                    expires_at: now + chrono::Duration::seconds(5),
                    at: now,
                }
            }
            Op::Accept { who } => TeamCommand::AcceptInvitation {
                invitation_id: invitations
                    .get(&who)
                    .copied()
                    .unwrap_or_else(|| invitation(who)),
                user_id: user(who),
                email: email(who),
                at: now,
            },
            Op::ChangeRole { by, who, role } => TeamCommand::ChangeRole {
                by: user(by),
                user_id: user(who),
                role,
                at: now,
            },
            Op::Remove { by, who } => TeamCommand::RemoveMember {
                by: user(by),
                user_id: user(who),
                at: now,
            },
            Op::Delete { by, shared } => TeamCommand::DeleteTeam {
                by: user(by),
                shared: if shared {
                    vec!["workflow x".into()]
                } else {
                    Vec::new()
                },
                at: now,
            },
        }
    }

    fn run(ops: &[Op]) -> Result<(), TestCaseError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut team = Team::default();
        team.apply(created());
        let mut history = vec![created()];
        let mut invitations = BTreeMap::new();
        for (step, op) in ops.iter().enumerate() {
            let before = team.clone();
            let command = command(op, step as i64, &mut invitations);
            match handle(&runtime, &mut team, command) {
                Ok(events) => {
                    prop_assert_eq!(events.len(), 1);
                    for event in events {
                        let (event_type, _, payload) = codec::encode::<Team>(&event).unwrap();
                        let decoded = codec::decode::<Team>(&event_type, payload).unwrap();
                        prop_assert_eq!(&decoded, &event);
                        history.push(event);
                    }
                }
                Err(_) => prop_assert_eq!(&team, &before, "a refusal changes nothing"),
            }
            let state = team.state().unwrap();
            if !state.deleted {
                prop_assert!(state.owners() >= 1, "the last owner is gone after {:?}", op);
            }
            let mut emails: Vec<&Email> = state.members.values().map(|m| &m.email).collect();
            let count = emails.len();
            emails.sort();
            emails.dedup();
            prop_assert_eq!(emails.len(), count, "a member appears once");
            if let Op::Delete { shared: true, .. } = op {
                prop_assert_eq!(state.deleted, before.state().unwrap().deleted);
            }
        }
        let mut replayed = Team::default();
        for event in history {
            replayed.apply(event);
        }
        prop_assert_eq!(replayed, team);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_commands_keep_an_owner_and_members_unique(ops in prop::collection::vec(op(), 0..40)) {
            run(&ops)?;
        }
    }
}
