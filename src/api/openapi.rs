//! The OpenAPI 3.1 document served at `GET /api/openapi.json`. It comes from the same
//! registration as the routes ([`super::routes`]), so a route cannot be served without being
//! described; [`complete`] then adds what every operation shares (rate limits, credentials,
//! store errors, `X-Request-Id`, problem+json bodies).

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chronicle_commands::FieldError;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Object, ObjectBuilder, Ref, RefOr, Required, Schema, Type};
use utoipa::{Modify, OpenApi};

use super::error::{ApiError, Problem, PROBLEM_JSON};
use super::extract::{IDEMPOTENCY_KEY_PATTERN, IF_MATCH_PATTERN};

/// Operations that never answer 500 or a problem 503: they do not touch the store, or
/// (`status`) answer its failure themselves, or (`metrics`) leave its gauges as they were.
const NO_STORE_ERRORS: [&str; 4] = ["health", "metrics", "openapi", "status"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle",
        description = "The HTTP API of Chronicle, an event-sourced orchestration engine.\n\n\
            JSON bodies, UTF-8, no string holding NUL (`\\u0000`) anywhere; ids are UUIDs; times are RFC 3339 UTC. Errors are \
            `application/problem+json` (RFC 9457). Lists take `limit` (default 50, max 500) \
            and an opaque `cursor`, and answer `{items, next_cursor}`. Single resources carry \
            `ETag: \"<version>\"`; writes that say so accept `If-Match`. Every answer carries \
            `X-Request-Id` (echoed when the client sent one). An unknown route answers 404, a \
            known route with another method 405, both as problem+json.",
    ),
    tags(
        (name = "system", description = "Health, status and this document; no credentials needed."),
        (name = "auth", description = "Registration, sign-in and refresh-token sessions."),
        (name = "users", description = "The caller and their API keys."),
        (name = "agents", description = "Agents: registration, heartbeats, leasing work, pinned tasks."),
        (name = "tasks", description = "Tasks: creation, reads (also as of a version or a time), reports by the lease holder, cancellation, retries and history."),
        (name = "analytics", description = "Usage and status counts built from the event feed: the caller's own, everyone's for auditors and admins."),
        (name = "events", description = "The global event feed: every event the caller may read, gap-free, as pages or an NDJSON stream."),
        (name = "audit", description = "The tamper-evident history: hash-chain verification over what the caller may read, and the chain checkpoints."),
        (name = "live", description = "Live subscriptions: the event WebSocket (tasks also stream over SSE)."),
        (name = "workflows", description = "Workflows: versioned DAGs of steps, their runs, step by step, and cancellation."),
        (name = "sync", description = "Offline sync for the extension: a batch of queued writes, and the current state of what changed since a token."),
        (name = "search", description = "Search over the caller's tasks and workflow runs (BM25 and embeddings, fused), and context for language models from it."),
        (name = "admin", description = "Operating the read side: projection status and rebuilds."),
        (name = "teams", description = "Teams: members and their roles (owner, maintainer, member, viewer), invitations by email, and sharing workflows with a team."),
        (name = "llm", description = "Conversations of `llm.chat` tasks, which the built-in LLM agent runs when a provider is configured."),
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&SecuritySchemes),
    security(("bearer_jwt" = []), ("bearer_api_key" = []), ("api_key" = [])),
)]
pub struct ApiDoc;

/// The three ways to send credentials; an operation names the ones it takes (by default
/// all three, any one of them).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from /api/auth/login, /register or /refresh (HS256, 15 min).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer_api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("chr_<key id>_<secret>")
                    .description(Some("An API key from /api/users/me/api-keys."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key from /api/users/me/api-keys, in its own header.",
            ))),
        );
    }
}

/// The whole document: every registered route, completed.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut spec = super::routes().into_openapi();
    complete(&mut spec);
    spec
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object, content_type = "application/json"),
    ),
)]
pub async fn serve() -> Response {
    static JSON: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
        serde_json::to_vec(&document())
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    });
    match &*JSON {
        Ok(json) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json.clone(),
        )
            .into_response(),
        Err(error) => ApiError::Internal(error.clone().into()).into_response(),
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Whether an operation takes credentials at all (required or optional).
fn takes_credentials(operation: &Operation, global: &[SecurityRequirement]) -> bool {
    let requirements = operation.security.as_deref().unwrap_or(global);
    requirements
        .iter()
        .any(|requirement| *requirement != SecurityRequirement::default())
}

