//! `?access_token=`: a browser's `WebSocket` cannot send headers, so on the WebSocket
//! upgrades of [`QUERY_TOKEN_ROUTES`] (and nowhere else) the credential may ride in the
//! query. URLs end up in proxy logs and browser history, so every other route ignores it.
//! Chronicle itself logs paths without their query (the request span in `api::router`).

use axum::extract::Request;
use axum::http::header;

/// The route templates (as registered, under `/api`) whose WebSocket upgrade takes
/// `?access_token=`: the agent socket and the live-subscription socket.
pub(crate) const QUERY_TOKEN_ROUTES: &[&str] = &["/api/agents/{id}/ws", "/api/ws"];

/// The `?access_token=` of a WebSocket upgrade to one of [`QUERY_TOKEN_ROUTES`].
pub(crate) fn websocket_token(request: &Request) -> Option<String> {
    let upgrade = request.headers().get(header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let path = request.uri().path();
    if !QUERY_TOKEN_ROUTES
        .iter()
        .any(|template| matches_template(template, path))
    {
        return None;
    }
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
}

/// Does `path` match `template`, where a `{name}` segment stands for any one non-empty
/// segment (axum's syntax)?
fn matches_template(template: &str, path: &str) -> bool {
    let mut path = path.split('/');
    let mut template = template.split('/');
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) => {
                let wildcard = want.starts_with('{') && want.ends_with('}');
                if (wildcard && got.is_empty()) || (!wildcard && want != got) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn upgrade(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .body(Body::empty())
            .expect("a request")
    }

    #[test]
    fn only_the_listed_upgrades_take_a_query_token() {
        let id = uuid::Uuid::now_v7();
        for allowed in [
            format!("/api/agents/{id}/ws?access_token=t"),
            "/api/ws?x=1&access_token=t".to_owned(),
        ] {
            assert_eq!(
                websocket_token(&upgrade(&allowed)).as_deref(),
                Some("t"),
                "{allowed}"
            );
        }
        for refused in [
            "/api/tasks?access_token=t".to_owned(),
            "/api/users/me?access_token=t".to_owned(),
            format!("/api/agents/{id}?access_token=t"),
            format!("/api/agents/{id}/ws/extra?access_token=t"),
            "/api/agents//ws?access_token=t".to_owned(),
            "/api/ws/?access_token=t".to_owned(),
            "/ws?access_token=t".to_owned(),
        ] {
            assert_eq!(websocket_token(&upgrade(&refused)), None, "{refused}");
        }
        let plain = Request::builder()
            .uri("/api/ws?access_token=t")
            .body(Body::empty())
            .expect("a request");
        assert_eq!(websocket_token(&plain), None, "not an upgrade");
    }
}
