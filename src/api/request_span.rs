//! The span every request runs in, whose fields every log line of the request carries: the
//! request id, the route template (never the raw path), the method, and as they become known
//! the actor and the task, run, agent or workflow the path names.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::field::Empty;
use tracing::Span;
use uuid::Uuid;

use crate::actor::Actor;

/// Requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The span of `request`; `actor` is recorded by [`record_actor`] once the credentials are
/// checked.
pub fn make<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get(&super::REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let route = request.extensions().get::<MatchedPath>();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        route = route.map_or(UNMATCHED, MatchedPath::as_str),
        method = %request.method(),
        actor = Empty,
        task_id = Empty,
        run_id = Empty,
        agent_id = Empty,
        workflow_id = Empty,
    );
    if let Some(route) = route {
        for (field, id) in named_ids(route.as_str(), request.uri().path()) {
            span.record(field, tracing::field::display(id));
        }
    }
    span
}

/// Records who is acting on the current request's span.
pub fn record_actor(actor: &Actor) {
    Span::current().record("actor", tracing::field::display(actor.id));
    crate::error_tracking::set_actor(actor);
}

/// The ids a path names, by the collection before each `{id}` of its route template:
/// `/api/tasks/{id}/events` names a `task_id`. Only well-formed ids count.
fn named_ids(template: &str, path: &str) -> Vec<(&'static str, Uuid)> {
    let mut ids = Vec::new();
    let mut previous = "";
    for (pattern, segment) in template.split('/').zip(path.split('/')) {
        if pattern == "{id}" {
            let field = match previous {
                "tasks" => Some("task_id"),
                "workflow-runs" => Some("run_id"),
                "agents" => Some("agent_id"),
                "workflows" => Some("workflow_id"),
                _ => None,
            };
            if let (Some(field), Ok(id)) = (field, Uuid::parse_str(segment)) {
                ids.push((field, id));
            }
        }
        previous = pattern;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_the_ids_its_template_marks() {
        let id = Uuid::now_v7();
        assert_eq!(
            named_ids("/api/tasks/{id}/events", &format!("/api/tasks/{id}/events")),
            [("task_id", id)]
        );
        assert_eq!(
            named_ids(
                "/api/workflow-runs/{id}",
                &format!("/api/workflow-runs/{id}")
            ),
            [("run_id", id)]
        );
        assert_eq!(
            named_ids("/api/agents/{id}/lease", &format!("/api/agents/{id}/lease")),
            [("agent_id", id)]
        );
        // Not an id, or not one of the collections: nothing.
        assert!(named_ids("/api/tasks/{id}", "/api/tasks/not-an-id").is_empty());
        assert!(named_ids(
            "/api/users/me/api-keys/{id}",
            &format!("/api/users/me/api-keys/{id}")
        )
        .is_empty());
    }
}