fn header(kind: Type, description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Object::with_type(kind))
        .description(Some(description))
        .build()
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    let mut response = utoipa::openapi::Response::new(description);
    response.content.insert(
        PROBLEM_JSON.to_owned(),
        Content::new(Some(Ref::from_schema_name("ProblemDetails"))),
    );
    response
}

fn with_retry_after(mut response: utoipa::openapi::Response) -> utoipa::openapi::Response {
    response.headers.insert(
        "Retry-After".to_owned(),
        header(Type::Integer, "Seconds to wait before trying again"),
    );
    response
}

fn string_matching(pattern: &str, lengths: Option<(usize, usize)>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(lengths.map(|(min, _)| min))
        .max_length(lengths.map(|(_, max)| max))
        .build()
}

/// The headers the extractors check, wherever an operation declares them, with their rule
/// as a schema: `If-Match` is one of this server's `ETag`s (anything else is a 400; a
/// version that is not the current one, a 412), `Idempotency-Key` 1–255 visible ASCII
/// characters (anything else is a 400).
fn header_rules(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in != ParameterIn::Header {
            continue;
        }
        let rule = if parameter.name.eq_ignore_ascii_case("If-Match") {
            string_matching(IF_MATCH_PATTERN, None)
        } else if parameter.name.eq_ignore_ascii_case("Idempotency-Key") {
            string_matching(IDEMPOTENCY_KEY_PATTERN, Some((1, 255)))
        } else {
            continue;
        };
        parameter.schema = Some(RefOr::T(Schema::Object(rule)));
    }
}

/// A WebSocket route (one that answers 101) takes only an upgrade: the headers of RFC 6455
/// §4.1 are required, as axum's `WebSocketUpgrade` checks them (anything else is a 400).
fn upgrade_headers(operation: &mut Operation) {
    if !operation.responses.responses.contains_key("101") {
        return;
    }
    let required = |name: &str, schema: Object, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .schema(Some(schema))
            .description(Some(description))
            .build()
    };
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.extend([
        required(
            "Connection",
            string_matching("^(.*[,\\s])?[Uu][Pp][Gg][Rr][Aa][Dd][Ee]([,\\s].*)?$", None),
            "Names `upgrade` among its tokens",
        ),
        required(
            "Upgrade",
            string_matching("^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$", None),
            "`websocket`",
        ),
        required(
            "Sec-WebSocket-Version",
            string_matching("^13$", None),
            "`13`",
        ),
        required(
            "Sec-WebSocket-Key",
            Object::with_type(Type::String),
            "The client's nonce (RFC 6455: 16 random bytes, base64)",
        ),
    ]);
}

fn request_id_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .schema(Some(Object::with_type(Type::String)))
        .description(Some(
            "Echoed back; a UUID is drawn when absent. Recorded with the events it causes.",
        ))
        .build()
}

/// What `Idempotency-Key` (see `api::replay`) gives every write outside `/api/auth/`.
fn idempotent(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    if !parameters.iter().any(|p| p.name == "Idempotency-Key") {
        parameters.push(
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .schema(Some(string_matching(IDEMPOTENCY_KEY_PATTERN, Some((1, 255)))))
                .description(Some(
                    "1–255 visible ASCII characters, no spaces. The same key from the same user within 24 h returns the \
                     first answer (with `Idempotent-Replayed: true`) and has no second effect; \
                     a new API key's secret is not repeated (`key: null`).",
                ))
                .build(),
        );
    }
    let responses = &mut operation.responses.responses;
    for (status, response) in responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
            response.headers.insert(
                "Idempotent-Replayed".to_owned(),
                header(Type::String, "`true` when this is the stored first answer to an earlier request with the same Idempotency-Key"),
            );
        }
    }
    responses
        .entry("400".to_owned())
        .or_insert(RefOr::T(problem_response(
            "A malformed request or Idempotency-Key",
        )));
    responses
        .entry("409".to_owned())
        .or_insert(RefOr::T(with_retry_after(problem_response(
            "The first request with this Idempotency-Key is still running",
        ))));
    responses
        .entry("422".to_owned())
        .or_insert(RefOr::T(problem_response(
            "The Idempotency-Key was used for a different request",
        )));
}

