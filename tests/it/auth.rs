//! Black-box tests of authentication, isolation, roles, rate limits and CORS.

use std::process::Stdio;

use chronicle::auth::jwt::{AccessClaims, JwtCodec};
use chronicle::auth::secret::ServerKeys;
use chronicle_commands::auth::Role;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    bearer_client, spawn_app, spawn_app_with, Backend, TestApp, TestUser, PASSWORD,
};

const SECRET: &str = "a test secret that is long enough for HS256";

/// What no response body may ever contain.
fn assert_clean(body: &str) {
    for needle in [
        "$argon2",
        "secret_hash",
        "password_hash",
        PASSWORD,
        "SELECT ",
        "panicked",
    ] {
        assert!(
            !body.contains(needle),
            "a response leaks `{needle}`: {body}"
        );
    }
}

async fn unauthorized(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    let body = response.text().await.unwrap();
    assert_clean(&body);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], 401);
}

async fn post(client: &Client, url: String, body: Value) -> reqwest::Response {
    client.post(url).json(&body).send().await.unwrap()
}

async fn json_of(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let text = response.text().await.unwrap();
    assert_clean(&text);
    serde_json::from_str(&text).unwrap()
}

async fn login(app: &TestApp, email: &str) -> TestUser {
    let response = post(
        &Client::new(),
        app.url("/api/auth/login"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    TestUser::new(json_of(response, StatusCode::OK).await)
}

async fn create_task(client: &Client, app: &TestApp) -> String {
    let response = post(
        client,
        app.url("/api/tasks"),
        json!({"capability": "a.b", "input": {}}),
    )
    .await;
    json_of(response, StatusCode::CREATED).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn register_login_refresh_logout(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let anonymous = Client::new();

    unauthorized(
        anonymous
            .get(app.url("/api/users/me"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    unauthorized(
        post(
            &anonymous,
            app.url("/api/tasks"),
            json!({"capability": "a.b"}),
        )
        .await,
    )
    .await;

    let first = post(
        &anonymous,
        app.url("/api/auth/register"),
        json!({"email": " Ada@Example.com ", "password": PASSWORD, "display_name": "Ada"}),
    )
    .await;
    let first = json_of(first, StatusCode::CREATED).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900);
    assert_eq!(first["user"]["email"], "ada@example.com");
    assert_eq!(first["user"]["display_name"], "Ada");
    assert_eq!(
        first["user"]["roles"],
        json!(["admin"]),
        "the first user is admin"
    );
    let ada = TestUser::new(first);

    let me = json_of(
        ada.client
            .get(app.url("/api/users/me"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["id"], ada.id.as_str());
    assert_eq!(me["roles"], json!(["admin"]));
    assert!(me["created_at"].is_string());

    let taken = post(
        &anonymous,
        app.url("/api/auth/register"),
        json!({"email": "ada@example.com", "password": "another password"}),
    )
    .await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let short = post(
        &anonymous,
        app.url("/api/auth/register"),
        json!({"email": "bob@example.com", "password": "short"}),
    )
    .await;
    assert_eq!(
        json_of(short, StatusCode::UNPROCESSABLE_ENTITY).await["errors"][0]["field"],
        "password"
    );

    let bob = app.register("bob@example.com").await;
    assert_eq!(
        bob.body["user"]["roles"],
        json!(["user"]),
        "later users are not admin"
    );

    for (email, password) in [
        ("ada@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
    ] {
        let response = post(
            &anonymous,
            app.url("/api/auth/login"),
            json!({"email": email, "password": password}),
        )
        .await;
        unauthorized(response).await;
    }

    // Rotation: each refresh token works once.
    let session = login(&app, "ada@example.com").await;
    let rotated = post(
        &anonymous,
        app.url("/api/auth/refresh"),
        json!({"refresh_token": session.refresh_token}),
    )
    .await;
    let rotated = json_of(rotated, StatusCode::OK).await;
    assert_eq!(rotated["token_type"], "Bearer");
    let rotated_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated_refresh, session.refresh_token);
    let fresh = bearer_client(rotated["access_token"].as_str().unwrap());
    json_of(
        fresh.get(app.url("/api/users/me")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let next = post(
        &anonymous,
        app.url("/api/auth/refresh"),
        json!({"refresh_token": rotated_refresh}),
    )
    .await;
    let next_refresh = json_of(next, StatusCode::OK).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Logout ends the family; doing it again is fine; the token is dead afterwards.
    let out = post(
        &anonymous,
        app.url("/api/auth/logout"),
        json!({"refresh_token": next_refresh}),
    )
    .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let again = post(
        &anonymous,
        app.url("/api/auth/logout"),
        json!({"refresh_token": next_refresh}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    unauthorized(
        post(
            &anonymous,
            app.url("/api/auth/refresh"),
            json!({"refresh_token": next_refresh}),
        )
        .await,
    )
    .await;

    for junk in ["junk", "rt1.0.0.0", &next_refresh[..next_refresh.len() - 2]] {
        unauthorized(
            post(
                &anonymous,
                app.url("/api/auth/refresh"),
                json!({"refresh_token": junk}),
            )
            .await,
        )
        .await;
        unauthorized(
            post(
                &anonymous,
                app.url("/api/auth/logout"),
                json!({"refresh_token": junk}),
            )
            .await,
        )
        .await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn refresh_reuse_revokes_the_family(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = app.register("ada@example.com").await;
    let anonymous = Client::new();
    let stolen = ada.refresh_token.clone();
    let legit = post(
        &anonymous,
        app.url("/api/auth/refresh"),
        json!({"refresh_token": ada.refresh_token}),
    )
    .await;
    let legit = json_of(legit, StatusCode::OK).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The thief presents the retired token: refused, and the whole family dies with it.
    unauthorized(
        post(
            &anonymous,
            app.url("/api/auth/refresh"),
            json!({"refresh_token": stolen}),
        )
        .await,
    )
    .await;
    unauthorized(
        post(
            &anonymous,
            app.url("/api/auth/refresh"),
            json!({"refresh_token": legit}),
        )
        .await,
    )
    .await;

    // Other sessions of the same user are untouched.
    let other = login(&app, "ada@example.com").await;
    let response = post(
        &anonymous,
        app.url("/api/auth/refresh"),
        json!({"refresh_token": other.refresh_token}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn expired_tampered_foreign_and_unsigned_tokens_are_refused() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.jwt_secret = Some(SECRET.into())).await;
    let ada = app.register("ada@example.com").await;
    let me = app.url("/api/users/me");
    assert_eq!(
        ada.client.get(&me).send().await.unwrap().status(),
        StatusCode::OK
    );

    let codec = JwtCodec::new(&ServerKeys::from_secret(SECRET.as_bytes()).jwt);
    let user_id = ada.id.parse().unwrap();
    let sid = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let valid = codec
        .issue(&AccessClaims::new(user_id, vec![Role::User], sid, now, 60))
        .unwrap();
    assert_eq!(
        bearer_client(&valid)
            .get(&me)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let expired = codec
        .issue(&AccessClaims::new(
            user_id,
            vec![Role::User],
            sid,
            now - chrono::Duration::hours(2),
            900,
        ))
        .unwrap();
    let foreign = JwtCodec::new(&ServerKeys::from_secret(b"another server's secret").jwt)
        .issue(&AccessClaims::new(
            user_id,
            vec![Role::Admin],
            sid,
            now,
            900,
        ))
        .unwrap();

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let parts: Vec<&str> = valid.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let tampered_body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = format!("{}.{tampered_body}.{}", parts[0], parts[2]);
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{tampered_body}.");
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&ServerKeys::from_secret(SECRET.as_bytes()).jwt),
    )
    .unwrap();

    for token in [
        expired.as_str(),
        foreign.as_str(),
        tampered.as_str(),
        alg_none.as_str(),
        hs384.as_str(),
        "not-a-jwt",
        "",
    ] {
        unauthorized(bearer_client(token).get(&me).send().await.unwrap()).await;
    }
    let basic = Client::new()
        .get(&me)
        .header("authorization", "Basic YWRhOnB3")
        .send()
        .await
        .unwrap();
    unauthorized(basic).await;
    // The health check stays anonymous, whatever is sent.
    let health = bearer_client("garbage")
        .get(app.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn api_keys_create_use_rotate_delete(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.register_user().await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let keys = app.url("/api/users/me/api-keys");

    let created = post(&ada.client, keys.clone(), json!({"name": " laptop "})).await;
    let created = json_of(created, StatusCode::CREATED).await;
    let mut fields: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["created_at", "expires_at", "id", "key", "name", "prefix"]
    );
    assert_eq!(created["name"], "laptop");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("chr_"));
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_ne!(key, created["prefix"]);

    // Both headers authenticate as the owner.
    let me = app.url("/api/users/me");
    let by_bearer = json_of(
        bearer_client(&key).get(&me).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_bearer["id"], ada.id.as_str());
    let by_header = Client::new()
        .get(&me)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(by_header, StatusCode::OK).await["id"],
        ada.id.as_str()
    );
    // Events record the real caller.
    let task = create_task(&bearer_client(&key), &app).await;
    let events = ada
        .client
        .get(app.url(&format!("/api/tasks/{task}/events")))
        .send()
        .await
        .unwrap();
    let events = json_of(events, StatusCode::OK).await;
    assert_eq!(events[0]["metadata"]["actor"], format!("user:{}", ada.id));

    // Someone else's key does not exist for bob.
    let rotate = app.url(&format!("/api/users/me/api-keys/{id}/rotate"));
    let one = app.url(&format!("/api/users/me/api-keys/{id}"));
    assert_eq!(
        bob.client.post(&rotate).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.client.delete(&one).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let rotated = json_of(
        ada.client.post(&rotate).send().await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["name"], "laptop");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    unauthorized(bearer_client(&key).get(&me).send().await.unwrap()).await;
    unauthorized(
        Client::new()
            .get(&me)
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        bearer_client(&new_key)
            .get(&me)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    assert_eq!(
        ada.client.delete(&one).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ada.client.delete(&one).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    unauthorized(bearer_client(&new_key).get(&me).send().await.unwrap()).await;
    assert_eq!(
        ada.client.post(&rotate).send().await.unwrap().status(),
        StatusCode::CONFLICT
    );

    let past = post(
        &ada.client,
        keys.clone(),
        json!({"name": "old", "expires_at": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(past.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let guessed = format!("chr_{}_{}", id.replace('-', ""), "0".repeat(64));
    unauthorized(bearer_client(&guessed).get(&me).send().await.unwrap()).await;
    unauthorized(bearer_client("chr_nonsense").get(&me).send().await.unwrap()).await;
}

/// The names of a JSON object's fields, sorted.
fn field_names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    names.sort_unstable();
    names
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn api_keys_are_listed_without_secrets_and_only_to_their_owner(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = app.register_user().await;
    let bob = app.register_user().await;
    let keys = app.url("/api/users/me/api-keys");
    let list = |client: &Client, query: &str| {
        let request = client.get(format!("{keys}{query}"));
        async move { json_of(request.send().await.unwrap(), StatusCode::OK).await }
    };

    assert_eq!(
        list(&ada.client, "").await,
        json!({"items": [], "next_cursor": null})
    );
    let mut issued = Vec::new();
    for name in ["laptop", "phone", "ci"] {
        let created = json_of(
            post(
                &ada.client,
                keys.clone(),
                json!({"name": name, "expires_at": "2999-01-01T00:00:00Z"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        issued.push(created);
    }
    let bobs = json_of(
        post(&bob.client, keys.clone(), json!({"name": "bob's"})).await,
        StatusCode::CREATED,
    )
    .await;

    // Read-your-own-write, newest first, no secret and no hash anywhere.
    let page = list(&ada.client, "").await;
    let text = page.to_string();
    for key in &issued {
        assert!(
            !text.contains(key["key"].as_str().unwrap()),
            "a secret in {text}"
        );
    }
    assert!(!text.contains("hash"), "{text}");
    assert_clean(&text);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let names: Vec<&str> = items.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ci", "phone", "laptop"]);
    assert_eq!(
        field_names(&items[0]),
        [
            "created_at",
            "expires_at",
            "id",
            "name",
            "prefix",
            "rotated_at"
        ]
    );
    assert_eq!(items[2]["id"], issued[0]["id"]);
    assert_eq!(items[2]["prefix"], issued[0]["prefix"]);
    assert_eq!(items[2]["created_at"], issued[0]["created_at"]);
    assert_eq!(items[2]["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(items[2]["rotated_at"], Value::Null);
    assert_eq!(page["next_cursor"], Value::Null);

    // Bob sees only his own key.
    let bob_page = list(&bob.client, "").await;
    assert_eq!(bob_page["items"].as_array().unwrap().len(), 1);
    assert_eq!(bob_page["items"][0]["id"], bobs["id"]);

    // Pages.
    let first = list(&ada.client, "?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = list(&ada.client, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"][0]["name"], "laptop");
    assert_eq!(second["next_cursor"], Value::Null);
    for bad in ["?limit=0", "?limit=501", "?cursor=nope", "?secret=1"] {
        let response = ada.client.get(format!("{keys}{bad}")).send().await.unwrap();
        assert!(
            response.status() == StatusCode::BAD_REQUEST
                || response.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            response.status()
        );
    }

    // Rotation shows the new prefix; deletion takes the key off the list.
    let laptop = issued[0]["id"].as_str().unwrap();
    let rotated = json_of(
        ada.client
            .post(app.url(&format!("/api/users/me/api-keys/{laptop}/rotate")))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let phone = issued[1]["id"].as_str().unwrap();
    assert_eq!(
        ada.client
            .delete(app.url(&format!("/api/users/me/api-keys/{phone}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let page = list(&ada.client, "").await;
    let items = page["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ci", "laptop"]);
    assert_eq!(items[1]["prefix"], rotated["prefix"]);
    assert_ne!(items[1]["prefix"], issued[0]["prefix"]);
    assert!(items[1]["rotated_at"].is_string());

    // An API key cannot list keys (only a signed-in user), and nobody anonymous.
    let ci_key = issued[2]["key"].as_str().unwrap();
    assert_eq!(
        bearer_client(ci_key)
            .get(&keys)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "a user's own API key acts as the user"
    );
    unauthorized(Client::new().get(&keys).send().await.unwrap()).await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn another_users_task_is_404_through_every_verb(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.register_user().await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let task = create_task(&ada.client, &app).await;
    let path = app.url(&format!("/api/tasks/{task}"));
    let events = format!("{path}/events");
    for response in [
        bob.client.get(&path).send().await.unwrap(),
        bob.client.delete(&path).send().await.unwrap(),
        bob.client
            .delete(&path)
            .header("if-match", "\"1\"")
            .send()
            .await
            .unwrap(),
        bob.client.get(&events).send().await.unwrap(),
    ] {
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.text().await.unwrap();
        assert!(!body.contains(&task) && !body.contains(&ada.id), "{body}");
    }
    // Still there, untouched, for its owner.
    let read = json_of(ada.client.get(&path).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(read["status"], "queued");
    assert_eq!(read["owner_id"], ada.id.as_str());
}

/// Creates a user with `chronicle user create`, the password on stdin.
async fn cli_create_user(app: &TestApp, email: &str, role: &str) -> Value {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args([
            "user",
            "create",
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ])
        .env("CHRONICLE_DATABASE_URL", &app.db.url)
        .env("CHRONICLE_DATA_DIR", app.db.data_dir())
        .env("CHRONICLE_LOG__FORMAT", "json")
        .env_remove("CHRONICLE_CONFIG")
        .current_dir(app.db.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chronicle");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "user create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_clean(&stdout);
    serde_json::from_str(&stdout).unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn auditors_read_everything_and_write_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let created = cli_create_user(&app, "audit@example.com", "auditor").await;
    assert_eq!(created["roles"], json!(["auditor"]));
    // An operator's user counts: the next self-registration is not the first, not admin.
    let ada = app.register("ada@example.com").await;
    assert_eq!(ada.body["user"]["roles"], json!(["user"]));
    let auditor = login(&app, "audit@example.com").await;
    assert_eq!(auditor.body["user"]["roles"], json!(["auditor"]));

    let task = create_task(&ada.client, &app).await;
    let path = app.url(&format!("/api/tasks/{task}"));
    assert_eq!(
        auditor.client.get(&path).send().await.unwrap().status(),
        StatusCode::OK
    );
    let events = auditor
        .client
        .get(format!("{path}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(
        auditor.client.delete(&path).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let create = post(
        &auditor.client,
        app.url("/api/tasks"),
        json!({"capability": "a.b"}),
    )
    .await;
    assert_eq!(create.status(), StatusCode::FORBIDDEN);
    let read = json_of(ada.client.get(&path).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(read["status"], "queued");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn racing_first_registrations_make_exactly_one_admin(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let registrations = (0..4).map(|n| {
        let url = app.url("/api/auth/register");
        async move {
            let response = post(
                &Client::new(),
                url,
                json!({"email": format!("u{n}@example.com"), "password": PASSWORD}),
            )
            .await;
            json_of(response, StatusCode::CREATED).await
        }
    });
    let bodies = futures::future::join_all(registrations).await;
    let admins = bodies
        .iter()
        .filter(|b| b["user"]["roles"] == json!(["admin"]))
        .count();
    assert_eq!(admins, 1, "{bodies:?}");
}

#[tokio::test]
async fn closed_registration_is_for_admins_only() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.registration = chronicle::config::Registration::Closed;
    })
    .await;
    let anonymous = post(
        &Client::new(),
        app.url("/api/auth/register"),
        json!({"email": "x@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
    cli_create_user(&app, "root@example.com", "admin").await;
    let admin = login(&app, "root@example.com").await;
    let by_admin = post(
        &admin.client,
        app.url("/api/auth/register"),
        json!({"email": "x@example.com", "password": PASSWORD}),
    )
    .await;
    let by_admin = json_of(by_admin, StatusCode::CREATED).await;
    assert_eq!(by_admin["user"]["roles"], json!(["user"]));
    let user = TestUser::new(by_admin);
    let by_user = post(
        &user.client,
        app.url("/api/auth/register"),
        json!({"email": "y@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limit.per_minute = 5;
        s.rate_limit.auth_per_minute = 3;
    })
    .await;
    let ada = app.register("ada@example.com").await;
    let me = app.url("/api/users/me");
    for _ in 0..5 {
        assert_eq!(
            ada.client.get(&me).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let limited = ada.client.get(&me).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()[CONTENT_TYPE], "application/problem+json");

    // Auth routes have their own, stricter limit per IP (register spent one of three).
    for _ in 0..2 {
        let response = post(
            &Client::new(),
            app.url("/api/auth/login"),
            json!({"email": "ada@example.com", "password": "wrong password"}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = post(
        &Client::new(),
        app.url("/api/auth/login"),
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(RETRY_AFTER));
}

#[tokio::test]
async fn cors_allows_the_extension_and_not_strangers() {
    let app = spawn_app(Backend::Sqlite).await;
    let preflight = |origin: &'static str| {
        Client::new()
            .request(reqwest::Method::OPTIONS, app.url("/api/tasks"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("chrome-extension://abcdefghijklmnopabcdefghijklmnop")
        .await
        .unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "chrome-extension://abcdefghijklmnopabcdefghijklmnop"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(headers.contains("authorization"), "{headers}");

    let refused = preflight("https://evil.example").await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    let simple = Client::new()
        .get(app.url("/api/health"))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(
        simple.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
}
