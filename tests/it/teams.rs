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

/// Creates a task as `user` (with `team_id` when given); answers the status and body.
async fn create_task(app: &TestApp, user: &TestUser, team_id: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({"capability": "team.task", "input": {"word": "marmalade"}});
    if let Some(team_id) = team_id {
        body["team_id"] = json!(team_id);
    }
    send(user.client.post(app.url("/api/tasks")).json(&body)).await
}

/// The ids of the items of a page `user` reads at `path`.
async fn listed(app: &TestApp, user: &TestUser, path: &str) -> Vec<String> {
    let (status, page) = send(user.client.get(app.url(path))).await;
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            item["id"]
                .as_str()
                .or_else(|| item["aggregate_id"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The aggregates whose task events `user` reads in the feed, once they are `expected`
/// (the feed's scope follows the owners projection, which may lag a loaded machine: read
/// again, bounded, and answer what was read last).
async fn feed_tasks(app: &TestApp, user: &TestUser, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ids = listed(app, user, "/api/events?aggregate_type=task&limit=500").await;
        ids.sort();
        ids.dedup();
        if ids == expected || Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_total(app: &TestApp, user: &TestUser, query: &str) -> i64 {
    let (status, body) = send(
        user.client
            .get(app.url(&format!("/api/analytics/status{query}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["total"].as_i64().unwrap()
}

/// `created` of the usage report `user` reads for one team (the usage projection follows
/// the feed: read until it shows `expected`, bounded).
async fn usage_created(app: &TestApp, user: &TestUser, team_id: &str, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(
            user.client
                .get(app.url("/api/analytics/usage"))
                .query(&[("group_by", "capability"), ("team_id", team_id)]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let created: i64 = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["created"].as_i64().unwrap())
            .sum();
        if created == expected || Instant::now() >= deadline {
            return created;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_shared_task_is_read_by_the_team_everywhere_and_by_nobody_once_removed(
    #[case] backend: Backend,
) {
    let app = app(backend).await;
    let (owner, maintainer, member, viewer, stranger) = (
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
    );
    let team = create_team(&app, &owner, "Tasks").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &maintainer, "maintainer").await;
    join(&app, &owner, &team_id, &member, "member").await;
    join(&app, &owner, &team_id, &viewer, "viewer").await;
    let other_team = create_team(&app, &stranger, "Elsewhere").await;
    let other_team_id = other_team["id"].as_str().unwrap().to_owned();

    // `team_id` on create: a member may put a task in the team; a viewer may not (403),
    // nor may anyone outside it (422, as for a team they cannot see).
    let (status, created) = create_task(&app, &member, Some(&team_id)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["team_id"], team_id.as_str());
    let by_member = created["id"].as_str().unwrap().to_owned();
    let (status, body) = create_task(&app, &viewer, Some(&team_id)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = create_task(&app, &stranger, Some(&team_id)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "team_id", "{body}");

    // The owner's own task, then shared with the team (an event of the task).
    let (status, private) = create_task(&app, &owner, None).await;
    assert_eq!(status, StatusCode::CREATED, "{private}");
    let shared = private["id"].as_str().unwrap().to_owned();
    let path = format!("/api/tasks/{shared}");
    assert_eq!(
        get_status(&app.address, &member, &path).await,
        StatusCode::NOT_FOUND
    );
    let share = |user: &TestUser, team: &str| {
        user.client
            .post(app.url(&format!("{path}/share")))
            .json(&json!({"team_id": team}))
    };
    let (status, _) = send(share(&member, &team_id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not the member's to share");
    let (status, body) = send(share(&owner, &other_team_id)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = send(share(&owner, &team_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["team_id"], team_id.as_str());
    let (_, history) = send(owner.client.get(app.url(&format!("{path}/events")))).await;
    let types: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["TaskCreated", "TaskShared"]);

    // Members read it, its history too; viewers and members cannot change it, maintainers can.
    for user in [&maintainer, &member, &viewer] {
        for path in [path.clone(), format!("{path}/events")] {
            assert_eq!(
                get_status(&app.address, user, &path).await,
                StatusCode::OK,
                "{path}"
            );
        }
    }
    assert_eq!(
        get_status(&app.address, &stranger, &path).await,
        StatusCode::NOT_FOUND
    );
    for user in [&viewer, &member] {
        let (status, _) = send(
            user.client
                .patch(app.url(&path))
                .json(&json!({"priority": 2})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = send(user.client.delete(app.url(&path))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = send(stranger.client.delete(app.url(&path))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    reprioritise(&app, &maintainer, &shared, 2).await;

    // The lists: the team's tasks beside one's own, `team_id` narrows; nobody else's.
    let (_, own) = create_task(&app, &viewer, None).await;
    let own = own["id"].as_str().unwrap().to_owned();
    let tasks = listed(&app, &viewer, "/api/tasks").await;
    assert_eq!(tasks, [own.clone(), shared.clone(), by_member.clone()]);
    let tasks = listed(&app, &viewer, &format!("/api/tasks?team_id={team_id}")).await;
    assert_eq!(tasks, [shared.clone(), by_member.clone()]);
    let tasks = listed(&app, &stranger, &format!("/api/tasks?team_id={team_id}")).await;
    assert!(tasks.is_empty(), "{tasks:?}");
    assert!(listed(&app, &stranger, "/api/tasks").await.is_empty());

    // Agents: one shared with the team is in the members' list.
    let agent = register_agent(&app, &owner).await;
    assert!(!listed(&app, &member, "/api/agents").await.contains(&agent));
    let (status, body) = send(
        owner
            .client
            .post(app.url(&format!("/api/agents/{agent}/share")))
            .json(&json!({"team_id": team_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed(&app, &member, &format!("/api/agents?team_id={team_id}")).await,
        [agent.as_str()]
    );
    assert!(listed(&app, &stranger, "/api/agents").await.is_empty());

    // The feed: the team's tasks' events, their whole history; not the stranger's.
    let mut expected = vec![shared.clone(), by_member.clone()];
    expected.sort();
    assert_eq!(feed_tasks(&app, &member, &expected).await, expected);
    assert!(feed_tasks(&app, &stranger, &[]).await.is_empty());

    // Analytics: the team's tasks count for its members.
    assert_eq!(status_total(&app, &member, "").await, 2);
    assert_eq!(
        status_total(&app, &viewer, &format!("?team_id={team_id}")).await,
        2
    );
    assert_eq!(status_total(&app, &stranger, "").await, 0);
    assert_eq!(usage_created(&app, &member, &team_id, 2).await, 2);
    assert_eq!(usage_created(&app, &stranger, &team_id, 0).await, 0);

    // While tasks and an agent are shared, the team stays; the refusal names them.
    let (status, body) = send(
        owner
            .client
            .delete(app.url(&format!("/api/teams/{team_id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "team.still_shared", "{body}");
    let detail = body["detail"].as_str().unwrap();
    for named in [&shared, &by_member, &agent] {
        assert!(detail.contains(named.as_str()), "{detail}");
    }

    // Removed: nothing of the team any more, at once, wherever the member reads.
    assert_eq!(
        remove(&app, &owner, &team_id, &member).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_status(&app.address, &member, &path).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_status(&app.address, &member, &format!("/api/tasks/{by_member}")).await,
        StatusCode::OK,
        "the member's own task stays theirs"
    );
    assert_eq!(
        listed(&app, &member, "/api/tasks").await,
        [by_member.as_str()]
    );
    assert!(listed(&app, &member, "/api/agents").await.is_empty());
    let members_own = [by_member.clone()];
    assert_eq!(feed_tasks(&app, &member, &members_own).await, members_own);
    assert_eq!(status_total(&app, &member, "").await, 1);
    // Of the team's tasks, only the one the member owns counts for them now.
    assert_eq!(usage_created(&app, &member, &team_id, 1).await, 1);

    // Unshared: back to the owner alone.
    let (status, body) = send(owner.client.post(app.url(&format!("{path}/unshare")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["team_id"], Value::Null);
    assert_eq!(
        get_status(&app.address, &viewer, &path).await,
        StatusCode::NOT_FOUND
    );
    let mut left = vec![by_member.clone(), own.clone()];
    left.sort();
    assert_eq!(feed_tasks(&app, &viewer, &left).await, left);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn teams_are_served_from_the_team_view(#[case] backend: Backend) {
    let app = app(backend).await;
    let (owner, member) = (app.register_user().await, app.register_user().await);
    let first = create_team(&app, &owner, "First").await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let second = create_team(&app, &owner, "Second").await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &first_id, &member, "viewer").await;
    assert_eq!(
        listed(&app, &owner, "/api/teams").await,
        [second_id.clone(), first_id.clone()]
    );
    assert_eq!(
        listed(&app, &owner, "/api/teams?limit=1").await,
        [second_id.as_str()]
    );
    assert_eq!(
        listed(&app, &member, "/api/teams").await,
        [first_id.as_str()]
    );
    let (status, team) = send(
        member
            .client
            .get(app.url(&format!("/api/teams/{first_id}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{team}");
    assert_eq!(role_of(&team, &member).as_deref(), Some("viewer"));
    assert_eq!(role_of(&team, &owner).as_deref(), Some("owner"));

    // The rows, as the view holds them, are those the Team events fold to.
    let store = app.db.store(Default::default()).await;
    let db = store.read_db();
    let memberships = chronicle_projections::team_view::TeamView::memberships(&db)
        .await
        .unwrap();
    let mut rows: Vec<(String, String, String)> = memberships
        .iter()
        .map(|m| {
            (
                m.team_id.to_string(),
                m.user_id.to_string(),
                format!("{:?}", m.role).to_lowercase(),
            )
        })
        .collect();
    rows.sort();
    let mut expected = vec![
        (first_id.clone(), owner.id.clone(), "owner".to_owned()),
        (first_id.clone(), member.id.clone(), "viewer".to_owned()),
        (second_id.clone(), owner.id.clone(), "owner".to_owned()),
    ];
    expected.sort();
    assert_eq!(rows, expected);

    // Removed and deleted: gone from the lists and the view's memberships.
    assert_eq!(
        remove(&app, &owner, &first_id, &member).await,
        StatusCode::NO_CONTENT
    );
    assert!(listed(&app, &member, "/api/teams").await.is_empty());
    let status = owner
        .client
        .delete(app.url(&format!("/api/teams/{second_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        listed(&app, &owner, "/api/teams").await,
        [first_id.as_str()]
    );
    assert_eq!(
        get_status(&app.address, &owner, &format!("/api/teams/{second_id}")).await,
        StatusCode::NOT_FOUND
    );
    let memberships = chronicle_projections::team_view::TeamView::memberships(&db)
        .await
        .unwrap();
    assert_eq!(memberships.len(), 1, "{memberships:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn mine_and_sync_pull_carry_the_team_s_resources_until_the_member_is_removed(
    #[case] backend: Backend,
) {
    let app = app(backend).await;
    let (owner, member) = (app.register_user().await, app.register_user().await);
    let team = create_team(&app, &owner, "Sync").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &member, "member").await;
    let (status, task) = create_task(&app, &owner, Some(&team_id)).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let team_task = task["id"].as_str().unwrap().to_owned();

    // A pull from zero brings the team's task; so does `mine` on a live socket.
    let pulled = |token: Option<String>| {
        let member = &member;
        let app = &app;
        async move {
            let query = token.map_or_else(String::new, |t| format!("?since={t}"));
            let (status, page) = send(
                member
                    .client
                    .get(app.url(&format!("/api/sync/pull{query}"))),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let ids: Vec<String> = page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, page["next"].as_str().unwrap().to_owned())
        }
    };
    let (ids, token) = pulled(None).await;
    assert_eq!(ids, [team_task.as_str()]);
    let token_str = member.body["access_token"].as_str().unwrap().to_owned();
    let mut live = LiveClient::connect(&app.address, &token_str, None)
        .await
        .unwrap();
    live.subscribe(&["mine"], None, OWED).await.unwrap();
    reprioritise(&app, &owner, &team_task, 4).await;
    match live.next(OWED).await.unwrap() {
        Received::Event { topic, event, .. } => {
            assert_eq!(topic, "mine");
            assert_eq!(event["aggregate_id"], team_task.as_str(), "{event}");
        }
        other => panic!("expected the team task's event, got {other:?}"),
    }
    let (ids, token) = pulled(Some(token)).await;
    assert_eq!(ids, [team_task.as_str()], "the change since the last pull");

    // Removed: the next pull and the socket leave the team out at once.
    assert_eq!(
        remove(&app, &owner, &team_id, &member).await,
        StatusCode::NO_CONTENT
    );
    reprioritise(&app, &owner, &team_task, 5).await;
    let (own, _) = create_task(&app, &member, None).await;
    assert_eq!(own, StatusCode::CREATED);
    let (ids, _) = pulled(Some(token)).await;
    assert!(!ids.contains(&team_task), "{ids:?}");
    assert_eq!(ids.len(), 1, "only the member's own new task: {ids:?}");
    let (ids, _) = pulled(None).await;
    assert!(!ids.contains(&team_task), "{ids:?}");
    // The socket's next event is the member's own task, not the team's.
    match live.next(OWED).await.unwrap() {
        Received::Event { topic, event, .. } => {
            assert_eq!(topic, "mine");
            assert_ne!(event["aggregate_id"], team_task.as_str(), "{event}");
        }
        other => panic!("expected the member's own task's event, got {other:?}"),
    }
    live.close().await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_team_s_documents_are_found_by_its_members_and_no_other_team(#[case] backend: Backend) {
    let app = spawn_app(backend).await.signed_in().await;
    let (owner, member, outsider) = (
        app.register_user().await,
        app.register_user().await,
        app.register_user().await,
    );
    let team = create_team(&app, &owner, "Search").await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    join(&app, &owner, &team_id, &member, "viewer").await;
    let other = create_team(&app, &outsider, "Other").await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    let (_, task) = create_task(&app, &owner, Some(&team_id)).await;
    let team_task = task["id"].as_str().unwrap().to_owned();
    let (_, task) = create_task(&app, &outsider, Some(&other_id)).await;
    let other_task = task["id"].as_str().unwrap().to_owned();
    crate::search::indexed(&app.client, &app.address).await;

    let found = |user: &TestUser, mode: &'static str| {
        let client = user.client.clone();
        let address = app.address.clone();
        async move {
            let items =
                crate::search::search(&client, &address, &[("q", "marmalade"), ("mode", mode)])
                    .await;
            let mut ids: Vec<String> = items
                .iter()
                .map(|item| item["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    for mode in ["bm25", "vector", "hybrid"] {
        assert_eq!(found(&member, mode).await, [team_task.as_str()], "{mode}");
        assert_eq!(
            found(&outsider, mode).await,
            [other_task.as_str()],
            "{mode}"
        );
    }
    let (status, context) = send(
        member
            .client
            .post(app.url("/api/rag/context"))
            .json(&json!({"query": "marmalade"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    let sources: Vec<&str> = context["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [team_task.as_str()]);

    // Removed: the member finds nothing of the team.
    assert_eq!(
        remove(&app, &owner, &team_id, &member).await,
        StatusCode::NO_CONTENT
    );
    for mode in ["bm25", "vector", "hybrid"] {
        assert!(found(&member, mode).await.is_empty(), "{mode}");
    }
}