/// Adds what the gate, the extractors and the store give every operation, so handlers
/// list only their own answers: 429 everywhere (the gate runs first), 401 where credentials
/// are taken, 500/503 where the store is touched, a problem+json body on every error
/// answer without one, and `X-Request-Id` on every request and answer.
fn complete(spec: &mut utoipa::openapi::OpenApi) {
    let global = spec.security.clone().unwrap_or_default();
    for (path, item) in spec.paths.paths.iter_mut() {
        if !path.starts_with("/api/auth/") {
            let writes = [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in writes.into_iter().flatten() {
                idempotent(operation);
            }
        }
        for operation in operations_mut(item) {
            let takes_credentials = takes_credentials(operation, &global);
            let store_errors = !operation
                .operation_id
                .as_deref()
                .is_some_and(|id| NO_STORE_ERRORS.contains(&id));
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, response: utoipa::openapi::Response| {
                responses
                    .entry(status.to_owned())
                    .or_insert(RefOr::T(response));
            };
            add(
                "429",
                with_retry_after(problem_response(
                    "Rate limited: per user, or per IP when anonymous; stricter on /api/auth/*",
                )),
            );
            if takes_credentials {
                add(
                    "401",
                    problem_response("No credentials, or bad or expired ones"),
                );
            }
            if store_errors {
                add(
                    "500",
                    problem_response("An internal error; logged, never detailed"),
                );
                add(
                    "503",
                    with_retry_after(problem_response("The event store is unavailable")),
                );
            }
            for (status, response) in responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let error = status.parse::<u16>().is_ok_and(|status| status >= 400);
                if error && response.content.is_empty() {
                    response.content.insert(
                        PROBLEM_JSON.to_owned(),
                        Content::new(Some(Ref::from_schema_name("ProblemDetails"))),
                    );
                }
                if status == "401" {
                    response.headers.insert(
                        "WWW-Authenticate".to_owned(),
                        header(Type::String, "`Bearer`"),
                    );
                }
                response.headers.insert(
                    "X-Request-Id".to_owned(),
                    header(
                        Type::String,
                        "The request's id: the client's, or one drawn by the server",
                    ),
                );
            }
            header_rules(operation);
            upgrade_headers(operation);
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .push(request_id_parameter());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::*;

    /// Every operation of a path, with its method in lower case.
    fn operations(item: &PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
        [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
            ("options", &item.options),
            ("head", &item.head),
            ("patch", &item.patch),
            ("trace", &item.trace),
        ]
        .into_iter()
        .filter_map(|(method, operation)| operation.as_ref().map(|op| (method, op)))
    }

    /// Whether an operation needs credentials: its own requirements, or the document's, name a
    /// scheme in every alternative ([`SecurityRequirement::default`] is "none needed").
    fn needs_credentials(operation: &Operation, global: &[SecurityRequirement]) -> bool {
        let requirements = operation.security.as_deref().unwrap_or(global);
        !requirements.is_empty()
            && requirements
                .iter()
                .all(|requirement| *requirement != SecurityRequirement::default())
    }

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    /// Every `.rs` file of `src/`, with its comments cut off line by line.
    fn sources() -> Vec<(PathBuf, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text
                    .lines()
                    .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
                    .collect::<Vec<_>>()
                    .join("\n");
                (path, code)
            })
            .collect()
    }

    /// `(method, path)` of every operation of the document.
    fn documented(spec: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        spec.paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                operations(item).map(move |(method, _)| (method.to_owned(), path.clone()))
            })
            .collect()
    }

    /// axum cannot list its routes, so the source is the witness: a route is added by
    /// `.route(…)` (or a service or method router) or through `routes!`, and only the
    /// latter reaches the document. The patterns are spelt in pieces so that this file
    /// does not match itself.
    #[test]
    fn no_route_bypasses_the_document() {
        let forbidden = [
            concat!(".", "route("),
            concat!(".", "route_service("),
            concat!(".", "nest_service("),
            concat!(".", "fallback_service("),
            concat!("routing", "::"),
            concat!("Method", "Router"),
        ];
        let mut offences = Vec::new();
        for (path, code) in sources() {
            for (number, line) in code.lines().enumerate() {
                for pattern in forbidden.iter().filter(|p| line.contains(*p)) {
                    offences.push(format!(
                        "{}:{}: `{pattern}` in `{}`",
                        path.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
        assert!(
            offences.is_empty(),
            "routes must be registered with `.routes(routes!(handler))` in api::routes() so \
             that they are in the OpenAPI document (see the doc comment there):\n{}",
            offences.join("\n")
        );
    }

    /// The `(method, path)` of every `#[utoipa::path(…)]` in `src/`, read from the text.
    fn annotated() -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (_, code) in sources() {
            for annotation in code.split(concat!("#[utoipa::", "path(")).skip(1) {
                let method = annotation
                    .trim_start()
                    .split(|c: char| !c.is_ascii_alphabetic())
                    .next()
                    .unwrap()
                    .to_owned();
                let path = annotation
                    .split_once("path = \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(path, _)| path)
                    .unwrap();
                found.insert((method, format!("/api{path}")));
            }
        }
        found
    }

    /// Each annotated handler is registered, and nothing else is documented: the document
    /// and the annotations in the source name the same operations.
    #[test]
    fn the_document_names_exactly_the_annotated_handlers() {
        let spec = document();
        let (documented, annotated) = (documented(&spec), annotated());
        let unregistered: Vec<_> = annotated.difference(&documented).collect();
        let unannotated: Vec<_> = documented.difference(&annotated).collect();
        assert!(
            unregistered.is_empty() && unannotated.is_empty(),
            "annotated but not registered in api::routes(): {unregistered:?}; documented but \
             not found annotated in src/: {unannotated:?}"
        );
        assert!(documented.contains(&("get".into(), "/api/openapi.json".into())));
    }

    fn walk_refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| walk_refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk_refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_whole() {
        let spec = document();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["openapi"], "3.1.0");

        let mut refs = Vec::new();
        walk_refs(&json, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let pointer = target.strip_prefix('#').unwrap_or(target);
            assert!(json.pointer(pointer).is_some(), "dangling $ref {target}");
        }

        let tags: BTreeSet<String> = spec
            .tags
            .iter()
            .flatten()
            .map(|tag| tag.name.clone())
            .collect();
        let schemes = spec
            .components
            .as_ref()
            .map(|c| c.security_schemes.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        assert_eq!(
            schemes,
            ["api_key", "bearer_api_key", "bearer_jwt"]
                .map(String::from)
                .into()
        );
        let global = spec.security.clone().unwrap_or_default();
        let mut ids = BTreeMap::new();
        for (path, item) in &spec.paths.paths {
            for (method, operation) in operations(item) {
                let name = format!("{method} {path}");
                let id = operation.operation_id.clone().unwrap_or_default();
                assert!(!id.is_empty(), "{name}: no operation_id");
                if let Some(other) = ids.insert(id.clone(), name.clone()) {
                    panic!("operation_id {id} of both {other} and {name}");
                }
                assert!(
                    operation.summary.as_deref().is_some_and(|s| !s.is_empty()),
                    "{name}: no summary (the handler's first doc line)"
                );
                let op_tags = operation.tags.clone().unwrap_or_default();
                assert!(
                    op_tags.len() == 1 && tags.contains(&op_tags[0]),
                    "{name}: tags {op_tags:?} are not one of {tags:?}"
                );
                let declared: BTreeSet<&str> = operation
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| p.parameter_in == ParameterIn::Path)
                    .map(|p| p.name.as_str())
                    .collect();
                let in_path: BTreeSet<&str> = path
                    .split('{')
                    .skip(1)
                    .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
                    .collect();
                assert_eq!(declared, in_path, "{name}: path parameters");
                let statuses: Vec<&String> = operation.responses.responses.keys().collect();
                assert!(
                    // 101: a WebSocket upgrade succeeds by switching protocols.
                    statuses.iter().any(|s| s.starts_with('2') || *s == "101"),
                    "{name}: no success answer in {statuses:?}"
                );
                assert!(statuses.iter().any(|s| *s == "429"), "{name}: no 429");
                if needs_credentials(operation, &global) {
                    assert!(statuses.iter().any(|s| *s == "401"), "{name}: no 401");
                }
                for (status, response) in &operation.responses.responses {
                    let RefOr::T(response) = response else {
                        panic!("{name} {status}: a reference, not a response");
                    };
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            !response.content.is_empty(),
                            "{name} {status}: no body described"
                        );
                    }
                    assert!(response.headers.contains_key("X-Request-Id"));
                }
            }
        }
    }

    /// Anonymous callers reach health, status, this document and the auth routes (register
    /// also takes an admin's credentials); everything else needs credentials.
    #[test]
    fn only_the_public_routes_are_anonymous() {
        let spec = document();
        let global = spec.security.clone().unwrap_or_default();
        let anonymous: BTreeSet<String> = spec
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                operations(item)
                    .filter(|(_, op)| !needs_credentials(op, &global))
                    .map(move |(method, _)| format!("{method} {path}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: BTreeSet<String> = [
            "get /api/health",
            "get /api/status",
            "get /api/openapi.json",
            "get /api/metrics",
            "post /api/auth/register",
            "post /api/auth/login",
            "post /api/auth/refresh",
            "post /api/auth/logout",
        ]
        .map(String::from)
        .into();
        assert_eq!(anonymous, expected);
    }
}
