//! Offline sync over HTTP (`POST /api/sync/push`, `GET /api/sync/pull`), on both backends:
//! two devices of one user converge on the server's state, stale writes are reported with
//! the current resource, a repeated push changes nothing, pulls page and long-poll, and
//! nobody else's resources appear.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, Backend, TestApp, TestUser, PASSWORD};

/// A user registered with a known email, and a second sign-in of theirs: two devices.
async fn user_with_two_devices(app: &TestApp) -> (TestUser, TestUser) {
    let email = format!("sync-{}@example.com", Uuid::now_v7().simple());
    let first = app.register(&email).await;
    let response = Client::new()
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    (first, TestUser::new(response.json().await.unwrap()))
}

async fn create_task(app: &TestApp, client: &Client, n: usize) -> Value {
    let response = client
        .post(app.url("/api/tasks"))
        .json(&json!({"capability": "sync.test", "input": {"n": n}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn push(app: &TestApp, client: &Client, ops: &[Value]) -> reqwest::Response {
    client
        .post(app.url("/api/sync/push"))
        .json(&json!({ "ops": ops }))
        .send()
        .await
        .unwrap()
}

async fn push_ok(app: &TestApp, client: &Client, ops: &[Value]) -> Vec<Value> {
    let response = push(app, client, ops).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), ops.len());
    for (op, result) in ops.iter().zip(&results) {
        assert_eq!(
            op["op_id"], result["op_id"],
            "results come in the ops' order"
        );
    }
    results
}

async fn pull(app: &TestApp, client: &Client, query: &str) -> Value {
    let response = client
        .get(app.url(&format!("/api/sync/pull{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "pull{query}");
    response.json().await.unwrap()
}

/// A device's copy: `(kind, id)` → the resource; pulls from `token` until up to date and
/// answers the new token.
async fn pull_all(
    app: &TestApp,
    client: &Client,
    token: Option<String>,
    copy: &mut BTreeMap<(String, String), Value>,
) -> String {
    let mut token = token;
    loop {
        let query = match &token {
            Some(token) => format!("?since={token}&limit=37"),
            None => "?limit=37".to_owned(),
        };
        let page = pull(app, client, &query).await;
        let changes = page["changes"].as_array().unwrap();
        let mut in_page = HashSet::new();
        for change in changes {
            let key = (
                change["kind"].as_str().unwrap().to_owned(),
                change["id"].as_str().unwrap().to_owned(),
            );
            assert!(
                in_page.insert(key.clone()),
                "one change per resource a page"
            );
            assert_eq!(change["deleted"], false);
            copy.insert(key, change["resource"].clone());
        }
        token = Some(page["next"].as_str().unwrap().to_owned());
        if changes.is_empty() {
            return token.unwrap_or_default();
        }
    }
}

/// How many events the feed holds, as an admin reads it (the whole feed, not held back by
/// the owners projection).
async fn event_count(app: &TestApp, client: &Client) -> usize {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("?limit=500&cursor={cursor}"),
            None => "?limit=500".to_owned(),
        };
        let page: Value = client
            .get(app.url(&format!("/api/events{query}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        count += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return count,
        }
    }
}

async fn get_task(app: &TestApp, client: &Client, id: &str) -> Value {
    let response = client
        .get(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_devices_converge_and_conflicts_are_reported(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // The first user of the system is an admin, who reads everyone's: keep them out.
    let admin = app.register_user().await;
    let (laptop, phone) = user_with_two_devices(&app).await;
    let stranger = app.register_user().await;
    let foreign = create_task(&app, &stranger.client, 0).await;

    let mut tasks = Vec::new();
    for n in 0..20 {
        tasks.push(create_task(&app, &laptop.client, n).await);
    }
    let mut laptop_copy = BTreeMap::new();
    let laptop_token = pull_all(&app, &laptop.client, None, &mut laptop_copy).await;
    assert_eq!(laptop_copy.len(), 20);

    // Offline, the laptop queues 200 ops against the versions it saw.
    let mut ops = Vec::new();
    for n in 0..170 {
        ops.push(json!({
            "op_id": format!("create-{n}"),
            "method": "POST",
            "path": "/api/tasks",
            "body": {"capability": "sync.test", "input": {"offline": n}, "tags": ["offline"]},
        }));
    }
    for task in &tasks {
        ops.push(json!({
            "op_id": format!("raise-{}", task["id"].as_str().unwrap()),
            "method": "PATCH",
            "path": format!("/api/tasks/{}", task["id"].as_str().unwrap()),
            "body": {"priority": 7},
            "if_match": format!("\"{}\"", task["version"]),
        }));
    }
    for task in &tasks[10..] {
        ops.push(json!({
            "op_id": format!("cancel-{}", task["id"].as_str().unwrap()),
            "method": "DELETE",
            "path": format!("/api/tasks/{}", task["id"].as_str().unwrap()),
        }));
    }
    assert_eq!(ops.len(), 200);

    // Meanwhile the phone, online, changes some of the same tasks.
    let mut changed_by_phone = HashSet::new();
    for task in tasks[..5].iter().chain(&tasks[15..16]) {
        let id = task["id"].as_str().unwrap();
        let response = phone
            .client
            .patch(app.url(&format!("/api/tasks/{id}")))
            .json(&json!({"priority": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        changed_by_phone.insert(id.to_owned());
    }

    let results = push_ok(&app, &laptop.client, &ops).await;
    let mut conflicts = 0;
    for (op, result) in ops.iter().zip(&results) {
        let op_id = op["op_id"].as_str().unwrap();
        let status = result["status"].as_u64().unwrap();
        if op_id.starts_with("create-") {
            assert_eq!(status, 201, "{result}");
            assert_eq!(result["body"]["tags"], json!(["offline"]));
        } else if let Some(id) = op_id.strip_prefix("raise-") {
            if changed_by_phone.contains(id) {
                // Reported with the resource as it is now: the phone's change.
                assert_eq!(status, 409, "{result}");
                assert_eq!(result["body"]["id"], id);
                assert_eq!(result["body"]["priority"], 2);
                assert_eq!(
                    result["body"]["version"], 2,
                    "created, then the phone's change"
                );
                conflicts += 1;
            } else {
                assert_eq!(status, 200, "{result}");
                assert_eq!(result["body"]["priority"], 7);
            }
        } else {
            assert_eq!(status, 200, "{result}");
            assert_eq!(result["body"]["status"], "cancelled");
        }
        assert_eq!(result["replayed"], false);
    }
    assert_eq!(conflicts, 6, "every stale write is reported");

    // The same batch again (the laptop did not hear the answer): no second effect.
    let events_before = event_count(&app, &admin.client).await;
    let again = push_ok(&app, &laptop.client, &ops).await;
    for (first, repeat) in results.iter().zip(&again) {
        assert_eq!(repeat["replayed"], true, "{repeat}");
        assert_eq!(first["status"], repeat["status"]);
        if repeat["status"] == 409 {
            // A conflict answers the resource as it is at the repeat.
            let id = repeat["body"]["id"].as_str().unwrap();
            assert_eq!(repeat["body"], get_task(&app, &laptop.client, id).await);
        } else {
            assert_eq!(first["body"], repeat["body"]);
        }
    }
    assert_eq!(event_count(&app, &admin.client).await, events_before);

    // Both devices pull: the laptop from where it was, the phone from the beginning.
    let mut phone_copy = BTreeMap::new();
    pull_all(&app, &laptop.client, Some(laptop_token), &mut laptop_copy).await;
    pull_all(&app, &phone.client, None, &mut phone_copy).await;
    assert_eq!(laptop_copy, phone_copy, "the devices converge");
    assert!(!laptop_copy.contains_key(&(
        "task".to_owned(),
        foreign["id"].as_str().unwrap().to_owned()
    )));

    // …on the server's state.
    let listed: Value = laptop
        .client
        .get(app.url("/api/tasks?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["items"].as_array().unwrap();
    assert_eq!(listed.len(), 190);
    assert_eq!(laptop_copy.len(), 190);
    for task in listed {
        let id = task["id"].as_str().unwrap().to_owned();
        let current = get_task(&app, &laptop.client, &id).await;
        assert_eq!(laptop_copy.get(&("task".to_owned(), id)), Some(&current));
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_page_collapse_and_long_poll(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let _admin = app.register_user().await;
    let (me, other_device) = user_with_two_devices(&app).await;
    let stranger = app.register_user().await;
    create_task(&app, &stranger.client, 0).await;
    let mut ids = HashSet::new();
    for n in 0..7 {
        ids.insert(
            create_task(&app, &me.client, n).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Pages of at most `limit`, each resource once, in all every task.
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let query = match &token {
            Some(token) => format!("?since={token}&limit=3"),
            None => "?limit=3".to_owned(),
        };
        let page = pull(&app, &me.client, &query).await;
        let changes = page["changes"].as_array().unwrap();
        sizes.push(changes.len());
        for change in changes {
            assert_eq!(change["kind"], "task");
            assert!(seen.insert(change["id"].as_str().unwrap().to_owned()));
        }
        token = Some(page["next"].as_str().unwrap().to_owned());
        if changes.is_empty() {
            break;
        }
    }
    assert_eq!(sizes, vec![3, 3, 1, 0]);
    assert_eq!(seen, ids);
    let token = token.unwrap();

    // Several changes of one task since the token are one change: its state now.
    let id = ids.iter().next().unwrap().clone();
    for priority in [1, 2, 3] {
        let response = other_device
            .client
            .patch(app.url(&format!("/api/tasks/{id}")))
            .json(&json!({"priority": priority}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let page = pull(&app, &me.client, &format!("?since={token}")).await;
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(
        changes[0]["resource"],
        get_task(&app, &me.client, &id).await
    );
    assert_eq!(changes[0]["resource"]["priority"], 3);
    let token = page["next"].as_str().unwrap().to_owned();

    // Up to date: an empty answer, and the same token works again.
    let page = pull(&app, &me.client, &format!("?since={token}")).await;
    assert_eq!(page["changes"], json!([]));

    // A long-poll answers when a change comes; a stranger's change is not one.
    let waiting = {
        let client = me.client.clone();
        let url = app.url(&format!("/api/sync/pull?since={token}&wait_secs=30"));
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    create_task(&app, &stranger.client, 1).await;
    let created = create_task(&app, &other_device.client, 99).await;
    let response = waiting.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["id"], created["id"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_ops_and_tokens_are_problems(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.register_user().await;
    let me = app.register_user().await;
    let stranger = app.register_user().await;
    let foreign = create_task(&app, &stranger.client, 0).await;
    let mine = create_task(&app, &me.client, 0).await;
    let mine_id = mine["id"].as_str().unwrap();

    // Malformed tokens and queries.
    for query in [
        "?since=nope",
        "?since=0000000000000000ffffffffffffffff",
        "?limit=0",
        "?limit=501",
        "?wait_secs=31",
        "?unknown=1",
    ] {
        let response = me
            .client
            .get(app.url(&format!("/api/sync/pull{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}"
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    }
    let anonymous = Client::new()
        .get(app.url("/api/sync/pull"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // A bad batch is refused whole: nothing applied.
    let events_before = event_count(&app, &admin.client).await;
    let create = |op_id: &str| {
        json!({"op_id": op_id, "method": "POST", "path": "/api/tasks",
               "body": {"capability": "sync.test", "input": {}}})
    };
    let too_many: Vec<Value> = (0..501).map(|n| create(&format!("many-{n}"))).collect();
    let mut bad_op_id = vec![create("fine")];
    bad_op_id.push(create("has space"));
    let mut bad_if_match = vec![create("fine")];
    bad_if_match.push(json!({"op_id": "x", "method": "DELETE",
                             "path": format!("/api/tasks/{mine_id}"), "if_match": "abc"}));
    let bad_body = vec![json!({"op_id": "y", "method": "POST", "path": "/api/tasks", "body": [1]})];
    for (ops, field) in [
        (too_many, "ops"),
        (bad_op_id, "ops[1].op_id"),
        (bad_if_match, "ops[1].if_match"),
        (bad_body, "ops[0].body"),
    ] {
        let response = push(&app, &me.client, &ops).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}"
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field);
    }
    for body in [
        json!({"ops": "x"}),
        json!({"ops": [{"op_id": "z"}]}),
        json!({}),
    ] {
        let response = me
            .client
            .post(app.url("/api/sync/push"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    let response = me
        .client
        .post(app.url("/api/sync/push"))
        .header(CONTENT_TYPE, "application/json")
        .body("{\"ops\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(event_count(&app, &admin.client).await, events_before);

    // Ops that are not sync's writes, or that their route refuses, are answered one by one.
    let foreign_id = foreign["id"].as_str().unwrap();
    let ops = vec![
        json!({"op_id": "a", "method": "GET", "path": "/api/tasks"}),
        json!({"op_id": "b", "method": "POST", "path": "/api/auth/login", "body": {}}),
        json!({"op_id": "c", "method": "POST", "path": "/api/tasks?x=1", "body": {}}),
        json!({"op_id": "d", "method": "DELETE", "path": "/api/../api/tasks"}),
        json!({"op_id": "e", "method": "DELETE", "path": format!("/api/tasks/{foreign_id}")}),
        json!({"op_id": "f", "method": "POST", "path": "/api/tasks", "body": {"input": {}}}),
        json!({"op_id": "g", "method": "POST", "path": format!("/api/workflows/{}/execute", Uuid::now_v7()), "body": {}}),
        json!({"op_id": "h", "method": "PATCH", "path": format!("/api/tasks/{mine_id}"),
               "body": {"priority": 5}, "if_match": "\"99\""}),
        create("i"),
        // The same op id with another request: not a replay.
        json!({"op_id": "i", "method": "POST", "path": "/api/tasks",
               "body": {"capability": "sync.other", "input": {}}}),
    ];
    let results = push_ok(&app, &me.client, &ops).await;
    let statuses: Vec<u64> = results
        .iter()
        .map(|result| result["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![422, 422, 422, 422, 404, 422, 404, 409, 201, 422]
    );
    for result in results
        .iter()
        .filter(|result| result["status"] != 201 && result["status"] != 409)
    {
        assert!(
            result["body"]["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:chronicle:problem:"),
            "{result}"
        );
    }
    assert_eq!(results[0]["body"]["code"], "sync.unsupported_op");
    assert_eq!(
        results[7]["body"],
        get_task(&app, &me.client, mine_id).await
    );
    assert_eq!(results[9]["body"]["code"], "idempotency.key_reused");
    // The stranger's task is untouched.
    assert_eq!(
        get_task(&app, &stranger.client, foreign_id).await["status"],
        "queued"
    );
}
