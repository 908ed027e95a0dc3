//! Search over HTTP: BM25, the builtin embedder's vector leg and their fusion, the kind
//! filter, owner isolation in every mode and in RAG context, a rebuilt index against the
//! live one, SIGKILL while indexing, and hostile queries — on both backends.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};

use crate::crash::{free_port, start};
use crate::helpers::{spawn_app, Backend, TestApp, TestDb, TestUser};

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a task of `capability` with `input`; answers its id.
async fn create(client: &Client, base: &str, capability: &str, input: Value) -> String {
    let (status, body) = send(
        client
            .post(format!("{base}/api/tasks"))
            .json(&json!({"capability": capability, "input": input})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Leases the caller's one queued task of `capability` with a new agent and reports
/// `output` for it.
async fn complete(client: &Client, base: &str, capability: &str, task: &str, output: Value) {
    let (status, agent) = send(
        client
            .post(format!("{base}/api/agents/register"))
            .json(&json!({
                "name": "search test agent", "kind": "remote", "capabilities": [capability],
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap();
    let (status, leased) = send(
        client
            .post(format!("{base}/api/agents/{agent}/lease"))
            .json(&json!({"max_tasks": 1, "wait_secs": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{leased}");
    let leased = &leased["tasks"][0];
    assert_eq!(leased["id"], task);
    let (status, body) = send(
        client
            .patch(format!("{base}/api/tasks/{task}"))
            .json(&json!({
                "status": "succeeded", "lease_id": leased["lease_id"], "output": output,
            })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Waits until the search index has applied every event (its `/api/status` row).
/// Asked as a signed-in user: the anonymous answer is cached for a second.
pub(crate) async fn indexed(admin: &Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The admin route, not `/api/status`: that answer is reused for a second, and may
        // say "caught up" from before the last writes.
        let (_, status) = send(admin.get(format!("{base}/api/admin/projections"))).await;
        let search = status
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["name"] == "search").cloned());
        if search
            .as_ref()
            .is_some_and(|row| row["lag_events"] == 0 && row["status"] == "live")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the search index did not catch up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/search` answered 200: its items.
pub(crate) async fn search(client: &Client, base: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let (status, body) = send(client.get(format!("{base}/api/search")).query(query)).await;
    assert_eq!(status, StatusCode::OK, "{query:?}: {body}");
    body["items"].as_array().unwrap().clone()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

/// An app whose first user (an admin) is `app.client`, and two ordinary users.
async fn app_with_users(backend: Backend) -> (TestApp, TestUser, TestUser) {
    let app = spawn_app(backend).await.signed_in().await;
    let alice = app.register_user().await;
    let bob = app.register_user().await;
    (app, alice, bob)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bm25_finds_exact_terms_in_input(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    let task = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "the quarterly zebrafish census"}),
    )
    .await;
    create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "an unrelated grocery list"}),
    )
    .await;
    indexed(&app.client, &base).await;
    let items = search(
        &alice.client,
        &base,
        &[("q", "zebrafish"), ("mode", "bm25")],
    )
    .await;
    assert_eq!(ids(&items), vec![task.clone()]);
    assert_eq!(items[0]["kind"], "task");
    assert_eq!(items[0]["bm25_rank"], 1);
    assert!(items[0]["vector_rank"].is_null());
    assert!(
        items[0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>zebrafish</b>"),
        "{}",
        items[0]
    );
    // Stemmed: the plural finds the singular.
    assert_eq!(
        ids(&search(&alice.client, &base, &[("q", "censuses"), ("mode", "bm25")]).await),
        vec![task.clone()]
    );
    assert!(search(
        &alice.client,
        &base,
        &[("q", "photosynthesis"), ("mode", "bm25")]
    )
    .await
    .is_empty());
}

/// A task's output is indexed once it succeeded, in place (one document per task).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bm25_finds_exact_terms_in_output(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    let task = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "the quarterly zebrafish census"}),
    )
    .await;
    complete(
        &alice.client,
        &base,
        "notes.write",
        &task,
        json!({"summary": "photosynthesis anomaly"}),
    )
    .await;
    indexed(&app.client, &base).await;
    let items = search(
        &alice.client,
        &base,
        &[("q", "photosynthesis"), ("mode", "bm25")],
    )
    .await;
    assert_eq!(
        ids(&items),
        vec![task.clone()],
        "the output is indexed once the task succeeded"
    );
    // Updated in place: still one document for the task.
    let items = search(
        &alice.client,
        &base,
        &[("q", "zebrafish photosynthesis"), ("mode", "bm25")],
    )
    .await;
    assert_eq!(ids(&items), [task]);
}

/// What the builtin embedder's vector leg can and cannot find. It is lexical (hashed
/// words, word pairs and character trigrams in 256 dimensions), so it finds:
/// - a word the document has ("fence");
/// - another form of it ("fences": shared trigrams; BM25 finds it too, by stemming);
/// - a misspelling of a long word in a short document ("reconcilation" finds
///   "reconciliation", which BM25 misses).
///
/// It cannot find:
/// - a paraphrase sharing no word ("automobile repair" → "fixing my car": ranked last,
///   below the document that shares "repair");
/// - a misspelled short word among others ("recieve" shares 3 of 7 trigrams with
///   "receive the parcel": lost in the hashing noise, not ranked first).
///
/// The vector leg ranks every document of a small scope, so "cannot find" means "not
/// ranked above unrelated documents".
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn builtin_vectors_find_shared_words_and_spellings_not_paraphrases(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    let mut created = Vec::new();
    for (capability, note) in [
        ("ledger.check", "reconciliation"),
        ("garage.book", "fixing my car"),
        ("garden.plan", "repair of the fence"),
        ("weather.get", "forecast for tomorrow"),
        ("mail.fetch", "receive the parcel"),
    ] {
        created.push(create(&alice.client, &base, capability, json!({"note": note})).await);
    }
    let [reconciliation, car, fence, _weather, parcel] = <[String; 5]>::try_from(created).unwrap();
    indexed(&app.client, &base).await;
    let vector = |q: &'static str| {
        let (client, base) = (alice.client.clone(), base.clone());
        async move { ids(&search(&client, &base, &[("q", q), ("mode", "vector")]).await) }
    };
    let bm25 = |q: &'static str| {
        let (client, base) = (alice.client.clone(), base.clone());
        async move { ids(&search(&client, &base, &[("q", q), ("mode", "bm25")]).await) }
    };

    // Can: the word, another form of it, a misspelled long word.
    assert_eq!(vector("fence").await[0], fence);
    assert_eq!(vector("fences").await[0], fence);
    assert_eq!(bm25("fences").await, std::slice::from_ref(&fence));
    assert_eq!(vector("reconcilation").await[0], reconciliation);
    assert!(bm25("reconcilation").await.is_empty());

    // Cannot: a paraphrase, a misspelled short word.
    let items = vector("automobile repair").await;
    assert_eq!(items.len(), 5, "{items:?}");
    assert_eq!(items[0], fence, "the shared word wins: {items:?}");
    assert_eq!(items[4], car, "the paraphrase is ranked last: {items:?}");
    assert!(bm25("automobile").await.is_empty());
    let items = vector("recieve").await;
    assert_ne!(items[0], parcel, "{items:?}");
    assert!(bm25("recieve").await.is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn hybrid_ranks_a_document_both_legs_find_first(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    let both = create(
        &alice.client,
        &base,
        "ledger.check",
        json!({"note": "invoice reconciliation for march"}),
    )
    .await;
    for note in [
        "invoices were sent",
        "reconciling accounts",
        "march weather",
        "an invoice template",
    ] {
        create(&alice.client, &base, "ledger.check", json!({"note": note})).await;
    }
    indexed(&app.client, &base).await;
    let items = search(
        &alice.client,
        &base,
        &[("q", "invoice reconciliation"), ("mode", "hybrid")],
    )
    .await;
    assert_eq!(items[0]["id"], both.as_str(), "{items:?}");
    assert!(
        items[0]["bm25_rank"].is_u64() && items[0]["vector_rank"].is_u64(),
        "{}",
        items[0]
    );
    let expected = 1.0 / (60.0 + items[0]["bm25_rank"].as_f64().unwrap())
        + 1.0 / (60.0 + items[0]["vector_rank"].as_f64().unwrap());
    assert!(
        (items[0]["score"].as_f64().unwrap() - expected).abs() < 1e-9,
        "RRF with k = 60"
    );
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_kind_filter_keeps_tasks_or_workflow_runs(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    let task = create(&alice.client, &base, "kiwi.pick", json!({"fruit": "kiwi"})).await;
    let (status, workflow) = send(alice.client.post(format!("{base}/api/workflows")).json(
        &json!({
            "name": "kiwi harvest",
            "steps": [{"id": "pick", "capability": "orchard.pick", "input": {"fruit": "kiwi"}}],
        }),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{workflow}");
    let (status, run) = send(
        alice
            .client
            .post(format!(
                "{base}/api/workflows/{}/execute",
                workflow["id"].as_str().unwrap()
            ))
            .json(&json!({"params": {}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    indexed(&app.client, &base).await;

    let runs = search(
        &alice.client,
        &base,
        &[("q", "kiwi harvest"), ("kind", "workflow_run")],
    )
    .await;
    assert_eq!(ids(&runs), [run], "{runs:?}");
    assert_eq!(runs[0]["kind"], "workflow_run");
    let tasks = search(&alice.client, &base, &[("q", "kiwi"), ("kind", "task")]).await;
    assert!(tasks.iter().all(|t| t["kind"] == "task"), "{tasks:?}");
    assert!(ids(&tasks).contains(&task));
    let everything = ids(&search(&alice.client, &base, &[("q", "kiwi")]).await);
    assert!(everything.contains(&task) && everything.len() > tasks.len());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn nobody_finds_another_users_documents_in_any_mode_or_context(#[case] backend: Backend) {
    let (app, alice, bob) = app_with_users(backend).await;
    let base = app.address.clone();
    let mine = create(
        &alice.client,
        &base,
        "vault.note",
        json!({"secret": "platypus alpha"}),
    )
    .await;
    let theirs = create(
        &bob.client,
        &base,
        "vault.note",
        json!({"secret": "platypus bravo"}),
    )
    .await;
    indexed(&app.client, &base).await;
    for mode in ["bm25", "vector", "hybrid"] {
        for query in ["platypus", "platypus bravo", "bravo"] {
            let items = search(&alice.client, &base, &[("q", query), ("mode", mode)]).await;
            assert!(!ids(&items).contains(&theirs), "{mode} {query}: {items:?}");
            assert!(
                items.iter().all(|i| !i.to_string().contains("bravo")),
                "{mode}: {items:?}"
            );
        }
        let items = ids(&search(&alice.client, &base, &[("q", "platypus"), ("mode", mode)]).await);
        assert_eq!(items, vec![mine.clone()], "{mode}");
        // The admin reads everyone's.
        let all = ids(&search(&app.client, &base, &[("q", "platypus"), ("mode", mode)]).await);
        assert!(
            all.contains(&mine) && all.contains(&theirs),
            "{mode}: {all:?}"
        );
    }
    let (status, context) = send(
        alice
            .client
            .post(format!("{base}/api/rag/context"))
            .json(&json!({"query": "platypus bravo", "limit": 10})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert!(
        !context["context"]
            .as_str()
            .unwrap()
            .contains("platypus bravo"),
        "{context}"
    );
    let sources: Vec<&str> = context["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [mine.as_str()]);
    assert!(context["context"]
        .as_str()
        .unwrap()
        .contains("platypus alpha"));
    // Within max_chars.
    let (status, short) = send(
        alice
            .client
            .post(format!("{base}/api/rag/context"))
            .json(&json!({"query": "platypus", "max_chars": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{short}");
    assert!(
        short["context"].as_str().unwrap().chars().count() <= 20,
        "{short}"
    );
    // Strangers get nothing.
    let (status, _) = send(Client::new().get(format!("{base}/api/search?q=platypus"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_rebuilt_index_answers_the_same_top_ten(#[case] backend: Backend) {
    let (app, alice, bob) = app_with_users(backend).await;
    let base = app.address.clone();
    let words = [
        "amber", "basalt", "cobalt", "dune", "ember", "fjord", "granite",
    ];
    for i in 0..24 {
        let user = if i % 3 == 0 { &bob } else { &alice };
        let note = format!(
            "{} {} {}",
            words[i % 7],
            words[(i * 3) % 7],
            words[(i * 5 + 1) % 7]
        );
        let task = create(
            &user.client,
            &base,
            "rock.survey",
            json!({"note": note, "n": i}),
        )
        .await;
        if i % 4 == 0 {
            let (status, _) = send(user.client.delete(format!("{base}/api/tasks/{task}"))).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    indexed(&app.client, &base).await;
    let queries = [
        "amber",
        "basalt cobalt",
        "fjord granite ember",
        "dune",
        "cancelled",
        "survey",
    ];
    let mut before = Vec::new();
    for q in queries {
        for mode in ["bm25", "vector", "hybrid"] {
            for client in [&app.client, &alice.client] {
                before.push(ids(&search(
                    client,
                    &base,
                    &[("q", q), ("mode", mode), ("limit", "10")],
                )
                .await));
            }
        }
    }
    assert!(before.iter().any(|b| b.len() == 10));
    let (status, body) = send(
        app.client
            .post(format!("{base}/api/admin/projections/search/rebuild")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    indexed(&app.client, &base).await;
    let mut after = Vec::new();
    for q in queries {
        for mode in ["bm25", "vector", "hybrid"] {
            for client in [&app.client, &alice.client] {
                after.push(ids(&search(
                    client,
                    &base,
                    &[("q", q), ("mode", mode), ("limit", "10")],
                )
                .await));
            }
        }
    }
    // The same documents in the same order: BM25 counts alive documents only (not the
    // replaced copies the live index still holds), and equal scores go in key order.
    assert_eq!(before, after);
}

/// Tasks created while the server is killed with SIGKILL mid-burst are all found once
/// after the restart, none twice. Where the kill lands in the indexing is not controlled
/// (the index commits every batch while the tasks arrive).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn sigkill_while_indexing_loses_nothing_and_duplicates_nothing(#[case] backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(&db, port).await;
    let (_, registered) = send(
        Client::new()
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"email": "ada@example.com", "password": crate::helpers::PASSWORD})),
    )
    .await;
    let client = crate::helpers::bearer_client(registered["access_token"].as_str().unwrap());
    let created = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut creators = Vec::new();
    for writer in 0..4 {
        let (client, base, created) = (client.clone(), base.clone(), created.clone());
        creators.push(tokio::spawn(async move {
            for n in 0..100 {
                let token = format!("tok{writer}x{n}");
                let Ok(response) = client
                    .post(format!("{base}/api/tasks"))
                    .json(&json!({"capability": "crash.index", "input": {"token": token}}))
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                created
                    .lock()
                    .unwrap()
                    .push((token, body["id"].as_str().unwrap().to_owned()));
            }
        }));
    }
    while created.lock().unwrap().len() < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    for creator in creators {
        creator.await.unwrap();
    }
    let created = created.lock().unwrap().clone();
    assert!(created.len() >= 150);

    let mut server = start(&db, port).await;
    indexed(&client, &base).await;
    for (token, id) in &created {
        let items = search(&client, &base, &[("q", token.as_str()), ("mode", "bm25")]).await;
        assert_eq!(ids(&items), vec![id.clone()], "{token}");
    }
    // Those whose answer the kill cut off: once at most.
    for writer in 0..4 {
        for n in 0..100 {
            let token = format!("tok{writer}x{n}");
            let items = search(&client, &base, &[("q", token.as_str()), ("mode", "bm25")]).await;
            assert!(items.len() <= 1, "{token}: {items:?}");
        }
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn hostile_queries_answer_200_or_422_never_500(#[case] backend: Backend) {
    let (app, alice, _) = app_with_users(backend).await;
    let base = app.address.clone();
    create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "plain words"}),
    )
    .await;
    indexed(&app.client, &base).await;
    let long = "a".repeat(10_000);
    let hostile = [
        "\"unbalanced",
        "AND OR",
        "field:",
        "owner:*",
        "state:x",
        "title:",
        "((((",
        "))",
        "'; DROP TABLE tasks; --",
        "<script>alert(1)</script>",
        "*",
        "?",
        "~2",
        "a^",
        "+",
        "-",
        "\\",
        "[a TO",
        "{}",
        "NOT",
        "words\"",
        "\u{1F600}",
        "plain AND",
        "a:b:c",
        long.as_str(),
    ];
    for q in hostile {
        for mode in ["bm25", "vector", "hybrid"] {
            let (status, body) = send(
                alice
                    .client
                    .get(format!("{base}/api/search"))
                    .query(&[("q", q), ("mode", mode)]),
            )
            .await;
            assert!(
                status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
                "{q:?} {mode}: {status} {body}"
            );
        }
        let (status, body) = send(
            alice
                .client
                .post(format!("{base}/api/rag/context"))
                .json(&json!({"query": q})),
        )
        .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{q:?}: {status} {body}"
        );
    }
    let items = search(
        &alice.client,
        &base,
        &[("q", "\"plain words"), ("mode", "bm25")],
    )
    .await;
    assert_eq!(items.len(), 1, "an unbalanced quote is read as plain words");
    for bad in [
        vec![("q", "x"), ("limit", "0")],
        vec![("q", "x"), ("limit", "101")],
        vec![("q", "x"), ("limit", "many")],
        vec![("q", "x"), ("mode", "psychic")],
        vec![("q", "x"), ("kind", "agent")],
        vec![("q", "   ")],
        vec![("q", long.as_str())],
        vec![],
    ] {
        let (status, body) = send(alice.client.get(format!("{base}/api/search")).query(&bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {body}");
        assert_eq!(body["status"], 422);
    }
    for bad in [
        json!({"query": ""}),
        json!({"query": "x", "limit": 0}),
        json!({"query": "x", "max_chars": 0}),
        json!({"query": "x", "max_chars": 100_001}),
        json!({}),
    ] {
        let (status, body) = send(
            alice
                .client
                .post(format!("{base}/api/rag/context"))
                .json(&bad),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
}

/// The sentence-embedding model `scripts/fetch-test-model` fetches (or
/// `CHRONICLE_TEST_MODEL_DIR`); a missing model fails the test, it never skips it.
#[cfg(feature = "local-embeddings")]
fn test_model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CHRONICLE_TEST_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run ./scripts/fetch-test-model",
        dir.display()
    );
    dir
}

#[cfg(feature = "local-embeddings")]
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn local_vectors_find_a_paraphrase_that_shares_no_word(#[case] backend: Backend) {
    let dir = test_model_dir();
    let app = crate::helpers::spawn_app_with(backend, move |settings| {
        settings.embeddings.provider = "local".into();
        settings.embeddings.model_dir = Some(dir);
    })
    .await
    .signed_in()
    .await;
    let alice = app.register_user().await;
    let base = app.address.clone();
    let mut others = Vec::new();
    for note in [
        "baking sourdough bread at home",
        "quarterly tax report for the accountant",
        "learning to play the violin",
        "planting tomatoes in the garden",
        "booking a flight to Lisbon",
    ] {
        others.push(create(&alice.client, &base, "notes.write", json!({"note": note})).await);
    }
    let car = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "fixing my car"}),
    )
    .await;
    indexed(&app.client, &base).await;

    for word in ["automobile", "repair"] {
        assert!(
            search(&alice.client, &base, &[("q", word), ("mode", "bm25")])
                .await
                .is_empty(),
            "{word} is in no document"
        );
    }
    let items = search(
        &alice.client,
        &base,
        &[("q", "automobile repair"), ("mode", "vector")],
    )
    .await;
    assert_eq!(ids(&items)[0], car, "{items:?}");
    assert_eq!(items[0]["vector_rank"], 1);
    let hybrid = search(
        &alice.client,
        &base,
        &[("q", "automobile repair"), ("mode", "hybrid")],
    )
    .await;
    assert_eq!(ids(&hybrid)[0], car, "{hybrid:?}");
}

/// A fake embeddings server speaking both wire formats (`/v1/embeddings`, `/api/embed`):
/// 8 dimensions, word-hashed (a text shares a vector's direction with texts sharing its
/// words), answering 500 while `down`.
#[derive(Default)]
struct FakeEmbeddings {
    down: std::sync::atomic::AtomicBool,
    inputs: std::sync::Mutex<Vec<String>>,
}

impl FakeEmbeddings {
    fn vector(text: &str) -> Vec<f32> {
        let mut vector = vec![0.01f32; 8];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let hash = word
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            vector[(hash % 8) as usize] += 1.0;
        }
        vector
    }

    fn saw(&self, needle: &str) -> bool {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.contains(needle))
    }

    async fn serve(self: &std::sync::Arc<Self>) -> String {
        use axum::extract::{Json, State};
        use axum::routing::post;
        async fn answer(
            State(fake): State<std::sync::Arc<FakeEmbeddings>>,
            uri: axum::http::Uri,
            Json(body): Json<Value>,
        ) -> (axum::http::StatusCode, Json<Value>) {
            if fake.down.load(std::sync::atomic::Ordering::SeqCst) {
                return (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "model not loaded"})),
                );
            }
            let inputs: Vec<String> = body["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect();
            fake.inputs.lock().unwrap().extend(inputs.iter().cloned());
            let vectors: Vec<Vec<f32>> = inputs.iter().map(|t| FakeEmbeddings::vector(t)).collect();
            let body = if uri.path() == "/api/embed" {
                json!({"model": body["model"], "embeddings": vectors})
            } else {
                let data: Vec<Value> = vectors
                    .iter()
                    .enumerate()
                    .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                    .collect();
                json!({"object": "list", "data": data, "model": body["model"]})
            };
            (axum::http::StatusCode::OK, Json(body))
        }
        let router = axum::Router::new()
            .route("/v1/embeddings", post(answer))
            .route("/api/embed", post(answer))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }
}

/// The search row of `/api/admin/projections`.
async fn search_row(admin: &Client, base: &str) -> Value {
    let (status, rows) = send(admin.get(format!("{base}/api/admin/projections"))).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    rows.as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == "search").cloned())
        .unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_embedder_that_fails_holds_the_index_at_the_document_until_it_answers(
    #[case] backend: Backend,
) {
    let fake = std::sync::Arc::new(FakeEmbeddings::default());
    let url = fake.serve().await;
    let app = crate::helpers::spawn_app_with(backend, move |settings| {
        settings.embeddings.provider = "openai".into();
        settings.embeddings.base_url = Some(url);
        settings.embeddings.model = Some("fake-embed".into());
        settings.embeddings.dimensions = Some(8);
        settings.embeddings.max_retries = 1;
        settings.embeddings.initial_backoff_ms = 1;
        settings.embeddings.max_backoff_ms = 5;
    })
    .await
    .signed_in()
    .await;
    let alice = app.register_user().await;
    let base = app.address.clone();
    let first = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "alpha"}),
    )
    .await;
    indexed(&app.client, &base).await;

    fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "bravo"}),
    )
    .await;
    let third = create(
        &alice.client,
        &base,
        "notes.write",
        json!({"note": "hotel"}),
    )
    .await;
    // The index stops before the documents it could not embed and says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = search_row(&app.client, &base).await;
        if row["error"].is_string() {
            break row;
        }
        assert!(Instant::now() < deadline, "no error shown: {row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = row["error"].as_str().unwrap();
    assert!(
        error.contains("embedder openai:fake-embed-8")
            && error.contains("answered 500 after 1 retries"),
        "{row}"
    );
    assert_ne!(row["status"], "live", "{row}");
    assert!(row["lag_events"].as_i64().unwrap() > 0, "{row}");
    for note in ["bravo", "hotel"] {
        assert!(
            search(&alice.client, &base, &[("q", note), ("mode", "bm25")])
                .await
                .is_empty(),
            "{note} was written without its vector"
        );
    }
    let items = search(&alice.client, &base, &[("q", "alpha"), ("mode", "bm25")]).await;
    assert_eq!(ids(&items), vec![first.clone()], "searches go on");
    // A query that needs the embedder meanwhile is a 503 to retry, not a 500.
    for mode in ["vector", "hybrid"] {
        let answer = alice
            .client
            .get(format!("{base}/api/search"))
            .query(&[("q", "alpha"), ("mode", mode)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 503, "{mode}");
        assert_eq!(answer.headers()["retry-after"], "1");
        let problem: Value = answer.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:chronicle:problem:unavailable",
            "{problem}"
        );
    }

    // Once it answers, the same events are applied: nothing was skipped.
    fake.down.store(false, std::sync::atomic::Ordering::SeqCst);
    indexed(&app.client, &base).await;
    assert!(search_row(&app.client, &base).await["error"].is_null());
    for (note, id) in [("bravo", &second), ("hotel", &third)] {
        let items = search(&alice.client, &base, &[("q", note), ("mode", "bm25")]).await;
        assert_eq!(ids(&items), vec![id.clone()], "{note}");
        let items = search(&alice.client, &base, &[("q", note), ("mode", "vector")]).await;
        assert_eq!(ids(&items)[0], *id, "{note}: {items:?}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn switching_the_embedder_builds_the_index_again_with_the_new_vectors(
    #[case] backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(&db, port).await;
    let registered: Value = Client::new()
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = crate::helpers::bearer_client(registered["access_token"].as_str().unwrap());
    let task = create(
        &client,
        &base,
        "notes.write",
        json!({"note": "zebra crossing"}),
    )
    .await;
    indexed(&client, &base).await;
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");

    // The same data dir, now with a remote embedder: the builtin vectors are not reused.
    let fake = std::sync::Arc::new(FakeEmbeddings::default());
    let url = fake.serve().await;
    let mut command = crate::crash::chronicle(&db, port);
    command
        .arg("serve")
        .env("CHRONICLE_EMBEDDINGS__PROVIDER", "ollama")
        .env("CHRONICLE_EMBEDDINGS__BASE_URL", &url)
        .env("CHRONICLE_EMBEDDINGS__MODEL", "fake-embed");
    let mut server = crate::crash::started(command, port).await;
    indexed(&client, &base).await;
    assert!(
        fake.saw("zebra crossing"),
        "the old task was embedded again"
    );
    let items = search(&client, &base, &[("q", "zebra"), ("mode", "vector")]).await;
    assert_eq!(ids(&items), vec![task.clone()]);
    let private: Vec<_> = std::fs::read_dir(db.data_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("search.node-"))
        .collect();
    assert!(
        private.is_empty(),
        "the index in <data_dir>/search was rebuilt in place"
    );
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");

    // Another model of the same provider is another embedder too.
    let before = fake.inputs.lock().unwrap().len();
    let mut command = crate::crash::chronicle(&db, port);
    command
        .arg("serve")
        .env("CHRONICLE_EMBEDDINGS__PROVIDER", "ollama")
        .env("CHRONICLE_EMBEDDINGS__BASE_URL", &url)
        .env("CHRONICLE_EMBEDDINGS__MODEL", "fake-embed-2");
    let mut server = crate::crash::started(command, port).await;
    indexed(&client, &base).await;
    let inputs = fake.inputs.lock().unwrap()[before..].to_vec();
    assert!(
        inputs.iter().any(|t| t.contains("zebra crossing")),
        "{inputs:?}"
    );
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
}
