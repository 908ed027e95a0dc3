//! Teams over HTTP on both backends: invitations and their acceptance, roles, removal and
//! leaving, the last owner, handing ownership on, deletion; a shared workflow run by a
//! member, its run and tasks visible to the team and hidden from everyone else; a viewer
//! who may look but not change; a removed member losing access at once — on another node
//! and on an open socket.

use std::time::{Duration, Instant};

use chronicle::cli::live_client::{LiveClient, Received};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp, TestUser};
use crate::workflows::send;

const OWED: Duration = Duration::from_secs(60);

/// The app with its first user (an admin, who sees everything) out of the way.
async fn app(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    app.register_user().await;
    app
}

async fn create_team(app: &TestApp, owner: &TestUser, name: &str) -> Value {
    let (status, body) = send(
        owner
            .client
            .post(app.url("/api/teams"))
            .json(&json!({"name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn email(user: &TestUser) -> String {
    user.body["user"]["email"].as_str().unwrap().to_owned()
}

async fn invite(app: &TestApp, by: &TestUser, team: &str, to: &TestUser, role: &str) -> Value {
    let (status, body) = send(
        by.client
            .post(app.url(&format!("/api/teams/{team}/invitations")))
            .json(&json!({"email": email(to), "role": role})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn accept(app: &TestApp, user: &TestUser, invitation: &Value) -> (StatusCode, Value) {
    let id = invitation["id"].as_str().unwrap();
    send(
        user.client
            .post(app.url(&format!("/api/invitations/{id}/accept"))),
    )
    .await
}

/// Invites `user` as `role` and has them accept.
async fn join(app: &TestApp, owner: &TestUser, team: &str, user: &TestUser, role: &str) {
    let invitation = invite(app, owner, team, user, role).await;
    let (status, body) = accept(app, user, &invitation).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn role_of(team: &Value, user: &TestUser) -> Option<String> {
    team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["user_id"] == user.id.as_str())
        .map(|member| member["role"].as_str().unwrap().to_owned())
}

async fn get_status(app_url: &str, user: &TestUser, path: &str) -> StatusCode {
    user.client
        .get(format!("{app_url}{path}"))
        .send()
        .await
        .unwrap()
        .status()
}

async fn patch_role(
    app: &TestApp,
    by: &TestUser,
    team: &str,
    user: &TestUser,
    role: &str,
) -> (StatusCode, Value) {
    send(
        by.client
            .patch(app.url(&format!("/api/teams/{team}/members/{}", user.id)))
            .json(&json!({"role": role})),
    )
    .await
}

async fn remove(app: &TestApp, by: &TestUser, team: &str, user: &TestUser) -> StatusCode {
    by.client
        .delete(app.url(&format!("/api/teams/{team}/members/{}", user.id)))
        .send()
        .await
        .unwrap()
        .status()
}

fn one_step_workflow() -> Value {
    json!({
        "name": "team flow",
        "steps": [{"id": "open", "capability": "browser.navigate", "input": {"url": "https://example.com"}}],
    })
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn invitations_roles_leaving_and_the_last_owner(#[case] backend: Backend) {
    let app = app(backend).await;
    let (owner, maintainer, viewer, stranger) = (
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
    );
    let team = create_team(&app, &owner, "  Ops  ").await;
    assert_eq!(team["name"], "Ops");
    assert_eq!(role_of(&team, &owner).as_deref(), Some("owner"));
    let id = team["id"].as_str().unwrap().to_owned();

    // Only the invited email accepts; to anyone else the invitation does not exist.
    let invitation = invite(&app, &owner, &id, &maintainer, "maintainer").await;
    assert_eq!(invitation["role"], "maintainer");
    assert!(invitation["expires_at"].is_string());
    let (status, body) = accept(&app, &stranger, &invitation).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, joined) = accept(&app, &maintainer, &invitation).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(role_of(&joined, &maintainer).as_deref(), Some("maintainer"));
    let (status, body) = accept(&app, &maintainer, &invitation).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A maintainer invites, but not an owner; a stranger sees no team at all.
    let (status, body) = send(
        maintainer
            .client
            .post(app.url(&format!("/api/teams/{id}/invitations")))
            .json(&json!({"email": email(&viewer), "role": "owner"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    join(&app, &maintainer, &id, &viewer, "viewer").await;
    assert_eq!(
        get_status(&app.address, &stranger, &format!("/api/teams/{id}")).await,
        StatusCode::NOT_FOUND
    );
    let (status, _) = send(
        stranger
            .client
            .post(app.url(&format!("/api/teams/{id}/invitations")))
            .json(&json!({"email": "x@example.com", "role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = send(
        owner
            .client
            .post(app.url(&format!("/api/teams/{id}/invitations")))
            .json(&json!({"email": "not an email", "role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Each member lists the team; the stranger lists none.
    let (_, listed) = send(viewer.client.get(app.url("/api/teams"))).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["members"].as_array().unwrap().len(), 3);
    let (_, listed) = send(stranger.client.get(app.url("/api/teams"))).await;
    assert_eq!(listed["items"], json!([]));

    // Roles change by owners only; the last owner neither leaves nor steps down.
    let (status, _) = patch_role(&app, &maintainer, &id, &viewer, "member").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, changed) = patch_role(&app, &owner, &id, &viewer, "member").await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(role_of(&changed, &viewer).as_deref(), Some("member"));
    let (status, body) = patch_role(&app, &owner, &id, &owner, "maintainer").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "team.last_owner", "{body}");
    assert_eq!(
        remove(&app, &owner, &id, &owner).await,
        StatusCode::CONFLICT
    );

    // Ownership handed on: the first owner may now step down and leave.
    let (status, body) = patch_role(&app, &owner, &id, &maintainer, "owner").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = patch_role(&app, &owner, &id, &owner, "viewer").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        remove(&app, &viewer, &id, &maintainer).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        remove(&app, &owner, &id, &owner).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_status(&app.address, &owner, &format!("/api/teams/{id}")).await,
        StatusCode::NOT_FOUND
    );
    // The new owner removes a member.
    assert_eq!(
        remove(&app, &maintainer, &id, &viewer).await,
        StatusCode::NO_CONTENT
    );
    let (status, team) = send(maintainer.client.get(app.url(&format!("/api/teams/{id}")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(team["members"].as_array().unwrap().len(), 1, "{team}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_shared_workflow_is_run_by_members_and_hidden_from_others(#[case] backend: Backend) {
    let app = app(backend).await;
    let (owner, member, viewer, stranger) = (
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
    );
    let team = create_team(&app, &owner, "Flows").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &member, "member").await;
    join(&app, &owner, &team_id, &viewer, "viewer").await;

    let (status, workflow) = send(
        owner
            .client
            .post(app.url("/api/workflows"))
            .json(&one_step_workflow()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();
    let path = format!("/api/workflows/{workflow_id}");
    assert_eq!(
        get_status(&app.address, &member, &path).await,
        StatusCode::NOT_FOUND
    );

    // Only a maintainer or owner of the team shares with it; a member may not.
    let share = |user: &TestUser| {
        user.client
            .post(app.url(&format!("{path}/share")))
            .json(&json!({"team_id": team_id}))
    };
    let (status, _) = send(share(&member)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not the member's workflow yet"
    );
    let (status, body) = send(share(&stranger)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, shared) = send(share(&owner)).await;
    assert_eq!(status, StatusCode::OK, "{shared}");
    assert_eq!(shared["team_id"], team_id.as_str());

    // Members and viewers read it and list it; the stranger does not.
    for user in [&member, &viewer] {
        assert_eq!(get_status(&app.address, user, &path).await, StatusCode::OK);
        let (_, listed) = send(user.client.get(app.url("/api/workflows"))).await;
        assert_eq!(listed["items"][0]["id"], workflow_id.as_str(), "{listed}");
    }
    assert_eq!(
        get_status(&app.address, &stranger, &path).await,
        StatusCode::NOT_FOUND
    );
    let (_, listed) = send(stranger.client.get(app.url("/api/workflows"))).await;
    assert_eq!(listed["items"], json!([]));

    // A viewer may look but not run or change it (403); a member runs it but not changes it.
    let run_as = |user: &TestUser| {
        user.client
            .post(app.url(&format!("{path}/execute")))
            .json(&json!({}))
    };
    let (status, _) = send(run_as(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(run_as(&stranger)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(member.client.put(app.url(&path)).json(&one_step_workflow())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let run = execute(&app, &member, &workflow_id).await;
    assert_eq!(run["team_id"], team_id.as_str());
    let run_id = run["id"].as_str().unwrap().to_owned();

    // The owner's agent runs the team's task; the whole team sees the run and the task.
    let agent_id = register_agent(&app, &owner).await;
    let task = lease_one(&app, &owner, &agent_id).await;
    assert_eq!(task["workflow_run_id"], run_id.as_str());
    let (status, body) = send(
        owner
            .client
            .patch(app.url(&format!("/api/tasks/{}", task["id"].as_str().unwrap())))
            .json(&json!({"status": "succeeded", "lease_id": task["lease_id"], "output": {"title": "done"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let finished = wait_run(&app, &member, &run_id, |run| run["status"] == "succeeded").await;
    let task_id = finished["steps"]["open"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for user in [&member, &viewer] {
        for path in [
            format!("/api/workflow-runs/{run_id}"),
            format!("/api/workflow-runs/{run_id}/events"),
            format!("/api/tasks/{task_id}"),
            format!("/api/tasks/{task_id}/events"),
        ] {
            assert_eq!(
                get_status(&app.address, user, &path).await,
                StatusCode::OK,
                "{path}"
            );
        }
    }
    for path in [
        format!("/api/workflow-runs/{run_id}"),
        format!("/api/tasks/{task_id}"),
        format!("/api/tasks/{task_id}/events"),
    ] {
        assert_eq!(
            get_status(&app.address, &stranger, &path).await,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // A viewer cannot retry the team's task.
    let (status, _) = send(
        viewer
            .client
            .post(app.url(&format!("/api/tasks/{task_id}/retry"))),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // While the workflow is shared the team is not deleted; the refusal names why.
    let (status, body) = send(
        owner
            .client
            .delete(app.url(&format!("/api/teams/{team_id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(&workflow_id),
        "{body}"
    );
    let (status, body) = send(owner.client.post(app.url(&format!("{path}/unshare")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["team_id"], Value::Null);
    assert_eq!(
        get_status(&app.address, &member, &path).await,
        StatusCode::NOT_FOUND
    );
    let (status, _) = send(
        member
            .client
            .delete(app.url(&format!("/api/teams/{team_id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = owner
        .client
        .delete(app.url(&format!("/api/teams/{team_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get_status(&app.address, &member, &format!("/api/teams/{team_id}")).await,
        StatusCode::NOT_FOUND
    );
}

async fn register_agent(app: &TestApp, user: &TestUser) -> String {
    let (status, body) = send(user.client.post(app.url("/api/agents/register")).json(
        &json!({"name": "team agent", "kind": "remote", "capabilities": ["browser.navigate"]}),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Leases one task as `agent` (waiting for one to be ready).
async fn lease_one(app: &TestApp, user: &TestUser, agent: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(
            user.client
                .post(app.url(&format!("/api/agents/{agent}/lease")))
                .json(&json!({"max_tasks": 1})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(task) = body["tasks"].as_array().and_then(|t| t.first()) {
            return task.clone();
        }
        assert!(Instant::now() < deadline, "no task became leasable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn execute(app: &TestApp, user: &TestUser, workflow: &str) -> Value {
    let (status, run) = send(
        user.client
            .post(app.url(&format!("/api/workflows/{workflow}/execute")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    run
}

/// Reads the run as `user` until `done` holds; the driver works in the background.
async fn wait_run(
    app: &TestApp,
    user: &TestUser,
    run: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, current) = send(
            user.client
                .get(app.url(&format!("/api/workflow-runs/{run}"))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{current}");
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "run never got there: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_removed_member_loses_access_at_once_on_every_node_and_socket(#[case] backend: Backend) {
    let app = app(backend).await;
    let (node_b, _stop_b) = app.second_node(|_| {}).await;
    let (owner, member) = (app.register_user().await, app.register_user().await);
    let team = create_team(&app, &owner, "Live").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &member, "member").await;
    let (status, workflow) = send(
        owner
            .client
            .post(app.url("/api/workflows"))
            .json(&json!({
                "name": "shared",
                "team_id": team_id,
                "steps": [{"id": "open", "capability": "browser.navigate", "input": {"url": "https://example.com"}}],
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    assert_eq!(workflow["team_id"], team_id.as_str());
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();
    let run = execute(&app, &member, &workflow_id).await;
    let run = run["id"].as_str().unwrap();
    let started = wait_run(&app, &member, run, |run| {
        run["steps"]["open"]["task_id"].is_string()
    })
    .await;
    let task_id = started["steps"]["open"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task_path = format!("/api/tasks/{task_id}");

    // Node B learns the membership from the feed.
    wait_for(&node_b, &member, &task_path, StatusCode::OK).await;

    // The member follows the team's task live.
    let token = member.body["access_token"].as_str().unwrap().to_owned();
    let mut live = LiveClient::connect(&app.address, &token, None)
        .await
        .unwrap();
    let topic = format!("task:{task_id}");
    let answers = live.subscribe(&[&topic], None, OWED).await.unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    reprioritise(&app, &owner, &task_id, 3).await;
    match live.next(OWED).await.unwrap() {
        Received::Event { topic: got, .. } => assert_eq!(got, topic),
        other => panic!("expected the task's event, got {other:?}"),
    }

    assert_eq!(
        remove(&app, &owner, &team_id, &member).await,
        StatusCode::NO_CONTENT
    );
    // At once on this node, and on node B as soon as its feed brings the removal.
    assert_eq!(
        get_status(&app.address, &member, &task_path).await,
        StatusCode::NOT_FOUND
    );
    wait_for(&node_b, &member, &task_path, StatusCode::NOT_FOUND).await;
    let workflow_path = format!("/api/workflows/{workflow_id}");
    assert_eq!(
        get_status(&node_b, &member, &workflow_path).await,
        StatusCode::NOT_FOUND
    );

    // The open socket gets no event of the task any more: the topic ends instead.
    reprioritise(&app, &owner, &task_id, 5).await;
    match live.next(OWED).await.unwrap() {
        Received::Message(message) => {
            assert_eq!(message["type"], "error", "{message}");
            assert_eq!(message["topic"], topic.as_str());
            assert_eq!(message["problem"]["status"], 404);
        }
        other => panic!("expected the topic to end, got {other:?}"),
    }
    reprioritise(&app, &owner, &task_id, 6).await;
    // The owner's own socket still sees the task; the member's sees nothing of it: a
    // subscription of its own (mine) would have to carry an event first.
    live.send(json!({"type": "subscribe", "topics": [topic]}))
        .await
        .unwrap();
    match live.next(OWED).await.unwrap() {
        Received::Message(message) => {
            assert_eq!(message["type"], "error", "{message}");
            assert_eq!(message["problem"]["status"], 404);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    live.close().await;
}

async fn reprioritise(app: &TestApp, owner: &TestUser, task: &str, priority: u8) {
    let (status, body) = send(
        owner
            .client
            .patch(app.url(&format!("/api/tasks/{task}")))
            .json(&json!({"priority": priority})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Reads `path` on `node` until it answers `expected` (another node learns from the feed
/// within a second; the bound only keeps a broken build from hanging).
async fn wait_for(node: &str, user: &TestUser, path: &str, expected: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_status(node, user, path).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {node} stayed {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lease_now(app: &TestApp, user: &TestUser, agent: &str) -> Vec<Value> {
    let (status, body) = send(
        user.client
            .post(app.url(&format!("/api/agents/{agent}/lease")))
            .json(&json!({"max_tasks": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["tasks"].as_array().unwrap().clone()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_team_agent_leases_the_team_s_tasks_and_nobody_else_s(#[case] backend: Backend) {
    let app = app(backend).await;
    let (owner, maintainer, member, stranger) = (
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
    );
    let team = create_team(&app, &owner, "Agents").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &maintainer, "maintainer").await;
    join(&app, &owner, &team_id, &member, "member").await;
    let (status, workflow) = send(
        owner.client.post(app.url("/api/workflows")).json(&json!({
            "name": "for the team's agents",
            "team_id": team_id,
            "steps": [{"id": "open", "capability": "browser.navigate", "input": {"url": "https://example.com"}}],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let run = execute(&app, &member, workflow["id"].as_str().unwrap()).await;
    let run = run["id"].as_str().unwrap().to_owned();
    let started = wait_run(&app, &member, &run, |run| {
        run["steps"]["open"]["task_id"].is_string()
    })
    .await;
    let task_id = started["steps"]["open"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, task) = send(member.client.get(app.url(&format!("/api/tasks/{task_id}")))).await;
    assert_eq!(task["team_id"], team_id.as_str(), "{task}");

    // The task exists and is queued: agents of other users, and the maintainer's own agent
    // while it is not the team's, are not offered it.
    let strangers = register_agent(&app, &stranger).await;
    assert!(lease_now(&app, &stranger, &strangers).await.is_empty());
    let maintainers = register_agent(&app, &maintainer).await;
    assert!(lease_now(&app, &maintainer, &maintainers).await.is_empty());

    // A member may not share an agent with the team; the maintainer may.
    let members = register_agent(&app, &member).await;
    let (status, _) = send(
        member
            .client
            .post(app.url(&format!("/api/agents/{members}/share")))
            .json(&json!({"team_id": team_id})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, shared) = send(
        maintainer
            .client
            .post(app.url(&format!("/api/agents/{maintainers}/share")))
            .json(&json!({"team_id": team_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shared}");
    assert_eq!(shared["team_id"], team_id.as_str());
    // The team reads the shared agent; a stranger does not.
    assert_eq!(
        get_status(&app.address, &member, &format!("/api/agents/{maintainers}")).await,
        StatusCode::OK
    );
    assert_eq!(
        get_status(
            &app.address,
            &stranger,
            &format!("/api/agents/{maintainers}")
        )
        .await,
        StatusCode::NOT_FOUND
    );
    let leased = lease_one(&app, &maintainer, &maintainers).await;
    assert_eq!(leased["id"], task_id.as_str());
    assert!(lease_now(&app, &stranger, &strangers).await.is_empty());

    let (status, unshared) = send(
        maintainer
            .client
            .post(app.url(&format!("/api/agents/{maintainers}/unshare"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{unshared}");
    assert_eq!(unshared["team_id"], Value::Null);
}
